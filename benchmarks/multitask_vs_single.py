"""The paper's comparison on our data: one multi-task model vs four single-task models.

Accuracy: each single-task model (``footfall-train --heads age`` / ``gender`` / ``race`` /
``emotion``, given by path) is scored on its own head only, next to the multi-task model on
the same test faces. Throughput: the one multi-task network vs the four single-task networks
run one after another on the same batch, through the product's onnxruntime backend. Throughput
does not depend on the weights, so it is timed on untrained ONNX exports of the same width (a
single-task network has the multi-task architecture; only its training differs). Both parts in
one run.

    python benchmarks/multitask_vs_single.py --multi ~/.cache/footfall/runs/w050/best.pt \\
        --single age=~/.cache/footfall/runs/w050-age/best.pt --single gender=.../best.pt \\
        --single race=.../best.pt --single emotion=.../best.pt --limit 500
    python benchmarks/multitask_vs_single.py --width 0.5          # throughput only

Without single-task checkpoints it prints the throughput and names the missing accuracy columns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import export_random, md_table, measure_faces_per_s  # noqa: E402

from footfall.inference.backends import load_backend  # noqa: E402
from footfall.predictions import HEADS  # noqa: E402

# The figures of each head: (metric key, title, lower is better).
HEAD_METRICS = {
    "age": [("age_mae", "age MAE (years)", True)],
    "gender": [("gender_acc", "gender accuracy %", False)],
    "race": [("race_acc", "race accuracy %", False), ("race_macro_f1", "race macro-F1 %", False)],
    "emotion": [("emotion_acc", "emotion accuracy %", False), ("emotion_macro_f1", "emotion macro-F1 %", False),
                ("valence_acc", "valence accuracy %", False)],
}


def parse_single(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        head, _, path = v.partition("=")
        if head not in HEADS or not path:
            raise SystemExit(f"--single expects HEAD=PATH with HEAD in {', '.join(HEADS)}, got {v!r}")
        out[head] = Path(path).expanduser()
    return out


def model_width(path: Path) -> float:
    from footfall_training.evaluate import load_predictor
    from model_speed import width_of

    _, name = load_predictor(path, threads=1)
    width = width_of(name)
    if width is None:
        raise SystemExit(f"cannot tell the width of {path} (model name {name!r})")
    return width


def accuracy(multi: Path | None, single: dict[str, Path], limit: int, threads: int) -> dict[str, dict]:
    """Per model role ('multi', 'age', ...): head metrics on the same test faces."""
    from footfall_training.evaluate import load_predictor, load_test_faces
    from footfall_training.metrics import head_metrics

    faces, _ = load_test_faces("dataset", limit=limit)
    out = {}
    for role, path in ([("multi", multi)] if multi else []) + list(single.items()):
        predictor, _ = load_predictor(path, threads=threads)
        p = predictor(faces.images)
        out[role] = head_metrics(p, faces.age, faces.gender, faces.race, faces.emotion)
        print(f"  scored {role}: {path} on {len(faces)} faces", flush=True)
    return out


def export_four_single(width: float, path: Path, int8: bool) -> Path:
    """Four untrained single-task networks in one ONNX graph, each giving its own head's output.

    Why one graph: four separate ONNX Runtime sessions on a 2-core machine each keep their own
    spinning thread pool and slow each other down about tenfold, which would measure thread
    contention, not the networks. In one session the four independent sub-networks run one
    after another on one thread pool: exactly the compute of four models in sequence.
    """
    import torch
    from torch import nn

    from footfall_training.export import export_onnx, quantize_int8
    from footfall_training.network import FaceNet

    class FourSingleTask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = nn.ModuleList(FaceNet(width=width) for _ in HEADS)
            # What the exporter reads: the metadata's name, the face size the weights are for, the
            # emotion bias (the emotion network's).
            self.config, self.image_size = self.nets[0].config, self.nets[0].image_size
            self.export_name = self.nets[0].export_name
            self.emotion_bias = self.nets[HEADS.index("emotion")].emotion_bias

        def at_image_size(self) -> FourSingleTask:
            return self  # 112 px nets: nothing to fold

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {head: net(x)[head] for head, net in zip(HEADS, self.nets)}

    torch.manual_seed(1)
    fp32 = export_onnx(FourSingleTask().eval(), path, version="random-init")
    if not int8:
        return fp32
    faces = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    return quantize_int8(fp32, path.with_suffix(".int8.onnx"), faces)


def throughput(width: float, batches: list[int], threads: int, seconds: float, precision: str,
               rounds: int = 3) -> list[dict]:
    """Faces/s of one multi-task network vs four single-task networks run one after another."""
    with tempfile.TemporaryDirectory(prefix="footfall-mtl-") as tmp:
        multi = load_backend("onnxruntime", export_random(width, Path(tmp), stem="multi")[precision], threads=threads)
        four = load_backend("onnxruntime", export_four_single(width, Path(tmp) / "four.onnx", precision == "int8"),
                            threads=threads)
        rows = []
        for batch in batches:
            best = {"multi": 0.0, "single": 0.0}
            for _ in range(rounds):  # alternate, keep the least disturbed round (see model_speed)
                best["multi"] = max(best["multi"], measure_faces_per_s(multi.predict, batch, seconds / rounds))
                best["single"] = max(best["single"], measure_faces_per_s(four.predict, batch, seconds / rounds))
            rows.append({"batch": batch, "precision": precision, "multi_faces_per_s": best["multi"],
                         "four_single_faces_per_s": best["single"], "speedup": best["multi"] / best["single"]})
            print(f"  batch {batch} {precision}: multi {best['multi']:.0f} faces/s, four singles "
                  f"{best['single']:.0f} faces/s", flush=True)
    return rows


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if "mae" in key else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi", type=Path, help="multi-task model (.pt checkpoint or .onnx)")
    parser.add_argument("--single", action="append", default=[], metavar="HEAD=PATH",
                        help="single-task model of one head (repeat for each)")
    parser.add_argument("--width", type=float, default=None, help="width for the throughput part "
                                                                  "(default: the multi-task model's, else 0.5)")
    parser.add_argument("--limit", type=int, default=0, help="N test faces of each dataset (0: all)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--precision", default="int8", choices=("fp32", "int8", "both"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    single = parse_single(args.single)
    multi = args.multi.expanduser() if args.multi else None
    for path in [multi, *single.values()]:
        if path is not None and not path.exists():
            raise SystemExit(f"model file {path} not found")
    width = args.width or (model_width(multi) if multi else 0.5)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads per model")

    results: dict = {"width": width}
    if multi or single:
        print("\naccuracy on the test split:")
        results["accuracy"] = acc = accuracy(multi, single, args.limit, args.threads)
        rows = []
        for head in HEADS:
            for key, title, lower_better in HEAD_METRICS[head]:
                s = acc.get(head, {}).get(key)
                m = acc.get("multi", {}).get(key)
                diff = None if s is None or m is None else m - s
                better = "-" if diff is None else ("multi" if (diff < 0) == lower_better and diff != 0 else
                                                   "single" if diff != 0 else "equal")
                rows.append([title, fmt(key, s), fmt(key, m),
                             "-" if diff is None else (f"{diff:+.2f}" if "mae" in key else f"{100 * diff:+.1f}"),
                             better])
        subset = f", {args.limit} faces per dataset" if args.limit else ""
        print(f"\n### Single-task vs multi-task accuracy (test split{subset})\n")
        print(md_table(["metric", "single-task", "multi-task", "multi - single", "better"], rows))
    missing = [h for h in HEADS if h not in single] + ([] if multi else ["multi-task"])
    if missing:
        print(f"\naccuracy columns missing (no model given): {', '.join(missing)}; single-task models come "
              f"from `footfall-train --heads HEAD --run w050-HEAD`")

    print(f"\nthroughput, width {width} (untrained exports; {args.threads} threads):")
    precisions = ("fp32", "int8") if args.precision == "both" else (args.precision,)
    speed = [row for p in precisions for row in throughput(width, batches, args.threads, args.seconds, p)]
    results["throughput"] = speed
    print(f"\n### One multi-task model vs four single-task models run one after another (faces/s, width {width})\n")
    print(md_table(["precision", "batch", "multi-task", "4 single-task", "speed-up"],
                   [[r["precision"], str(r["batch"]), f"{r['multi_faces_per_s']:.0f}",
                     f"{r['four_single_faces_per_s']:.0f}", f"{r['speedup']:.2f}x"] for r in speed]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
