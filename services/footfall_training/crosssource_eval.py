"""The model on faces from other sources: the cross-source report of ``footfall-evaluate``.

Every photo of the cross-source set (``footfall_training.crosssource``) goes the product's way:
YuNet, set up as the ingest worker sets it up, on the photo framed by a black border (as the
pipeline crops of the test splits, ``footfall_training.pipeline_crops``), the detection nearest
the centre, ``align_face`` on its five landmarks, then the model, single pass and flip-averaged.
Photos where YuNet finds no face count in the detection rate and are left out of the
accuracies: the product would not see them either.

Reported per split (val: for choosing checkpoints; test: for reporting; all) and per group
(colour vs grayscale photos, frontal vs turned faces, LFW vs other photos): gender accuracy,
recall of each gender and the share called female; emotion accuracy, macro-F1, per-class
recall, the share predicted neutral and the confusion matrix. The set has no ages.

    footfall-evaluate model/footfall_w050.int8.onnx --flip both --cross-source only --markdown

Pose: the nose tip's offset from the eyes' midpoint along the eye line, in eye distances
(``yaw_ratio``); beyond ``TURNED_YAW_RATIO`` (about 20 degrees of yaw) a face counts as turned.

>>> eyes_nose = np.array([[40., 50.], [70., 50.], [55., 65.], [45., 80.], [65., 80.]])
>>> float(yaw_ratio(eyes_nose))
0.0
>>> shifted = eyes_nose.copy(); shifted[2, 0] += 9
>>> float(yaw_ratio(shifted))
0.3
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from footfall.labels import EMOTIONS, GENDERS
from footfall_training.crosssource import CrossSourceSet, load_crosssource
from footfall_training.data import load_arrays, save_arrays
from footfall_training.metrics import class_recall, confusion, macro_f1
from footfall.predictions import Predictions
from footfall.vision import CROP_SIZE, FACE_TEMPLATE_112, FaceDetector, align_face

log = logging.getLogger(__name__)

TURNED_YAW_RATIO = 0.2
# A photo whose colour channels differ by less than this on average (0-255) is grayscale.
GRAYSCALE_SPREAD = 2.0
CROPS_VERSION = 1  # bump when the procedure changes in a way the cache key does not see
SPLITS = ("val", "test", "all")
NEUTRAL = EMOTIONS.index("neutral")
FEMALE = GENDERS.index("female")


def yaw_ratio(landmarks: np.ndarray) -> float:
    """Nose tip's offset from the eyes' midpoint along the eye line, in eye distances (YuNet's
    landmark order: right eye, left eye, nose tip, mouth corners); 0 for a frontal face."""
    eye_a, eye_b, nose = (np.asarray(landmarks[i], np.float64) for i in range(3))
    axis = eye_b - eye_a
    return float(np.dot(nose - (eye_a + eye_b) / 2, axis) / max(float(np.dot(axis, axis)), 1e-6))


def is_grayscale(image_bgr: np.ndarray) -> bool:
    """Whether a photo's three channels are (nearly) the same everywhere.

    >>> grey = np.full((4, 4, 3), 90, np.uint8); is_grayscale(grey)
    True
    >>> grey[..., 2] = 200; is_grayscale(grey)
    False
    """
    channels = image_bgr.astype(np.int16)
    spread = (np.abs(channels[..., 0] - channels[..., 1]) + np.abs(channels[..., 1] - channels[..., 2])).mean()
    return bool(spread < GRAYSCALE_SPREAD)


@dataclass
class CrossSourceCrops:
    """The pipeline crops of the set's photos and what the evaluation groups them by."""

    images: np.ndarray  # (N, 112, 112, 3) uint8 RGB; zeros where no face was found
    detected: np.ndarray  # (N,) bool
    yaw: np.ndarray  # (N,) float32 yaw_ratio, NaN where no face was found
    grayscale: np.ndarray  # (N,) bool


def crop_photo(image_bgr: np.ndarray, detector: FaceDetector) -> tuple[np.ndarray | None, float]:
    """The 112x112 RGB crop the ingest worker would publish for this photo's face, and its yaw
    ratio; ``(None, nan)`` when YuNet finds no face."""
    from footfall_training.pipeline_crops import pad_for_detection

    framed, pad = pad_for_detection(image_bgr)
    dets = detector.detect(framed)
    if len(dets) == 0:
        return None, float("nan")
    centre = np.array(framed.shape[1::-1], np.float32) / 2
    best = int(np.argmin(np.linalg.norm(dets.boxes[:, :2] + dets.boxes[:, 2:] / 2 - centre, axis=1)))
    landmarks = dets.landmarks[best] - pad
    crop = align_face(image_bgr, landmarks, CROP_SIZE)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), yaw_ratio(landmarks)


def crop_set(faces: CrossSourceSet, detector: FaceDetector) -> CrossSourceCrops:
    n = len(faces)
    crops = CrossSourceCrops(np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8), np.zeros(n, bool),
                             np.full(n, np.nan, np.float32), np.zeros(n, bool))
    t0 = time.time()
    for i, data in enumerate(faces.jpegs):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{faces.names[i]}: not a decodable image")
        crops.grayscale[i] = is_grayscale(image)
        crop, yaw = crop_photo(image, detector)
        if crop is not None:
            crops.images[i], crops.detected[i], crops.yaw[i] = crop, True, yaw
        if (i + 1) % 2000 == 0:
            log.info("cropped %d of %d photos (%.1f ms each)", i + 1, n, 1000 * (time.time() - t0) / (i + 1))
    return crops


def cache_key(faces: CrossSourceSet, score_threshold: float) -> str:
    parts = [CROPS_VERSION, CROP_SIZE, round(score_threshold, 4), FACE_TEMPLATE_112.round(4).tolist(),
             hashlib.sha256("\n".join(faces.names).encode()).hexdigest()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def load_crops(faces: CrossSourceSet, cache_dir: Path | None = None) -> CrossSourceCrops:
    """The pipeline crops of the set, computed once and cached as arrays under ``<cache_dir>/faces``."""
    from footfall.config import IngestSettings, ModelSettings
    from footfall_training.pipeline_crops import make_detector

    threshold = IngestSettings().detection_threshold
    cache = Path(cache_dir or ModelSettings().cache_dir) / "faces" / f"crosssource_{cache_key(faces, threshold)}"
    if (cache / "done").exists():
        return load_arrays(CrossSourceCrops, cache)
    log.info("cropping %d cross-source photos the pipeline's way (cached afterwards in %s)", len(faces), cache)
    crops = crop_set(faces, make_detector())
    save_arrays(crops, cache)
    return crops


# ---- the report ----------------------------------------------------------------------------------

def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def group_report(p: Predictions, gender: np.ndarray, emotion: np.ndarray) -> dict:
    """Gender and emotion figures of one group of detected faces (labels -1 where unknown)."""
    out: dict = {"faces": int(len(gender))}
    g = gender >= 0
    if g.any():
        called = (p.gender[g] >= 0.5).astype(int)
        out["gender_faces"] = int(g.sum())
        out["gender_acc"] = float((called == gender[g]).mean())
        out["gender_recall"] = {name: float((called[gender[g] == i] == i).mean())
                                for i, name in enumerate(GENDERS) if (gender[g] == i).any()}
        out["called_female"] = _share(called == FEMALE)
        out["truly_female"] = _share(gender[g] == FEMALE)
    e = emotion >= 0
    if e.any():
        predicted = p.emotion[e].argmax(1)
        cm = confusion(emotion[e], predicted, len(EMOTIONS))
        out["emotion_faces"] = int(e.sum())
        out["emotion_acc"] = float(np.trace(cm) / cm.sum())
        out["emotion_macro_f1"] = macro_f1(cm)
        out["emotion_recall"] = class_recall(cm, EMOTIONS)
        out["emotion_confusion"] = cm.tolist()
        out["predicted_neutral"] = _share(predicted == NEUTRAL)
        out["truly_neutral"] = _share(emotion[e] == NEUTRAL)
    return out


def crosssource_report(p: Predictions, faces: CrossSourceSet, crops: CrossSourceCrops) -> dict:
    """Detection rate per split and every group's figures; ``p``: predictions on the detected faces."""
    detected = np.flatnonzero(crops.detected)
    split, source = faces.split[detected], faces.source[detected]
    yaw, grey = np.abs(crops.yaw[detected]), crops.grayscale[detected]
    gender, emotion = faces.gender[detected], faces.emotion[detected]
    report: dict = {"photos": {s: int((faces.split == s).sum()) if s != "all" else len(faces) for s in SPLITS},
                    "detection_rate": {s: float(crops.detected[faces.split == s].mean()) if s != "all"
                                       else float(crops.detected.mean()) for s in SPLITS},
                    "turned_yaw_ratio": TURNED_YAW_RATIO, "splits": {}, "groups": {}}
    for s in SPLITS:
        m = np.ones(len(detected), bool) if s == "all" else split == s
        report["splits"][s] = group_report(p[np.flatnonzero(m)], gender[m], emotion[m])
    groups = {"colour": ~grey, "grayscale": grey, "frontal": yaw < TURNED_YAW_RATIO,
              "turned": yaw >= TURNED_YAW_RATIO, "lfw": source == "lfw", "other": source == "other"}
    for name, m in groups.items():
        if m.any():
            report["groups"][name] = group_report(p[np.flatnonzero(m)], gender[m], emotion[m])
    return report


def evaluate_crosssource(model_path: Path, flips: list[bool], threads: int = 2, limit: int = 0,
                         seed: int = 0, flip_confidence: float = 1.0) -> list[dict]:
    """The cross-source report of one model file, once per flip setting (``limit``: N random photos;
    ``flip_confidence``: flip-average only faces below this top emotion probability, as the worker)."""
    from footfall.inference.backends.base import flip_averaged
    from footfall_training.evaluate import checkpoint_run, load_predictor, model_format

    faces = load_crosssource()
    crops = load_crops(faces)
    if limit and limit < len(faces):
        keep = np.sort(np.random.default_rng(seed).choice(len(faces), size=limit, replace=False))
        faces = faces.subset(keep)
        crops = CrossSourceCrops(**{f.name: getattr(crops, f.name)[keep] for f in fields(CrossSourceCrops)})
    results = []
    predictor, name = load_predictor(model_path, threads=threads)  # loaded once, run both ways
    for flip in flips:
        t0 = time.time()
        p = (flip_averaged(predictor, flip_confidence) if flip else predictor)(crops.images[crops.detected])
        results.append({"model": str(model_path), "name": name, "format": model_format(model_path), "flip": flip,
                        "flip_confidence": flip_confidence if flip else None,
                        "crops": "pipeline", "run": checkpoint_run(model_path), **crosssource_report(p, faces, crops),
                        "seconds": round(time.time() - t0, 1)})
    return results


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}"


def render_crosssource(results: list[dict], markdown: bool = False) -> str:
    """The cross-source tables (accuracies and shares in %)."""
    from footfall_training.evaluate import label, table

    h = "### " if markdown else "== "
    out = [f"{h}Faces from other sources: gender and emotion per split (pipeline crops; accuracies in %)", "",
           "Split by identity (val: for choosing checkpoints, test: for reporting). No ages in this set.", ""]
    headers = ["model", "split", "photos", "detected %", "gender acc", "female recall", "male recall",
               "called female % (true)", "emotion acc", "emotion F1", "predicted neutral % (true)"]
    rows = []
    for r in results:
        for s in SPLITS:
            g = r["splits"][s]
            recall = g.get("gender_recall", {})
            rows.append([label(r), s, str(r["photos"][s]), _pct(r["detection_rate"][s]), _pct(g.get("gender_acc")),
                         _pct(recall.get("female")), _pct(recall.get("male")),
                         f"{_pct(g.get('called_female'))} ({_pct(g.get('truly_female'))})",
                         _pct(g.get("emotion_acc")), _pct(g.get("emotion_macro_f1")),
                         f"{_pct(g.get('predicted_neutral'))} ({_pct(g.get('truly_neutral'))})"])
    out += [table(headers, rows, markdown), ""]
    rows = [[label(r)] + [_pct(r["splits"]["all"].get("emotion_recall", {}).get(e)) for e in EMOTIONS]
            for r in results]
    faces = results[0]["splits"]["all"].get("emotion_confusion") if results else None
    counts = [str(sum(row)) for row in faces] if faces else ["-"] * len(EMOTIONS)
    out += [f"{h}Faces from other sources: emotion recall per class (all splits, %)", "",
            table(["model"] + [f"{e} ({n})" for e, n in zip(EMOTIONS, counts)], rows, markdown), ""]
    for r in results:
        rows = []
        for group, g in r["groups"].items():
            recall = g.get("gender_recall", {})
            rows.append([group, str(g["faces"]), _pct(g.get("gender_acc")), _pct(recall.get("female")),
                         _pct(recall.get("male")), _pct(g.get("emotion_acc")), _pct(g.get("emotion_macro_f1")),
                         _pct(g.get("predicted_neutral"))])
        out += [f"{h}Faces from other sources: groups, {label(r)} (all splits; turned: |yaw ratio| >= "
                f"{r['turned_yaw_ratio']})", "",
                table(["group", "faces", "gender acc", "female recall", "male recall", "emotion acc", "emotion F1",
                       "predicted neutral %"], rows, markdown), ""]
    for r in results:
        cm = r["splits"]["all"].get("emotion_confusion")
        if cm:
            rows = [[e] + [str(v) for v in cm[i]] for i, e in enumerate(EMOTIONS)]
            out += [f"{h}Faces from other sources: emotion confusion, {label(r)} (all splits; rows: truth, "
                    f"columns: predicted)", "", table(["truth"] + list(EMOTIONS), rows, markdown), ""]
    return "\n".join(out)
