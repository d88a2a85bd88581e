"""Tracking benchmark: the real ingest path on generated entrance scenes, per scene and processed fps.

Each scene of ``footfall.scenes`` (visitors made from UTKFace test-split photos) is played
through ``CameraWorker.process`` as the ingest runs it: YuNet at the ingest's detect width,
the tracker, the crop sampling, the confirmation rule; only Redis is replaced by a list that
keeps what would have been published. Frames are processed at 3, 5 and 10 fps (the ingest's
rate cap on a 25 fps source) and, per scene, fps and tracker, printed:

- visitors (truth) and counted (tracks ending with >= FOOTFALL_MIN_TRACK_FACES crops), count error;
- ID switches and IDF1 / MOTA (``motmetrics``; a detection matches a true face within half a face
  width of its centre), over every tracked detection;
- fragmented: visitors counted more than once; mixed: counted tracks whose crops come from two people;
- detector ms per processed frame and detector cost per second of video relative to "today" at 5 fps;
  crops published per counted visitor (a tentative track publishes none);
  tracker ms per frame (assignment, appearance histograms, crop sampling: the ingest's work past the detector).

Trackers: ``today`` (``GreedyTracker``, before issue 19), ``sort`` (Kalman + Hungarian on position
and size, no appearance, no confirmation: SORT) and ``new`` (``Tracker`` as the ingest runs it).

    .venv/bin/python benchmarks/tracking.py                   # all scenes, 3/5/10 fps (~1-2 min)
    .venv/bin/python benchmarks/tracking.py --scenes crowd --fps 5 --trackers new
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import motmetrics as mm
import numpy as np

from footfall.config import AggregatorSettings, IngestSettings, ModelSettings
from footfall.ingest.service import CameraSource, CameraWorker
from footfall.scenes import FPS, SCENES, Scene, SceneRenderer, TruthBox, scene_faces
from footfall.schema import FaceMessage, TrackEnd
from footfall.tracking import GreedyTracker, Tracker
from footfall.vision import Detections, FaceDetector, ensure_yunet

TRACKERS: dict[str, Callable[[str, IngestSettings], object]] = {
    "today": lambda prefix, s: GreedyTracker(prefix, iou_threshold=0.3, max_age_s=s.track_max_age_s),
    "sort": lambda prefix, s: Tracker(prefix, max_age_s=s.track_max_age_s, max_speed=s.track_max_speed, n_init=1,
                                      appearance_weight=0.0, max_appearance_distance=1.0),
    "new": lambda prefix, s: Tracker(prefix, max_age_s=s.track_max_age_s, max_speed=s.track_max_speed,
                                     n_init=s.track_confirm_hits),
}
MATCH_DISTANCE = 0.5  # face widths between a detection's centre and a true face's centre


class RecordingPublisher:
    """Stands in for Redis: keeps what the worker publishes."""

    def __init__(self) -> None:
        self.messages: list[FaceMessage | TrackEnd] = []

    def publish(self, messages: list) -> None:
        self.messages += messages

    def camera_state(self, state) -> None:
        pass


class CachingDetector:
    """The real detector, run once per (scene, frame) and shared by every tracker; times each call."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.key = detector, None
        self.cache: dict = {}
        self.seconds: dict = {}
        self.spent = 0.0  # seconds the last call took (0 when cached)

    def detect(self, frame: np.ndarray) -> Detections:
        self.spent = 0.0
        if self.key not in self.cache:
            t0 = time.perf_counter()
            self.cache[self.key] = self.detector.detect(frame)
            self.spent = self.seconds[self.key] = time.perf_counter() - t0
        return self.cache[self.key]


def processed_frames(frames: int, max_fps: float, source_fps: int = FPS) -> list[int]:
    """The frame indices the ingest's rate cap processes (``CameraWorker._read``)."""
    interval, next_due, kept = 1.0 / max_fps, 0.0, []
    for index in range(frames):
        t = index / source_fps
        if t + 1e-6 < next_due:
            continue
        next_due = max(next_due + interval, t)
        kept.append(index)
    return kept


def truth_matches(truth: list[TruthBox], boxes: np.ndarray) -> np.ndarray:
    """(truth, boxes) centre distance in face widths, NaN beyond ``MATCH_DISTANCE`` (motmetrics' no-match)."""
    if not truth or not len(boxes):
        return np.zeros((len(truth), len(boxes)))
    tb = np.array([t.box for t in truth], np.float64)
    d = np.linalg.norm((tb[:, None, :2] + tb[:, None, 2:] / 2) - (boxes[None, :, :2] + boxes[None, :, 2:] / 2),
                       axis=2) / tb[:, None, 2]
    d[d > MATCH_DISTANCE] = np.nan
    return d


def identity_of(truth: list[TruthBox], box: tuple) -> int | None:
    d = truth_matches(truth, np.array([box], np.float64))
    if not len(d) or np.isnan(d[:, 0]).all():
        return None
    return truth[int(np.nanargmin(d[:, 0]))].identity


@dataclass
class SceneRun:
    scene: Scene
    tracker: str
    fps: float
    accumulator: mm.MOTAccumulator
    frames: int
    detector_s: float
    process_s: float
    counted: int = 0
    fragmented: int = 0
    mixed: int = 0
    ends: list[TrackEnd] = field(default_factory=list)
    track_identities: dict[str, Counter] = field(default_factory=dict)  # counted track -> crops per visitor


def run_scene(scene: Scene, renderer: SceneRenderer, detector: CachingDetector, tracker: str, fps: float,
              settings: IngestSettings, min_track_faces: int) -> SceneRun:
    publisher = RecordingPublisher()
    worker = CameraWorker(CameraSource(scene.name, f"scene:{scene.name}"), settings, detector, publisher,
                          threading.Event())
    worker.tracker = TRACKERS[tracker](f"{scene.name}:{tracker}", settings)
    accumulator = mm.MOTAccumulator(auto_id=True)
    frame_truth: dict[int, list[TruthBox]] = {}
    update = worker.tracker.update
    seen: dict = {}
    numbers: dict[str, int] = {}

    def recording_update(boxes, now, frame_size=None, appearance=None):
        result = update(boxes, now, frame_size, appearance) if tracker != "today" else update(boxes, now, frame_size)
        seen["ids"], seen["boxes"] = result.track_ids, np.asarray(boxes, np.float64).reshape(-1, 4)
        return result

    worker.tracker.update = recording_update
    detector_s = process_s = 0.0
    indices = processed_frames(scene.frames, fps)
    for index in indices:
        frame, truth = renderer.frame(index)
        frame_truth[index] = truth
        detector.key = (scene.name, index)
        detector.spent = 0.0
        seen["ids"], seen["boxes"] = [], np.zeros((0, 4))  # a frame the ingest skips (a flash) tracks nothing
        t0 = time.perf_counter()
        worker.process(frame, index / FPS, index)
        process_s += time.perf_counter() - t0 - detector.spent  # the ingest's work past the detector
        detector_s += detector.seconds.get(detector.key, 0.0)  # measured once, whichever tracker came first
        hypotheses = [numbers.setdefault(i, len(numbers)) for i in seen["ids"]]  # motmetrics wants numbers
        accumulator.update([t.identity for t in truth], hypotheses, truth_matches(truth, seen["boxes"]))
    worker._end_tracks(worker.tracker.close_all())
    run = SceneRun(scene, tracker, fps, accumulator, len(indices), detector_s, process_s)
    crops: dict[str, Counter] = defaultdict(Counter)
    for m in publisher.messages:
        if isinstance(m, FaceMessage):
            crops[m.track_id][identity_of(frame_truth[m.frame], m.box)] += 1
        else:
            run.ends.append(m)
    counted = [e for e in run.ends if e.faces >= min_track_faces]
    run.counted = len(counted)
    run.track_identities = {e.track_id: crops[e.track_id] for e in counted}
    run.mixed = sum(1 for c in run.track_identities.values() if len([k for k in c if k is not None]) > 1)
    per_visitor = Counter(c.most_common(1)[0][0] for c in run.track_identities.values() if c)
    run.fragmented = sum(1 for k, n in per_visitor.items() if k is not None and n > 1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default=",".join(SCENES), help="comma-separated scene names")
    parser.add_argument("--fps", default="3,5,10", help="processed frames per second to try")
    parser.add_argument("--trackers", default=",".join(TRACKERS), help="comma-separated: " + ", ".join(TRACKERS))
    args = parser.parse_args()
    settings = IngestSettings()
    min_faces = AggregatorSettings().min_track_faces
    scenes = [SCENES[n] for n in args.scenes.split(",")]
    rates = [float(f) for f in args.fps.split(",")]
    trackers = args.trackers.split(",")
    faces = scene_faces(ModelSettings().data_dir)
    detector = CachingDetector(FaceDetector(ensure_yunet(settings.models_dir), settings.detect_width,
                                            settings.detection_threshold, min_face_px=settings.min_face_px))
    print(f"detect width {settings.detect_width}, min track faces {min_faces}, crops every "
          f"{settings.track_sample_interval_s} s; {sum(s.visitors for s in scenes)} visitors in {len(scenes)} scenes")
    runs: list[SceneRun] = []
    header = (f"{'scene':<18} {'fps':>4} {'tracker':<6} {'truth':>5} {'count':>5} {'err%':>6} {'IDsw':>4} "
              f"{'frag':>4} {'mixed':>5} {'IDF1':>6} {'MOTA':>6} {'det ms/f':>8} {'track ms/f':>10}")
    print(header)
    for scene in scenes:
        renderer = SceneRenderer(scene, faces)
        for fps in rates:
            for name in trackers:
                run = run_scene(scene, renderer, detector, name, fps, settings, min_faces)
                runs.append(run)
                summary = mm.metrics.create().compute(run.accumulator, metrics=["idf1", "mota", "num_switches"])
                row = summary.iloc[0]
                err = 100.0 * (run.counted - scene.visitors) / scene.visitors
                print(f"{scene.name:<18} {fps:>4g} {name:<6} {scene.visitors:>5} {run.counted:>5} {err:>+6.1f} "
                      f"{int(row.num_switches):>4} {run.fragmented:>4} {run.mixed:>5} {row.idf1:>6.3f} "
                      f"{row.mota:>6.3f} {1000 * run.detector_s / run.frames:>8.1f} "
                      f"{1000 * run.process_s / run.frames:>10.2f}", flush=True)
    print("\nAll scenes together (IDF1/MOTA over every frame; detector cost per second of video vs the first tracker at 5 fps):")
    print(f"{'fps':>4} {'tracker':<6} {'truth':>5} {'count':>5} {'err%':>6} {'IDsw':>4} {'frag':>4} {'mixed':>5} "
          f"{'IDF1':>6} {'MOTA':>6} {'det cost':>8} {'crops/visitor':>13}")
    video_s = sum(s.duration_s for s in scenes)
    # Detector cost per second of video (measured once per frame, shared by the trackers), relative to today's 5 fps.
    baseline = sum(r.detector_s for r in runs if r.fps == 5 and r.tracker == trackers[0]) / video_s or None
    for fps in rates:
        for name in trackers:
            group = [r for r in runs if r.fps == fps and r.tracker == name]
            summary = mm.metrics.create().compute_many([r.accumulator for r in group], names=[str(i) for i in
                                                       range(len(group))], metrics=["idf1", "mota", "num_switches"],
                                                       generate_overall=True).loc["OVERALL"]
            truth, counted = sum(r.scene.visitors for r in group), sum(r.counted for r in group)
            cost = sum(r.detector_s for r in group) / video_s
            print(f"{fps:>4g} {name:<6} {truth:>5} {counted:>5} {100.0 * (counted - truth) / truth:>+6.1f} "
                  f"{int(summary.num_switches):>4} {sum(r.fragmented for r in group):>4} "
                  f"{sum(r.mixed for r in group):>5} {summary.idf1:>6.3f} {summary.mota:>6.3f} "
                  f"{cost / baseline if baseline else float('nan'):>7.2f}x "
                  f"{np.mean([e.faces for r in group for e in r.ends if e.faces >= min_faces]):>13.1f}")


if __name__ == "__main__":
    main()
