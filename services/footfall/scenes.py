"""Synthetic entrance scenes that find tracking failures, generated in memory with ground truth.

A scene is a static shop background (``demo.shop_background``) at 1280x720, 25 fps, with
visitors made from real face photos walking along piecewise-linear paths: side by side, in
file, fast (up to 630 px/s), children (small faces), crossing in both directions, crowds;
optionally a pillar they pass behind, brightness flashes and camera shake. Frames are drawn
on demand (``SceneRenderer.frame``), never written to disk; each comes with the identity and
box of every visitor a detector can see (at least ``VISIBLE`` of the face in view).

``SCENES`` is the benchmark's set (``benchmarks/tracking.py``) and the tests' source. Each
scene's counting line (``footfall.counting``) runs upwards through the middle of the frame, so
walking left to right enters; a walker's ``kind`` says whether they entered, exited or passed by.

Example:
    >>> import numpy as np
    >>> faces = [np.full((128, 128, 3), 120, np.uint8)] * 4
    >>> r = SceneRenderer(SCENES["in_file"], faces)
    >>> frame, truth = r.frame(50)
    >>> frame.shape, sorted({t.identity for t in truth}) == [0, 1, 2, 3]
    ((720, 1280, 3), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from footfall.demo import shop_background

SIZE = (1280, 720)
FPS = 25
VISIBLE = 0.75  # share of a face that must be in view (not outside the frame, not behind the pillar)
MIDDLE_LINE = (0.5, 1.0, 0.5, 0.0)  # counting line of every scene, drawn upwards: in = left to right
FACE_PHOTOS, FACE_SEED = 14, 3  # the visitors' photos: UTKFace test faces (``footfall.demo.sample_faces``)


@dataclass(frozen=True)
class Walker:
    """One visitor: a face of ``size`` px following ``path`` = ((t, centre x, centre y), ...)."""

    identity: int
    face: int  # index into the scene's face photos
    size: int
    path: tuple[tuple[float, float, float], ...]

    def centre(self, t: float) -> tuple[float, float] | None:
        times = [p[0] for p in self.path]
        if t < times[0] or t > times[-1]:
            return None
        x = float(np.interp(t, times, [p[1] for p in self.path]))
        y = float(np.interp(t, times, [p[2] for p in self.path]))
        return x, y + 5.0 * np.sin(7.0 * t + self.identity)  # the bob of a walking head

    @property
    def kind(self) -> str:
        """entry / exit / passer-by with respect to ``MIDDLE_LINE`` (start and end side of the path)."""
        start, end = self.path[0][1] < SIZE[0] / 2, self.path[-1][1] < SIZE[0] / 2
        if start == end:
            return "passer-by"
        return "entry" if start else "exit"


@dataclass(frozen=True)
class Scene:
    name: str
    walkers: tuple[Walker, ...]
    duration_s: float
    pillar: tuple[int, int] | None = None  # x range of a pillar in front of the walkers
    flashes: tuple[tuple[float, float], ...] = ()  # (time, brightness gain) of one-frame flashes
    shake_px: float = 0.0  # camera shake: the whole image moves by up to this much per frame
    seed: int = 0
    line: tuple[float, float, float, float] = MIDDLE_LINE

    @property
    def visitors(self) -> int:
        return len({w.identity for w in self.walkers})

    @property
    def frames(self) -> int:
        return int(self.duration_s * FPS)


@dataclass(frozen=True)
class TruthBox:
    identity: int
    box: tuple[float, float, float, float]  # x, y, w, h of the face tile in the frame


def across(identity: int, face: int, size: int, y: float, t0: float, speed: float, direction: int = 1,
           stop: tuple[float, float] | None = None) -> Walker:
    """A walker crossing the whole width at ``speed`` px/s (``direction`` 1: left to right), entering at
    ``t0``; ``stop`` = (x, seconds) makes them stand at x for a while (browsing: dwell)."""
    w = SIZE[0]
    x0, x1 = (-size / 2, w + size / 2) if direction > 0 else (w + size / 2, -size / 2)
    if stop is None:
        return Walker(identity, face, size, ((t0, x0, y), (t0 + abs(x1 - x0) / speed, x1, y)))
    xs, hold = stop
    t_stop = t0 + abs(xs - x0) / speed
    return Walker(identity, face, size, ((t0, x0, y), (t_stop, xs, y), (t_stop + hold, xs, y),
                                         (t_stop + hold + abs(x1 - xs) / speed, x1, y)))


def turn_back(identity: int, face: int, size: int, y: float, t0: float, speed: float, depth: float) -> Walker:
    """A passer-by: walks in from the left edge to ``depth`` px and back out the same side."""
    x0 = -size / 2
    t_turn = t0 + (depth - x0) / speed
    return Walker(identity, face, size, ((t0, x0, y), (t_turn, depth, y), (2 * t_turn - t0, x0, y)))


def _in_file() -> Scene:
    # Four people one behind the other at 500 px/s, 1.5 face widths apart: at 5 processed fps each moves
    # 100 px, about the gap between two of them.
    walkers = tuple(across(i, i, 120, 330 + 12 * (i % 2), 0.4 + i * 0.3, 560.0) for i in range(4))
    return Scene("in_file", walkers, 4.6, seed=1)


def _side_by_side() -> Scene:
    # Pairs walking together (faces 60 px apart vertically) in both directions.
    walkers = (across(0, 0, 120, 250, 0.3, 450.0), across(1, 1, 120, 430, 0.3, 450.0),
               across(2, 2, 110, 260, 2.0, 520.0, -1), across(3, 3, 110, 420, 2.05, 520.0, -1),
               across(4, 4, 120, 300, 4.2, 400.0), across(5, 5, 100, 460, 4.2, 420.0))
    return Scene("side_by_side", walkers, 8.0, seed=2)


def _fast_child_pillar() -> Scene:
    # A fast child (small face, 630 px/s) behind a pillar, then two adults walking the same line.
    walkers = (across(0, 0, 72, 420, 0.3, 630.0), across(1, 1, 130, 380, 0.9, 480.0),
               across(2, 2, 130, 400, 1.6, 560.0), across(3, 7, 80, 440, 3.6, 600.0, -1),
               across(4, 4, 125, 390, 3.9, 520.0, -1))
    return Scene("fast_child_pillar", walkers, 7.0, pillar=(560, 660), seed=3)


def _crossing() -> Scene:
    # People walking towards each other on nearly the same line pass (one hides the other briefly).
    walkers = (across(0, 0, 120, 360, 0.3, 420.0), across(1, 1, 115, 370, 0.3, 450.0, -1),
               across(2, 2, 125, 300, 2.2, 500.0), across(3, 3, 120, 330, 2.4, 480.0, -1),
               across(4, 6, 84, 460, 2.6, 550.0), turn_back(5, 5, 120, 200, 4.0, 400.0, 420.0))
    return Scene("crossing", walkers, 7.5, seed=4)


def _crowd() -> Scene:
    # 10 visitors, up to 5-7 in view, mixed directions, children, one browsing (standing) visitor,
    # a pillar, brightness flashes and camera shake.
    rng = np.random.default_rng(5)
    walkers = []
    lanes = (170, 280, 390, 500, 590)
    for i in range(10):
        size = int(rng.choice([76, 84])) if i in (3, 7) else int(rng.integers(100, 140))
        direction = 1 if i % 3 else -1
        stop = (1050.0 if direction > 0 else 300.0, 1.5) if i == 5 else None  # browsing in full view
        walkers.append(across(i, 11 if i == 3 else i, size, lanes[i % len(lanes)] + float(rng.integers(-20, 20)), 0.3 + 0.55 * i,
                              float(rng.integers(380, 630)), direction, stop))
    walkers.append(turn_back(10, 10, 110, 250, 3.0, 380.0, 380.0))
    return Scene("crowd", tuple(walkers), 10.5, pillar=(820, 900), flashes=((2.0, 1.6), (5.6, 1.8), (8.1, 1.5)),
                 shake_px=4.0, seed=6)


SCENES: dict[str, Scene] = {s.name: s for s in (_in_file(), _side_by_side(), _fast_child_pillar(), _crossing(),
                                                 _crowd())}


def scene_faces(data_dir) -> list[np.ndarray]:
    """The face photos the scenes are made of (``walker.face`` indexes them); children use photos YuNet
    finds at their small size."""
    from footfall.demo import sample_faces

    return sample_faces(data_dir, FACE_PHOTOS, seed=FACE_SEED)


@dataclass
class SceneRenderer:
    """Draws a scene's frames from face photos (RGB, any square size) and reports the truth."""

    scene: Scene
    faces_rgb: list[np.ndarray]
    _tiles: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        needed = max(w.face for w in self.scene.walkers) + 1
        if len(self.faces_rgb) < needed:
            raise ValueError(f"scene {self.scene.name} needs {needed} face photos, got {len(self.faces_rgb)}")
        self._background = shop_background(SIZE, self.scene.seed)
        shake = np.random.default_rng(self.scene.seed).uniform(-1, 1, (self.scene.frames, 2))
        self._shake = np.round(shake * self.scene.shake_px).astype(int)

    def _tile(self, face: int, size: int) -> np.ndarray:
        key = (face, size)
        if key not in self._tiles:
            self._tiles[key] = cv2.resize(cv2.cvtColor(self.faces_rgb[face], cv2.COLOR_RGB2BGR), (size, size),
                                          interpolation=cv2.INTER_AREA)
        return self._tiles[key]

    def frame(self, index: int, visible: float = VISIBLE) -> tuple[np.ndarray, list[TruthBox]]:
        """Frame ``index`` (BGR) and the boxes of the visitors of whose face at least ``visible`` is in view."""
        t = index / FPS
        w, h = SIZE
        frame = self._background.copy()
        dx, dy = self._shake[index % len(self._shake)]
        truth: list[TruthBox] = []
        # Children and small faces are further away: draw them first so nearer people hide them.
        for walker in sorted(self.scene.walkers, key=lambda v: v.size):
            centre = walker.centre(t)
            if centre is None:
                continue
            s = walker.size
            x, y = int(round(centre[0] - s / 2)) + dx, int(round(centre[1] - s / 2)) + dy
            x0, x1, y0, y1 = max(x, 0), min(x + s, w), max(y, 0), min(y + s, h)
            if x1 <= x0 or y1 <= y0:
                continue
            frame[y0:y1, x0:x1] = self._tile(walker.face, s)[y0 - y:y1 - y, x0 - x:x1 - x]
            in_view = (x1 - x0) * (y1 - y0)
            if self.scene.pillar is not None:
                p0, p1 = self.scene.pillar[0] + dx, self.scene.pillar[1] + dx
                in_view -= max(0, min(x1, p1) - max(x0, p0)) * (y1 - y0)
            truth.append(TruthBox(walker.identity, (float(x), float(y), float(s), float(s))))
            if in_view < visible * s * s:
                truth.pop()
        truth = _drop_hidden(truth, visible)
        if self.scene.pillar is not None:
            p0, p1 = self.scene.pillar[0] + dx, self.scene.pillar[1] + dx
            frame[:, max(p0, 0):max(p1, 0)] = (70, 80, 95)
            frame[:, max(p0, 0):max(p0 + 6, 0)] = (40, 45, 55)
        for when, gain in self.scene.flashes:
            if abs(t - when) < 0.5 / FPS:
                frame = cv2.convertScaleAbs(frame, alpha=gain, beta=20)
        return frame, truth


def _drop_hidden(truth: list[TruthBox], visible: float) -> list[TruthBox]:
    """Faces mostly covered by a face drawn after them (listed later) are not visible."""
    kept = []
    for i, a in enumerate(truth):
        ax, ay, aw, ah = a.box
        covered = 0.0
        for b in truth[i + 1:]:
            bx, by, bw, bh = b.box
            covered = max(covered, max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) *
                          max(0.0, min(ay + ah, by + bh) - max(ay, by)))
        if covered <= (1 - visible) * aw * ah:
            kept.append(a)
    return kept
