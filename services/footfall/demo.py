"""A synthetic camera clip with known visitors, composed from labelled dataset faces.

Each visitor is one test-split UTKFace face (known age, gender, race) that walks across a
static synthetic shop scene; visitors are spaced so that at most ``concurrent`` are in view.
The clip is the ground truth for end-to-end tests, the benchmark and the local demo.

Example:
    >>> import numpy as np, tempfile
    >>> faces = [np.full((128, 128, 3), 120, np.uint8)] * 2
    >>> truth = compose_clip(f"{tempfile.mkdtemp()}/c.mp4", faces, fps=10, size=(320, 180), walk_s=1.0)
    >>> [round(v.enter_s, 1) for v in truth]
    [0.5, 2.3]
"""

from __future__ import annotations

import csv
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class VisitorTruth:
    index: int  # which input face
    enter_s: float
    leave_s: float


def shop_background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A static, textured indoor-looking background (BGR)."""
    w, h = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    img = (np.array([90, 110, 130]) * (1 - y) + np.array([50, 60, 70]) * y).repeat(w, 1).astype(np.float32)
    for _ in range(14):  # shelves and posters
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 20, w // 5), y0 + rng.integers(h // 20, h // 4)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), rng.integers(30, 220, 3).tolist(), -1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def compose_clip(path: str | Path, faces_rgb: list[np.ndarray], fps: int = 25, size: tuple[int, int] = (1280, 720),
                 walk_s: float = 3.0, gap_s: float = 0.8, concurrent: int = 1, face_px: int | None = None,
                 seed: int = 0) -> list[VisitorTruth]:
    """Write an MJPG/mp4v clip with every face walking across once; returns when each was in view."""
    w, h = size
    face_px = face_px or int(h * 0.28)
    rng = np.random.default_rng(seed)
    background = shop_background(size, seed)
    # Schedule: `concurrent` lanes; in each lane a visitor enters after the previous left + gap.
    lanes = [0.5 + i * (walk_s / max(concurrent, 1)) for i in range(concurrent)]
    truth: list[VisitorTruth] = []
    for i in range(len(faces_rgb)):
        lane = i % concurrent
        enter = lanes[lane]
        truth.append(VisitorTruth(i, enter, enter + walk_s))
        lanes[lane] = enter + walk_s + gap_s
    lane_y = [int(h * (0.15 + 0.5 * (k / max(concurrent - 1, 1)) if concurrent > 1 else h * 0.3))
              for k in range(concurrent)]
    directions = rng.choice([-1, 1], size=len(faces_rgb))
    tiles = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), (face_px, face_px), interpolation=cv2.INTER_LINEAR)
             for f in faces_rgb]
    duration = max(v.leave_s for v in truth) + 0.5 if truth else 1.0
    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}")
    for n in range(int(duration * fps)):
        t = n / fps
        frame = background.copy()
        for v in truth:
            if not (v.enter_s <= t < v.leave_s):
                continue
            progress = (t - v.enter_s) / (v.leave_s - v.enter_s)
            if directions[v.index] < 0:
                progress = 1 - progress
            x = int(-0.6 * face_px + progress * (w + 0.2 * face_px))  # walks in and out through the edges
            y = lane_y[v.index % concurrent] + int(6 * np.sin(t * 5 + v.index))  # a little bob
            y = min(max(y, 0), h - face_px)
            x0, x1 = max(x, 0), min(x + face_px, w)
            if x1 > x0:
                frame[y:y + face_px, x0:x1] = tiles[v.index][:, x0 - x:x1 - x]
        writer.write(frame)
    writer.release()
    return truth


def sample_faces(data_dir: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` UTKFace test-split faces (RGB), read straight from the archive."""
    with open(data_dir / "utkface_128.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    pick = np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False)
    with tarfile.open(data_dir / "utkface_128.tar") as tf:
        blobs = [tf.extractfile(rows[i]["file"]).read() for i in pick]
    return [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for b in blobs]
