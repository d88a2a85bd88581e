"""Evaluate any face model file on the test splits: accuracy, fairness, robustness.

One code path for every format: ``load_predictor(path)`` returns a function from uint8 RGB
faces (N, 112, 112, 3) to ``Predictions`` for a PyTorch checkpoint (``.pt``), an ONNX model
(FP32 or INT8, run through the project's own onnxruntime backend) or an ``.rknn`` file (rknn
backend, on the board); ``footfall_training.metrics.head_metrics`` scores them all.

Reported (UTKFace test: age, gender, race; FER+ test: emotion):
- heads: age MAE overall and per age band, gender accuracy, race accuracy and macro-F1,
  emotion accuracy, macro-F1, confusion matrix and the 3-class valence view;
- fairness: gender accuracy and age MAE per race, per gender and per age band;
- robustness: the head metrics after downscaling the face to 32/48/64 px and back, horizontal
  motion blur, JPEG quality 30 and brightness +-40 %.

    footfall-evaluate model/footfall_w050.int8.onnx
    footfall-evaluate ~/.cache/footfall/runs/w050/best.pt model/footfall_w050.onnx --json eval.json --markdown
    footfall-evaluate model/footfall_w050.onnx --crops pipeline --limit 300

``--crops pipeline`` evaluates on the faces as the ingest worker crops them
(``footfall_training.pipeline_crops``); ``--limit N`` takes N random faces (fixed seed) of each dataset.

Example:
    >>> faces = np.full((2, 112, 112, 3), 100, np.uint8)
    >>> [int(t(faces).mean()) for t in (ROBUSTNESS["bright+40"], ROBUSTNESS["bright-40"])]
    [140, 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from footfall.inference.backends.base import averaged_with_mirror, flip_averaged, flip_mark, unsure_faces
from footfall.labels import AGE_BANDS, EMOTIONS, GENDERS, RACES
from footfall_training.data import DATASETS, DatasetMissing, FaceSet, load_split
from footfall_training.metrics import agreement, head_metrics, original_label_metrics
from footfall.predictions import Predictions

log = logging.getLogger("footfall.evaluate")

Predictor = Callable[[np.ndarray], Predictions]


def flip_label(confidence: float = 1.0) -> str:
    """The row-name mark of flip averaging: every face, or only those below an emotion confidence.

    >>> flip_label(), flip_label(0.65)
    (' + flip', ' + flip<0.65')
    """
    return " + " + flip_mark(confidence)


FLIP_LABEL = flip_label()  # marks flip-averaged results in row names (tables here, benchmarks/model_speed.py)

# Scalar head metrics shown in summary tables, with their column titles.
HEADLINE = (
    ("age_mae", "age MAE"),
    ("gender_acc", "gender acc"),
    ("race_acc", "race acc"),
    ("race_macro_f1", "race F1"),
    ("emotion_acc", "emotion acc"),
    ("emotion_macro_f1", "emotion F1"),
    ("valence_acc", "valence acc"),
)


# --- one prediction path for every model format ------------------------------------------

def model_format(path: Path) -> str:
    """``pytorch``, ``onnx-fp32``, ``onnx-int8`` or ``rknn`` (ONNX precision read from the file's metadata)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "pytorch"
    if suffix == ".rknn":
        return "rknn"
    if suffix == ".onnx":
        from footfall.model_file import ModelMetadata

        try:
            precision = ModelMetadata.from_onnx_file(path).precision
        except ValueError:  # an ONNX file without our metadata: a plain float export
            precision = "fp32"
        return f"onnx-{precision}"
    raise ValueError(f"unknown model format of {path} (expected .pt, .onnx or .rknn)")


def load_predictor(model_path: Path, threads: int = 2, batch_size: int = 64,
                   flip: bool = False, flip_confidence: float = 1.0) -> tuple[Predictor, str]:
    """A function faces -> Predictions for the model file, and the model's name (``flip``: each
    face averaged with its mirror image, as the inference worker's ``FOOTFALL_FLIP_AVERAGE``; only
    faces whose top emotion probability is below ``flip_confidence``, as ``FOOTFALL_FLIP_CONFIDENCE``)."""
    model_path = Path(model_path)
    fmt = model_format(model_path)
    if fmt == "pytorch":
        import torch

        from footfall_training.train import load_checkpoint, predict_torch

        torch.set_num_threads(threads)
        net = load_checkpoint(model_path)
        predictor = partial(predict_torch, net, device=torch.device("cpu"), batch_size=batch_size,
                            image_size=net.image_size)
        return (flip_averaged(predictor, flip_confidence) if flip else predictor), net.export_name
    from footfall.inference.backends import load_backend

    backend = load_backend("onnxruntime" if fmt.startswith("onnx") else "rknn", model_path, threads=threads,
                           flip_average=flip, flip_confidence=flip_confidence)

    def run(images: np.ndarray) -> Predictions:
        if len(images) == 0:
            raise ValueError("no faces to predict")
        return Predictions.concat([backend.predict_faces(images[i:i + batch_size])
                                   for i in range(0, len(images), batch_size)])

    return run, backend.metadata.name


def checkpoint_run(model_path: Path) -> str:
    """The training run a PyTorch checkpoint comes from ('' for other formats): several runs' checkpoints
    share a model name, result tables tell them apart by it."""
    if model_format(Path(model_path)) != "pytorch":
        return ""
    import torch

    return torch.load(model_path, map_location="cpu", weights_only=False)["config"].get("run", "")


def predict(model_path: Path, images: np.ndarray, threads: int = 2, flip: bool = False) -> Predictions:
    """Predictions of any model file on uint8 RGB faces (N, 112, 112, 3)."""
    predictor, _ = load_predictor(model_path, threads=threads, flip=flip)
    return predictor(images)


# --- test faces --------------------------------------------------------------------------

def sample_per_dataset(dataset: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` random samples of each dataset (all when limit is 0).

    >>> sample_per_dataset(np.array([0, 0, 0, 1, 1]), 1, seed=0).tolist()
    [2, 4]
    """
    if not limit:
        return np.arange(len(dataset))
    rng = np.random.default_rng(seed)
    picked = []
    for value in np.unique(dataset):
        rows = np.flatnonzero(dataset == value)
        picked.append(rng.choice(rows, size=min(limit, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def load_test_faces(crops: str = "dataset", limit: int = 0, seed: int = 0, split: str = "test"
               ) -> tuple[FaceSet, np.ndarray | None]:
    """The split's faces (dataset crops or pipeline crops), and the detected mask for pipeline crops."""
    if crops == "dataset":
        faces = load_split(split)
        index = sample_per_dataset(faces.dataset, limit, seed)
        return faces.subset(index), None
    if crops == "pipeline":
        from footfall_training.pipeline_crops import load_pipeline_split

        pc = load_pipeline_split(split)
        pc = pc.subset(sample_per_dataset(pc.faces.dataset, limit, seed))
        return pc.faces, pc.detected
    raise ValueError(f"crops must be 'dataset' or 'pipeline', not {crops!r}")


# --- robustness: what cameras do to faces --------------------------------------------------

def downscale(images: np.ndarray, px: int) -> np.ndarray:
    """Faces shrunk to ``px`` x ``px`` (area averaging, like a far-away face) and scaled back up."""
    size = images.shape[1]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        small = cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def motion_blur(images: np.ndarray, length: int = 9) -> np.ndarray:
    """Horizontal motion blur over ``length`` pixels (a person walking past the camera)."""
    kernel = np.full((1, length), 1.0 / length, np.float32)
    return np.stack([cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REPLICATE) for img in images])


def jpeg(images: np.ndarray, quality: int = 30) -> np.ndarray:
    """JPEG compression artefacts (encoded in BGR like a camera encoder; the arrays stay RGB)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out[i] = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    """Pixel values scaled by ``factor`` (1.4 = 40 % brighter), clipped to 0..255."""
    return np.clip(images.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


ROBUSTNESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "down32": partial(downscale, px=32),
    "down48": partial(downscale, px=48),
    "down64": partial(downscale, px=64),
    "motion_blur9": partial(motion_blur, length=9),
    "jpeg30": partial(jpeg, quality=30),
    "bright+40": partial(brightness, factor=1.4),
    "bright-40": partial(brightness, factor=0.6),
}


# --- fairness -----------------------------------------------------------------------------

def group_metrics(p: Predictions, faces: FaceSet, groups: dict[str, np.ndarray]) -> dict[str, dict]:
    """Gender accuracy and age MAE (with sample count) within each boolean mask of ``groups``.

    >>> faces = FaceSet(images=np.zeros((2, 1, 1, 3), np.uint8), age=np.array([20., 50.], np.float32),
    ...                 gender=np.array([0, 1], np.int8), race=np.array([0, 1], np.int8),
    ...                 emotion=np.array([-1, -1], np.int8), emotion_votes=np.zeros((2, 7), np.float32),
    ...                 dataset=np.zeros(2, np.int8))
    >>> p = Predictions(np.array([22., 50.]), np.array([0.2, 0.3]), np.eye(5)[[0, 1]], np.eye(7)[[0, 0]])
    >>> group_metrics(p, faces, {"white": faces.race == 0, "black": faces.race == 1})
    {'white': {'n': 1, 'gender_acc': 1.0, 'age_mae': 2.0}, 'black': {'n': 1, 'gender_acc': 0.0, 'age_mae': 0.0}}
    """
    out = {}
    for name, mask in groups.items():
        g = mask & (faces.gender >= 0)
        a = mask & ~np.isnan(faces.age)
        if not (g.any() or a.any()):
            continue
        row: dict = {"n": int((mask & ((faces.gender >= 0) | ~np.isnan(faces.age))).sum())}
        if g.any():
            row["gender_acc"] = float(((p.gender[g] >= 0.5).astype(int) == faces.gender[g]).mean())
        if a.any():
            row["age_mae"] = float(np.abs(p.age[a] - faces.age[a]).mean())
        out[name] = row
    return out


def fairness(p: Predictions, faces: FaceSet) -> dict[str, dict]:
    """Gender accuracy and age MAE per race, per gender and per age band (UTKFace labels)."""
    age = np.nan_to_num(faces.age, nan=-1.0)
    return {
        "race": group_metrics(p, faces, {r: faces.race == i for i, r in enumerate(RACES)}),
        "gender": group_metrics(p, faces, {g: faces.gender == i for i, g in enumerate(GENDERS)}),
        "age_band": group_metrics(p, faces, {label: (age >= lo) & (age < hi) for label, lo, hi in AGE_BANDS}),
    }


# --- one model, all reports ----------------------------------------------------------------

def scalars(metrics: dict) -> dict[str, float]:
    return {k: metrics[k] for k, _ in HEADLINE if k in metrics}


def evaluate_model(model_path: Path, faces: FaceSet, detected: np.ndarray | None = None, robustness: bool = True,
                   threads: int = 2, crops: str = "dataset", flip: bool = False, flip_confidence: float = 1.0) -> dict:
    """Every report of one model file on ``faces``, as a JSON-ready dict."""
    t0 = time.time()
    predictor, name = load_predictor(model_path, threads=threads, flip=flip, flip_confidence=flip_confidence)
    p = predictor(faces.images)
    labels = dict(age=faces.age, gender=faces.gender, race=faces.race, emotion=faces.emotion)
    result = {
        "model": str(model_path),
        "name": name,
        "format": model_format(model_path),
        "flip": flip,
        "flip_confidence": flip_confidence if flip else None,
        "crops": crops,
        "faces": {n: int((faces.dataset == i).sum()) for i, n in enumerate(DATASETS)},
        "metrics": head_metrics(p, **labels),
        "fairness": fairness(p, faces),
    }
    if (faces.emotion_original >= 0).any():
        result["fer2013_labels"] = original_label_metrics(p.emotion, faces.emotion_original)
    if run := checkpoint_run(model_path):
        result["run"] = run
    if detected is not None:
        result["detection_rate"] = {n: float(detected[faces.dataset == i].mean())
                                    for i, n in enumerate(DATASETS) if (faces.dataset == i).any()}
        result["detected_only"] = scalars(head_metrics(p[np.flatnonzero(detected)],
                                                       **{k: v[detected] for k, v in labels.items()}))
    if robustness:
        result["robustness"] = {"clean": scalars(result["metrics"])}
        for cond, transform in ROBUSTNESS.items():
            result["robustness"][cond] = scalars(head_metrics(predictor(transform(faces.images)), **labels))
    result["seconds"] = round(time.time() - t0, 1)
    return result


# --- floors for the CI test --------------------------------------------------------------

FLOOR_MARGINS = {"acc": 0.03, "age_mae": 0.5, "gender_agreement": 0.015, "emotion_agreement": 0.03,
                 "age_mean_abs_diff": 0.5}


def floors(measured: dict[str, dict[str, float]]) -> dict:
    """The worst figure of the measured models minus ``FLOOR_MARGINS``.

    >>> floors({"a.onnx": {"age_mae": 5.0, "gender_acc": 0.9, "race_acc": 0.8, "emotion_acc": 0.8},
    ...         "b.onnx": {"age_mae": 5.2, "gender_acc": 0.92, "race_acc": 0.79, "emotion_acc": 0.81}})["race_acc_min"]
    0.76
    """
    worst = lambda key, pick: pick(m[key] for m in measured.values())  # noqa: E731
    return {"age_mae_max": round(worst("age_mae", max) + FLOOR_MARGINS["age_mae"], 2),
            "gender_acc_min": round(worst("gender_acc", min) - FLOOR_MARGINS["acc"], 3),
            "race_acc_min": round(worst("race_acc", min) - FLOOR_MARGINS["acc"], 3),
            "emotion_acc_min": round(worst("emotion_acc", min) - FLOOR_MARGINS["acc"], 3),
            "measured": measured}


def accuracy_floor(models: list[Path], faces: FaceSet, limit: int, seed: int, threads: int = 2) -> dict:
    """Thresholds for tests/model (model/accuracy_floor.json): the worst measured figure of the
    models on this subset, minus ``FLOOR_MARGINS``, single pass and flip-averaged; INT8/FP32
    agreement from the pairs among them."""
    preds: dict[Path, Predictions] = {}
    measured: dict[bool, dict[str, dict[str, float]]] = {False: {}, True: {}}
    for path in models:
        predictor, _ = load_predictor(path, threads=threads)  # loaded once, run both ways
        for flip in (False, True):
            p = (flip_averaged(predictor) if flip else predictor)(faces.images)
            if not flip:
                preds[Path(path)] = p
            measured[flip][Path(path).name] = {k: round(v, 4) for k, v in scalars(
                head_metrics(p, faces.age, faces.gender, faces.race, faces.emotion)).items()}
    floor = {
        "comment": "Thresholds of tests/model/test_committed_model.py: measured on this fixed subset "
                   "(footfall-evaluate MODELS --limit N --seed S --floor FILE) minus margins. Regenerate "
                   "whenever the committed model changes.",
        "faces_per_dataset": limit, "seed": seed,
        **floors(measured[False]),
        "flip_average": floors(measured[True]),
    }
    pairs = [(f, i) for i in preds for f in preds if i.name.endswith(".int8.onnx")
             and f.name == i.name.replace(".int8.onnx", ".onnx")]
    if pairs:
        agree = [agreement(preds[i], preds[f]) for f, i in pairs]
        floor["int8_agreement"] = {
            "gender_min": round(min(a["gender_agree"] for a in agree) - FLOOR_MARGINS["gender_agreement"], 3),
            "emotion_min": round(min(a["emotion_agree"] for a in agree) - FLOOR_MARGINS["emotion_agreement"], 3),
            "age_mean_abs_diff_max": round(max(a["age_abs_diff"] for a in agree)
                                           + FLOOR_MARGINS["age_mean_abs_diff"], 2),
            "measured": {i.name: {k: round(v, 4) for k, v in a.items()} for (_, i), a in zip(pairs, agree)},
        }
    return floor


def flip_confidence_sweep(model_path: Path, faces: FaceSet, thresholds: list[float], threads: int = 2) -> list[dict]:
    """Flip averaging limited to the faces whose top emotion probability is below each threshold
    (the worker's selection and averaging, ``footfall.inference.backends.base.unsure_faces`` and
    ``averaged_with_mirror``): the share of faces that get the mirror-image pass and the head metrics,
    per threshold (0: single pass, 1: every face). Every face and its mirror image run once."""
    predictor, _ = load_predictor(model_path, threads=threads)
    log.info("flip averaging sweep over %d faces: single pass and mirror images", len(faces))
    single = predictor(faces.images)
    mirrored = predictor(np.ascontiguousarray(faces.images[:, :, ::-1]))
    labels = dict(age=faces.age, gender=faces.gender, race=faces.race, emotion=faces.emotion)
    rows = []
    for t in thresholds:
        unsure = unsure_faces(single, t)
        p = averaged_with_mirror(single, unsure, mirrored[unsure])
        rows.append({"confidence": t, "mirrored": len(unsure) / len(faces), **scalars(head_metrics(p, **labels))})
    return rows


def render_flip_sweep(name: str, rows: list[dict], split: str, crops: str, markdown: bool = False) -> str:
    h = "### " if markdown else "== "
    keys = ["age_mae", "gender_acc", "race_acc", "emotion_acc", "emotion_macro_f1"]
    titles = dict(HEADLINE)
    table_rows = [[f"{r['confidence']:g}", f"{100 * r['mirrored']:.1f}", f"{1 + r['mirrored']:.2f}x"]
                  + [fmt(k, r.get(k)) for k in keys] for r in rows]
    return "\n".join([f"{h}Flip averaging below an emotion confidence, {name} ({split} split, {crops} crops)", "",
                      table(["confidence below", "faces mirrored %", "model runs per face"] + [titles[k] for k in keys],
                            table_rows, markdown), ""])


# --- rendering -----------------------------------------------------------------------------

def fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    if "mae" in key:
        return f"{value:.2f}"
    return f"{100 * value:.1f}"


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:"
                                                                   for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def label(result: dict) -> str:
    """A results row's name: model, format, flip averaging, crops, and the training run of a checkpoint."""
    run = f", run {result['run']}" if result.get("run") else ""
    flip = flip_label(result.get("flip_confidence") or 1.0) if result.get("flip") else ""
    return f"{result['name']} {result['format']}{flip} ({result['crops']} crops{run})"


def render(results: list[dict], markdown: bool = False) -> str:
    """All tables of the results (accuracies in %, MAE in years)."""
    h = "### " if markdown else "== "
    out = [f"{h}Head metrics (test split; accuracies in %, MAE in years)", ""]
    rows = [[label(r)] + [fmt(k, r["metrics"].get(k)) for k, _ in HEADLINE] + [str(sum(r["faces"].values()))]
            for r in results]
    out += [table(["model"] + [t for _, t in HEADLINE] + ["faces"], rows, markdown), ""]
    bands = [b for b, _, _ in AGE_BANDS]
    rows = [[label(r)] + [fmt("mae", r["metrics"].get("age_mae_by_band", {}).get(b)) for b in bands] for r in results]
    out += [f"{h}Age MAE per age band (years)", "", table(["model"] + bands, rows, markdown), ""]
    if with_original := [r for r in results if "fer2013_labels" in r]:
        rows = [[label(r), fmt("acc", o["acc"]), fmt("acc", o["mean_recall"])]
                + [fmt("acc", o["recall"].get(e)) + (f" ({fmt('acc', o['called_neutral'][e])})"
                                                    if e in o["called_neutral"] else "") for e in EMOTIONS]
                for r in with_original for o in [r["fer2013_labels"]]]
        out += [f"{h}Emotion against FER2013's own labels (the expression each photo was found by; FER faces; "
                "recall %, in brackets: called neutral %)", "",
                table(["model", "acc", "mean recall"] + list(EMOTIONS), rows, markdown), ""]
    for r in results:
        name = label(r)
        m = r["metrics"]
        if "emotion_confusion" in m:
            cm = np.array(m["emotion_confusion"])
            rows = [[e] + [str(v) for v in cm[i]] + [fmt("acc", cm[i, i] / max(cm[i].sum(), 1))]
                    for i, e in enumerate(EMOTIONS)]
            out += [f"{h}Emotion confusion, {name} (rows: truth, columns: predicted)", "",
                    table(["truth"] + list(EMOTIONS) + ["recall %"], rows, markdown), ""]
            vcm = np.array(m["valence_confusion"])
            rows = [[v] + [str(x) for x in vcm[i]] for i, v in enumerate(("positive", "neutral", "negative"))]
            out += [f"{h}Valence confusion, {name}: accuracy {fmt('acc', m['valence_acc'])} %", "",
                    table(["truth", "positive", "neutral", "negative"], rows, markdown), ""]
        if "detection_rate" in r:
            rates = ", ".join(f"{k} {100 * v:.2f} %" for k, v in r["detection_rate"].items())
            det = ", ".join(f"{t} {fmt(k, r['detected_only'].get(k))}" for k, t in HEADLINE if k in r["detected_only"])
            out += [f"{h}YuNet detection rate, {name}", "",
                    f"{rates}. Faces without a detection keep the dataset crop; on detected faces only: {det}", ""]
        rows = []
        for axis in ("race", "gender", "age_band"):
            for group, g in r["fairness"][axis].items():
                rows.append([f"{axis}={group}", str(g["n"]), fmt("acc", g.get("gender_acc")),
                             fmt("mae", g.get("age_mae"))])
        out += [f"{h}Fairness, {name} (UTKFace test)", "",
                table(["group", "faces", "gender acc", "age MAE"], rows, markdown), ""]
        if "robustness" in r:
            rows = [[cond] + [fmt(k, v.get(k)) for k, _ in HEADLINE] for cond, v in r["robustness"].items()]
            out += [f"{h}Robustness, {name}", "", table(["condition"] + [t for _, t in HEADLINE], rows, markdown), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help=".pt checkpoint, .onnx (FP32/INT8) or .rknn files")
    parser.add_argument("--crops", choices=("dataset", "pipeline"), default="dataset")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=0, help="N random faces of each dataset (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-robustness", action="store_true", help="skip the 7 degraded passes")
    parser.add_argument("--flip", choices=("off", "on", "both"), default="off",
                        help="average each face with its mirror image (FOOTFALL_FLIP_AVERAGE); both: each model twice")
    parser.add_argument("--flip-confidence", type=float, default=1.0,
                        help="flip-average only faces whose top emotion probability is below this "
                             "(FOOTFALL_FLIP_CONFIDENCE; 1: every face)")
    parser.add_argument("--flip-sweep", help="comma-separated emotion confidences: the flip-averaging table per "
                                             "threshold (faces mirrored, head metrics) instead of the reports")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the model card)")
    parser.add_argument("--cross-source", choices=("off", "on", "only"), default="off",
                        help="also (on) or only (only) the faces from other sources (footfall-data crosssource "
                             "builds them; footfall_training.crosssource_eval)")
    parser.add_argument("--floor", type=Path, help="only write the CI test's accuracy floors (measured minus "
                                                   "margins; needs --limit) to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for path in args.models:
        if not path.exists():
            parser.error(f"model file {path} not found")
    if args.floor and (not args.limit or args.crops != "dataset"):
        parser.error("--floor needs --limit N (the CI test's subset) and dataset crops")
    flips = {"off": [False], "on": [True], "both": [False, True]}[args.flip]
    if args.cross_source == "only":
        _cross_source_main(parser, args, flips)
        return
    try:
        faces, detected = load_test_faces(args.crops, args.limit, args.seed, args.split)
    except DatasetMissing as exc:
        parser.exit(2, f"footfall-evaluate: {exc}\n")
    if args.flip_sweep:
        thresholds = [float(t) for t in args.flip_sweep.split(",")]
        for path in args.models:
            rows = flip_confidence_sweep(path, faces, thresholds, args.threads)
            sys.stdout.write(render_flip_sweep(load_predictor(path)[1] + f" {model_format(path)}", rows, args.split,
                                               args.crops, args.markdown) + "\n")
        return
    if args.floor:
        floor = accuracy_floor(args.models, faces, args.limit, args.seed, args.threads)
        args.floor.write_text(json.dumps(floor, indent=2) + "\n")
        sys.stdout.write(json.dumps(floor, indent=2) + "\n")
        return
    results = []
    for path in args.models:
        for flip in flips:
            log.info("evaluating %s%s on %d faces (%s crops)", path, " flip-averaged" if flip else "", len(faces),
                     args.crops)
            results.append(evaluate_model(path, faces, detected, robustness=not args.no_robustness,
                                          threads=args.threads, crops=args.crops, flip=flip,
                                          flip_confidence=args.flip_confidence))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": args.split, "limit": args.limit, "seed": args.seed,
                                         "results": results}, indent=1))
    sys.stdout.write(render(results, markdown=args.markdown) + "\n")
    if args.cross_source == "on":
        _cross_source_main(parser, args, flips)


def _cross_source_main(parser: argparse.ArgumentParser, args: argparse.Namespace, flips: list[bool]) -> None:
    """The cross-source report of every model (``--json``: written next to it as NAME.crosssource.json)."""
    from footfall_training.crosssource import CrossSourceMissing
    from footfall_training.crosssource_eval import evaluate_crosssource, render_crosssource

    try:
        results = [r for path in args.models for r in evaluate_crosssource(path, flips, args.threads, args.limit,
                                                                           args.seed, args.flip_confidence)]
    except CrossSourceMissing as exc:
        parser.exit(2, f"footfall-evaluate: {exc}\n")
    if args.json:
        path = args.json if args.cross_source == "only" else args.json.with_suffix(".crosssource.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"limit": args.limit, "seed": args.seed, "results": results}, indent=1))
    sys.stdout.write(render_crosssource(results, markdown=args.markdown) + "\n")


if __name__ == "__main__":
    main()
