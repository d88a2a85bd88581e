"""Compressed variants of the face model side by side: quantization-aware training and channel pruning.

For the shipped model and the committed candidates in model/compressed/ (``footfall-train --qat`` and
``footfall-prune`` + ``footfall-train --init``, exported with ``footfall-export``), one run prints:

- accuracy of the INT8 ONNX, single pass (no flip averaging), on the test splits (UTKFace: age, gender,
  race; FER+: emotion), with the shipped FP32 model as the reference;
- the same on the cross-source validation split (faces from other sources, pipeline crops), when
  ``footfall-data crosssource`` has built that set on this machine (otherwise the section says so);
- parameters and multiply-adds (network rebuilt from the ONNX graph's channel counts) and INT8 faces/s at
  batch 1, 8 and 32 through the product's onnxruntime backend (``benchmarks/model_speed.py``'s timing);
- RK3588 NPU operator placement from rknn-toolkit2 (when its venv exists; conversion of the FP32 ONNX).

    python benchmarks/compression.py                    # everything in model/compressed/
    python benchmarks/compression.py --match qat        # the shipped model and the QAT candidate only
    python benchmarks/compression.py --limit 500 --no-npu --seconds 1

It prints figures and asserts nothing. Speed is measured on whatever else the machine runs (the 1-minute
load average is printed first): compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from model_speed import md_table, npu_placement, speed_table  # noqa: E402

from footfall_training.evaluate import load_predictor, load_test_faces  # noqa: E402
from footfall_training.metrics import head_metrics  # noqa: E402
from footfall_training.network import FaceNet, NetConfig, count_macs, count_parameters  # noqa: E402

SHIPPED = REPO / "model" / "footfall_w050"
COMPRESSED = REPO / "model" / "compressed"


def channel_plan_from_onnx(model: onnx.ModelProto) -> list[int]:
    """A FaceNet ONNX graph's channel counts in ``default_channel_plan``'s order (FP32 or QDQ INT8): the stem,
    (hidden, output) per inverted residual block, the embedding."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    producers = {n.output[0]: n for n in model.graph.node}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        while weight not in shapes:  # INT8: the weight comes out of a DequantizeLinear
            weight = producers[weight].input[0]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        convs.append((shapes[weight][0], group > 1))
    convs = convs[:-1]  # the GDC (depthwise over the embedding) repeats the embedding's count
    plan = [convs[0][0]]
    for i, (out, depthwise) in enumerate(convs[1:-1], start=1):
        if depthwise:
            plan += [out, convs[i + 1][0]]  # the block's hidden channels, then its projection
    return plan + [convs[-1][0]]


def network_of(onnx_path: Path) -> FaceNet:
    """A FaceNet with the ONNX model's architecture (for parameters and multiply-adds)."""
    from footfall.model_file import ModelMetadata

    meta = ModelMetadata.from_onnx_file(onnx_path)
    # The name gives width and strides (the channel counts do not show a stride), the graph the channel counts.
    config = NetConfig.from_name(meta.name, prefix=True)
    net = FaceNet.from_config(replace(config, channels=tuple(channel_plan_from_onnx(onnx.load(str(onnx_path))))))
    net.image_size = meta.input_size  # multiply-adds at the faces it takes
    return net


def candidates(folder: Path, match: list[str] | None = None) -> dict[str, dict[str, Path]]:
    """Model name -> {"int8": path[, "fp32": path]} for the shipped model and the files in ``folder``
    (those whose name contains one of ``match``, when given)."""
    from footfall.model_file import ModelMetadata

    found: dict[str, dict[str, Path]] = {}
    for path in [SHIPPED.with_suffix(".int8.onnx"), SHIPPED.with_suffix(".onnx"), *sorted(folder.glob("*.onnx"))]:
        meta = ModelMetadata.from_onnx_file(path)
        if path.parent == folder and match and not any(m in meta.name for m in match):
            continue
        found.setdefault(meta.name, {})[meta.precision] = path
    return found


def accuracy_rows(models: dict[str, dict[str, Path]], limit: int, threads: int) -> list[list[str]]:
    faces, _ = load_test_faces("dataset", limit)
    rows = []
    for name, files in models.items():
        for precision in ("fp32", "int8"):
            if precision not in files or (precision == "fp32" and not name.endswith("w050")):
                continue  # FP32 of the shipped model only: the reference the compressed INT8 models are held to
            predictor, _ = load_predictor(files[precision], threads=threads)
            m = head_metrics(predictor(faces.images), faces.age, faces.gender, faces.race, faces.emotion)
            rows.append([name, precision.upper(), f"{m['age_mae']:.2f}", f"{100 * m['gender_acc']:.1f}",
                         f"{100 * m['race_acc']:.1f}", f"{100 * m['emotion_acc']:.1f}",
                         f"{100 * m['emotion_macro_f1']:.1f}"])
            print(f"  accuracy {name} {precision}: {rows[-1][2:]}", file=sys.stderr, flush=True)
    return rows


def crosssource_rows(models: dict[str, dict[str, Path]], threads: int) -> list[list[str]] | str:
    from footfall_training.crosssource import CrossSourceMissing
    from footfall_training.crosssource_eval import evaluate_crosssource

    rows = []
    for name, files in models.items():
        try:
            result = evaluate_crosssource(files["int8"], [False], threads=threads)[0]
        except CrossSourceMissing as exc:
            return f"(the cross-source set is not built on this machine: {exc})"
        val = result["splits"]["val"]
        rows.append([name, str(result["photos"]["val"]), f"{100 * val['gender_acc']:.1f}",
                     f"{100 * val['emotion_acc']:.1f}", f"{100 * val['emotion_macro_f1']:.1f}"])
        print(f"  cross-source {name}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    return rows


def npu_rows(models: dict[str, dict[str, Path]]) -> list[list[str]]:
    """rknn-toolkit2's operator placement of each candidate's FP32 ONNX (``model_speed.npu_placement``)."""
    rows = []
    for name, files in models.items():
        rows.append([name, npu_placement(files["fp32"]) if "fp32" in files else "not built: no FP32 ONNX committed"])
        print(f"  NPU {name}: {rows[-1][1]}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=COMPRESSED, help="the candidate ONNX files")
    parser.add_argument("--match", help="only candidates whose name contains one of these (comma-separated)")
    parser.add_argument("--limit", type=int, default=0, help="N random test faces of each dataset (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and batch")
    parser.add_argument("--no-npu", action="store_true", help="skip the rknn operator placement")
    args = parser.parse_args(argv)
    models = candidates(args.folder, args.match.split(",") if args.match else None)
    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads per model",
          file=sys.stderr)

    rows = accuracy_rows(models, args.limit, args.threads)
    print(f"\n### Compression: accuracy on the test splits (single pass, "
          f"{'all' if not args.limit else f'{args.limit} random'} faces of each dataset)\n")
    print(md_table(["model", "format", "age MAE", "gender %", "race %", "emotion %", "emotion F1 %"], rows))

    cross = crosssource_rows(models, args.threads)
    print("\n### Compression: cross-source validation split (INT8, single pass, pipeline crops)\n")
    print(cross if isinstance(cross, str) else
          md_table(["model", "photos", "gender %", "emotion %", "emotion F1 %"], cross))

    batches = [int(b) for b in args.batches.split(",")]
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not part of the tables
        speed = speed_table({name: {"int8": files["int8"]} for name, files in models.items()}, batches,
                            args.threads, args.seconds)
    faces_per_s = {(r["model"], r["batch"]): r["int8"] for r in speed}
    rows = []
    for name, files in models.items():
        net = network_of(files["int8"])
        rows.append([name, f"{count_parameters(net) / 1e6:.2f} M", f"{count_macs(net) / 1e6:.1f} M",
                     *(f"{faces_per_s[(name, b)]:.0f}" for b in batches)])
    print(f"\n### Compression: size and INT8 speed (onnxruntime backend, {args.threads} threads, faces/s; 1-minute "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs after timing)\n")
    print(md_table(["model", "parameters", "multiply-adds per face", *(f"batch {b}" for b in batches)], rows))

    if not args.no_npu:
        print("\n### Compression: RK3588 NPU operator placement (rknn-toolkit2 build of the FP32 ONNX)\n")
        print(md_table(["model", "placement"], npu_rows(models)))


if __name__ == "__main__":
    main()
