"""Face tracking across frames: each visitor keeps one track id while in view.

A small SORT-style tracker without a Kalman filter: each track predicts its next box from
its last velocity; detections are matched greedily by IoU with the prediction, then (for
fast motion at low processing rates) by centre distance relative to the face size. A track
not matched for ``max_age_s`` is closed and reported once in ``TrackUpdate.ended``; one whose
predicted box has left the frame (the visitor walked out of view) is closed at once, so its
visitor is counted without waiting out ``max_age_s``.

Example:
    >>> import numpy as np
    >>> t = Tracker(prefix="cam:run")
    >>> u1 = t.update(np.array([[10, 10, 50, 50]], np.float32), now=0.0)
    >>> u2 = t.update(np.array([[14, 10, 50, 50]], np.float32), now=0.2)
    >>> u1.track_ids == u2.track_ids, u2.track_ids[0]
    (True, 'cam:run:1')
    >>> t.update(np.zeros((0, 4), np.float32), now=5.0).ended[0].track_id
    'cam:run:1'
    >>> t.update(np.array([[560, 10, 50, 50]], np.float32), now=6.0, frame_size=(640, 360)).ended
    []
    >>> u = t.update(np.array([[590, 10, 50, 50]], np.float32), now=6.2, frame_size=(640, 360))
    >>> [e.track_id for e in t.update(np.zeros((0, 4), np.float32), now=6.4, frame_size=(640, 360)).ended]
    ['cam:run:2']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Track:
    track_id: str
    box: np.ndarray  # x, y, w, h
    first_seen: float
    last_seen: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px/s of the centre
    hits: int = 1
    published: int = 0  # crops published for this track
    last_published: float = -1e9

    def predicted_box(self, now: float) -> np.ndarray:
        shift = self.velocity * (now - self.last_seen)
        return np.array([self.box[0] + shift[0], self.box[1] + shift[1], self.box[2], self.box[3]], np.float32)


@dataclass
class TrackUpdate:
    """Result of one frame: the track id of every detection (same order) and the closed tracks."""

    track_ids: list[str]
    ended: list[Track]


def _outside(box: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """Less than half of the box is inside the frame."""
    w, h = frame_size
    iw = max(0.0, min(box[0] + box[2], w) - max(box[0], 0.0))
    ih = max(0.0, min(box[1] + box[3], h) - max(box[1], 0.0))
    return iw * ih < 0.5 * box[2] * box[3]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of ``a`` (N, 4) and ``b`` (M, 4), boxes as x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return (inter / np.maximum(union, 1e-6)).astype(np.float32)


class Tracker:
    def __init__(self, prefix: str, iou_threshold: float = 0.3, max_age_s: float = 1.5,
                 max_centre_shift: float = 0.8) -> None:
        self.prefix = prefix
        self.iou_threshold = iou_threshold
        self.max_age_s = max_age_s
        self.max_centre_shift = max_centre_shift  # in face sizes
        self.tracks: list[Track] = []
        self._counter = 0

    def update(self, boxes: np.ndarray, now: float, frame_size: tuple[int, int] | None = None) -> TrackUpdate:
        """Match this frame's boxes (x, y, w, h) to the tracks; ``frame_size`` (w, h) enables
        closing tracks that left the frame."""
        predicted = np.array([t.predicted_box(now) for t in self.tracks], np.float32).reshape(-1, 4)
        assigned: dict[int, int] = {}  # detection -> track index
        if len(self.tracks) and len(boxes):
            iou = iou_matrix(boxes, predicted)
            centre_d = np.linalg.norm((boxes[:, None, :2] + boxes[:, None, 2:] / 2)
                                      - (predicted[None, :, :2] + predicted[None, :, 2:] / 2), axis=2)
            size = np.sqrt(boxes[:, None, 2] * boxes[:, None, 3] * predicted[None, :, 2] * predicted[None, :, 3]) ** 0.5
            shift = centre_d / np.maximum(size, 1.0)
            # A track seen once has no velocity to predict with yet: a walker crossing the view can
            # be a face width away at the next processed frame, so its gate is twice as wide.
            gate = np.array([self.max_centre_shift * (2.0 if t.hits == 1 else 1.0) for t in self.tracks])[None, :]
            # IoU matches first (best first), then close centres for the rest.
            score = np.where(iou >= self.iou_threshold, 1.0 + iou,
                             np.where(shift <= gate, 1.0 - shift / gate / 2, 0))
            used_tracks: set[int] = set()
            for flat in np.argsort(-score, axis=None):
                d, t = np.unravel_index(flat, score.shape)
                if score[d, t] <= 0:
                    break
                if d in assigned or t in used_tracks:
                    continue
                assigned[int(d)] = int(t)
                used_tracks.add(int(t))
        ids: list[str] = []
        for d, box in enumerate(boxes):
            if d in assigned:
                track = self.tracks[assigned[d]]
                dt = max(now - track.last_seen, 1e-3)
                centre_new = box[:2] + box[2:] / 2
                centre_old = track.box[:2] + track.box[2:] / 2
                measured = (centre_new - centre_old) / dt
                # The first measurement stands alone; later ones are smoothed.
                track.velocity = measured if track.hits == 1 else 0.5 * track.velocity + 0.5 * measured
                track.box, track.last_seen = box.astype(np.float32), now
                track.hits += 1
            else:
                self._counter += 1
                track = Track(f"{self.prefix}:{self._counter}", box.astype(np.float32), now, now)
                self.tracks.append(track)
            ids.append(track.track_id)
        matched = set(assigned.values())
        gone = {i for i, t in enumerate(self.tracks) if i < len(predicted) and i not in matched
                and frame_size is not None and _outside(t.predicted_box(now), frame_size)
                and not _outside(t.box, frame_size)}  # moved out, not parked half-out at the edge
        ended = [t for i, t in enumerate(self.tracks) if i in gone or now - t.last_seen > self.max_age_s]
        self.tracks = [t for i, t in enumerate(self.tracks) if i not in gone and now - t.last_seen <= self.max_age_s]
        return TrackUpdate(ids, ended)

    def get(self, track_id: str) -> Track | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    def close_all(self) -> list[Track]:
        """Close every open track (end of a source)."""
        ended, self.tracks = self.tracks, []
        return ended
