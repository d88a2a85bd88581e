"""Post-hoc logit adjustment of the emotion head: fewer faces called neutral that are not.

FER+'s training labels are mostly neutral and happy, and a model trained on them carries that
prior into its decisions; on faces from other sources it calls angry, disgusted and sad faces
neutral (model card, "Faces from other sources"). Logit adjustment (Menon et al., "Long-tail
learning via logit adjustment", ICLR 2021) subtracts ``tau * log(prior)`` from the emotion logits,
the prior being the share of each emotion among FER+'s training labels: ``tau`` 0 is the model
as trained, 1 the balanced-error decision rule.

``sweep`` measures a range of ``tau`` on one model file, from its predictions on each face and its
mirror image computed once (INT8 or FP32, through the same backends as ``footfall-evaluate``):
FER+ accuracy and macro-F1 (val to choose, test to report), the cross-source set's accuracy,
macro-F1, per-class recall and share predicted neutral (when built), and writes the chosen bias
for ``footfall-export --emotion-bias``, which puts it inside the network (``FaceNet.emotion_bias``)
so every backend applies it alike::

    python -m footfall_training.logit_adjust sweep model/footfall_w050.int8.onnx --flip --cross-source \\
        --tau 0,0.25,0.5 --write-bias bias.json

The bias is applied per pass, before the two passes of flip averaging are averaged, exactly as
the exported network does it (its softmax follows the bias):

>>> p = np.array([[0.7, 0.2, 0.1]])
>>> adjusted_probabilities(p, np.log([0.5, 0.25, 0.25]) * 0).round(3).tolist()
[[0.7, 0.2, 0.1]]
>>> adjusted_probabilities(p, -1.0 * np.log([0.7, 0.2, 0.1])).round(3).tolist()  # tau 1 on its own prior
[[0.333, 0.333, 0.333]]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from footfall.labels import EMOTIONS
from footfall_training.metrics import class_recall, confusion, macro_f1

log = logging.getLogger(__name__)

NEUTRAL = EMOTIONS.index("neutral")


def label_prior(emotion: np.ndarray) -> np.ndarray:
    """Share of each emotion (EMOTIONS order) among labels (indices into EMOTIONS, -1: none).

    >>> label_prior(np.array([6, 3, -1])).tolist()
    [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.5]
    """
    counts = np.bincount(emotion[emotion >= 0].astype(int), minlength=len(EMOTIONS)).astype(np.float64)
    return counts / counts.sum()


def training_prior(data_dir: Path | None = None) -> np.ndarray:
    """Share of each emotion among the FER+ training faces' majority labels (read from the manifest)."""
    from footfall.config import ModelSettings
    from footfall_training.data import data_layout

    data_dir = Path(data_dir or ModelSettings().data_dir)
    manifest = data_layout(data_dir).archives["ferplus"][1]
    with open(data_dir / manifest, newline="") as fh:
        labels = [EMOTIONS.index(r["emotion"]) for r in csv.DictReader(fh) if r["split"] == "train" and r["emotion"]]
    return label_prior(np.array(labels))


def emotion_bias(prior: np.ndarray, tau: float) -> np.ndarray:
    """``-tau * log(prior)``, centred (a constant shift of the logits changes nothing).

    >>> emotion_bias(np.array([0.5, 0.25, 0.25]), 1.0).round(3).tolist()
    [-0.462, 0.231, 0.231]
    """
    bias = -tau * np.log(prior)
    return bias - bias.mean()


def adjusted_probabilities(probabilities: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax outputs as the network gives them with ``bias`` added to its logits."""
    shifted = probabilities * np.exp(bias - bias.max())
    return shifted / shifted.sum(1, keepdims=True)


def model_emotion_bias(model_path: Path) -> np.ndarray:
    """The emotion bias a model file already carries (zeros for none): a sweep's ``tau`` is measured
    from the raw logits, so the shipped adjustment is taken back out first."""
    from footfall.model_file import ModelMetadata

    path = Path(model_path)
    if path.suffix in (".pt", ".pth"):
        from footfall_training.train import load_checkpoint

        return load_checkpoint(path).emotion_bias.numpy().astype(np.float64)
    meta = ModelMetadata.from_sidecar(path) if path.suffix == ".rknn" else ModelMetadata.from_onnx_file(path)
    return np.array(meta.emotion_bias or np.zeros(len(EMOTIONS)), np.float64)


@dataclass
class EmotionFaces:
    """One evaluation set's emotion predictions, single pass and on the mirror images, and labels."""

    name: str
    plain: np.ndarray  # (N, 7) probabilities on the faces
    mirrored: np.ndarray  # (N, 7) probabilities on their mirror images
    truth: np.ndarray  # (N,) index into EMOTIONS

    def decisions(self, bias: np.ndarray, flip: bool) -> np.ndarray:
        p = adjusted_probabilities(self.plain, bias)
        if flip:
            p = (p + adjusted_probabilities(self.mirrored, bias)) / 2
        return p.argmax(1)


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class recall and their mean (balanced accuracy: what a set with every
    class equally often would show), and the share predicted neutral."""
    cm = confusion(truth, predicted, len(EMOTIONS))
    recall = class_recall(cm, EMOTIONS)
    return {"faces": int(len(truth)), "acc": float(np.trace(cm) / cm.sum()), "macro_f1": macro_f1(cm),
            "mean_recall": float(np.mean(list(recall.values()))), "recall": recall,
            "predicted_neutral": float((predicted == NEUTRAL).mean()),
            "truly_neutral": float((truth == NEUTRAL).mean())}


def _both_passes(predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return predictor(images).emotion, predictor(np.ascontiguousarray(images[:, :, ::-1])).emotion


def emotion_sets(model_path: Path, threads: int = 2, limit: int = 0, seed: int = 0,
                 cross_source: bool = True) -> list[EmotionFaces]:
    """FER+ val and test (dataset crops) and, with ``cross_source``, the cross-source val and test
    photos (pipeline crops, detected faces; CrossSourceMissing when the set is not built): the
    model's predictions on each face and its mirror image. ``limit``: N random faces of each set (0: all)."""
    from footfall_training.data import load_split
    from footfall_training.evaluate import load_predictor

    predictor, _ = load_predictor(model_path, threads=threads)
    rng = np.random.default_rng(seed)
    pick = lambda n: np.sort(rng.choice(n, size=limit, replace=False)) if limit and limit < n else np.arange(n)  # noqa: E731
    sets = []
    for split in ("val", "test"):
        faces = load_split(split)
        fer = np.flatnonzero(faces.emotion >= 0)
        fer = fer[pick(len(fer))]
        sets.append(EmotionFaces(f"FER+ {split}", *_both_passes(predictor, faces.images[fer]),
                                 faces.emotion[fer].astype(int)))
    if cross_source:
        from footfall_training.crosssource import load_crosssource
        from footfall_training.crosssource_eval import load_crops

        xs = load_crosssource()
        crops = load_crops(xs)
        for split in ("val", "test"):
            keep = np.flatnonzero(crops.detected & (xs.split == split) & (xs.emotion >= 0))
            keep = keep[pick(len(keep))]
            sets.append(EmotionFaces(f"cross-source {split}", *_both_passes(predictor, crops.images[keep]),
                                     xs.emotion[keep].astype(int)))
    return sets


def sweep(sets: list[EmotionFaces], prior: np.ndarray, taus: list[float], flip: bool,
          carried: np.ndarray | None = None) -> list[dict]:
    """Every set's scores at every ``tau`` (``carried``: the bias the model's outputs already include)."""
    carried = np.zeros(len(EMOTIONS)) if carried is None else carried
    return [{"tau": tau, "emotion_bias": emotion_bias(prior, tau).tolist(),
             "sets": {s.name: scores(s.truth, s.decisions(emotion_bias(prior, tau) - carried, flip)) for s in sets}}
            for tau in taus]


def choose(results: list[dict], max_fer_drop: float = 0.003) -> dict:
    """The ``tau`` with the best cross-source val macro-F1 among those whose FER+ val accuracy is at
    most ``max_fer_drop`` below tau 0's (the in-distribution figure must not pay for it); without the
    cross-source set, the best FER+ val macro-F1 under the same condition."""
    base = next(r for r in results if r["tau"] == 0)["sets"]["FER+ val"]["acc"]
    allowed = [r for r in results if r["sets"]["FER+ val"]["acc"] >= base - max_fer_drop]
    key = "cross-source val" if "cross-source val" in results[0]["sets"] else "FER+ val"
    return max(allowed, key=lambda r: r["sets"][key]["macro_f1"])


def render(results: list[dict], flip: bool) -> str:
    from footfall_training.evaluate import table

    names = list(results[0]["sets"])
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    headers = ["tau"] + [f"{n} {m}" for n in names for m in ("acc", "F1", "mean recall")]
    rows = [[f"{r['tau']:g}"] + [pct(r["sets"][n][m]) for n in names for m in ("acc", "macro_f1", "mean_recall")]
            for r in results]
    neutral = [[f"{r['tau']:g}"] + [f"{pct(r['sets'][n]['predicted_neutral'])} ({pct(r['sets'][n]['truly_neutral'])})"
                                    for n in names] for r in results]
    passes = "flip-averaged" if flip else "single pass"
    out = [f"### Emotion logit adjustment: accuracy, macro-F1, mean recall ({passes}; %)", "",
           table(headers, rows, markdown=True), "", f"### Emotion logit adjustment: predicted neutral % (true), {passes}",
           "", table(["tau", *names], neutral, markdown=True), ""]
    for name in names:
        rows = [[f"{r['tau']:g}"] + [pct(r["sets"][name]["recall"][e]) if e in r["sets"][name]["recall"] else "-"
                                     for e in EMOTIONS] for r in results]
        out += [f"### Emotion logit adjustment: recall per class, {name} ({passes}; %)", "",
                table(["tau", *EMOTIONS], rows, markdown=True), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("sweep", help="measure a range of tau and write the chosen emotion bias")
    run.add_argument("model", type=Path, help=".pt, .onnx or .int8.onnx model file")
    run.add_argument("--tau", default="0,0.25,0.5", help="comma-separated values (0 is always added)")
    run.add_argument("--flip", action="store_true", help="flip-averaged decisions (as served)")
    run.add_argument("--limit", type=int, default=0, help="N random faces of each set (0: all)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--cross-source", action="store_true",
                     help="also the faces from other sources (footfall-data crosssource builds them)")
    run.add_argument("--max-fer-drop", type=float, default=0.3,
                     help="points of FER+ val accuracy a tau may lose against tau 0 and still be chosen")
    run.add_argument("--pick", type=float, help="write this tau's bias instead of the chosen one")
    run.add_argument("--write-bias", type=Path, help="JSON file for footfall-export --emotion-bias")
    run.add_argument("--json", type=Path, help="write every tau's figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    taus = sorted({0.0, *(float(t) for t in args.tau.split(","))})
    prior = training_prior()
    from footfall_training.crosssource import CrossSourceMissing

    try:
        sets = emotion_sets(args.model, args.threads, args.limit, args.seed, args.cross_source)
    except CrossSourceMissing as missing:
        parser.error(str(missing))
    carried = model_emotion_bias(args.model)
    if carried.any():
        log.info("%s carries emotion bias %s: tau is measured from its raw logits", args.model, carried.round(4))
    results = sweep(sets, prior, taus, args.flip, carried)
    chosen = choose(results, args.max_fer_drop / 100) if args.pick is None else \
        next((r for r in results if r["tau"] == args.pick), None)
    if chosen is None:
        parser.error(f"--pick {args.pick} is not among the swept values {taus}")
    sys.stdout.write(render(results, args.flip))
    log.info("chosen tau: %g (%s)", chosen["tau"], "--pick" if args.pick is not None else
             "best cross-source val macro-F1 within --max-fer-drop of tau 0's FER+ val accuracy")
    meta = {"model": str(args.model), "flip": args.flip, "limit": args.limit, "seed": args.seed,
            "prior": dict(zip(EMOTIONS, prior.tolist()))}
    if args.json:
        args.json.write_text(json.dumps({**meta, "results": results}, indent=1))
    if args.write_bias:
        args.write_bias.write_text(json.dumps({**meta, "tau": chosen["tau"],
                                               "emotion_bias": dict(zip(EMOTIONS, chosen["emotion_bias"])),
                                               "measured": chosen["sets"]}, indent=1) + "\n")
        log.info("wrote %s: footfall-export CHECKPOINT --emotion-bias %s", args.write_bias, args.write_bias)
    return 0


if __name__ == "__main__":
    sys.exit(main())
