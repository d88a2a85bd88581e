"""Faces/s estimate for one RK3588 board (3 NPU cores) from rknn-toolkit2's own per-layer cost model.

No board is at hand, so nothing here is a measurement on an NPU. rknn-toolkit2's compiler prints,
for every layer of the model it builds (``rknn.build``, verbose), its estimate of the clock cycles
the layer takes: memory traffic (DDR), compute (NPU) and their maximum, the layer's time. This
builds each given FP32 ONNX file exactly as ``footfall-rknn convert`` does (INT8, float16 age tail,
in the rknn venv), sums those cycles, and turns them into faces/s under stated assumptions:

- NPU clock 1 GHz; 1,024 INT8 multiply-accumulates per cycle and core, 3 cores (RK3588 TRM:
  3 x 1024 x 2 ops x 1 GHz = the nominal 6 TOPS);
- one model context per core, each face its own inference (batch 1: the shipped ``.rknn``), so the
  board's faces/s are 3x a core's; the cores share the DDR bandwidth, which the compiler's DDR
  cycles do not model for three at once;
- a fixed cost per inference outside the layers (driver submit, input/output copies, ``rknn_run``
  return), which the compiler does not estimate: calibrated on a published measurement, Rockchip's
  rknn_model_zoo table for MobileNetV2 (``mobilenetv2-12``, 224 px, INT8: 433-453 FPS on one RK3588
  core). The same channel plan (``FaceNet(width=1.0).features`` + average pooling + a 1000-class
  linear layer, untrained) is built here at 224 px; its published time per inference minus its
  compiler estimate is the overhead used for every model (``--overhead-ms`` overrides it). The same
  gap read as a factor on every layer's cycles instead is shown too: the truth for a small model
  lies between the two readings.

    python benchmarks/npu_estimate.py model/footfall_w050.onnx --widths 1.4

``--widths`` adds untrained exports of those widths (cycles depend on the shapes, not the weights;
1.4 is the paper's channel plan). Prints figures and asserts nothing; needs the rknn venv
(``scripts/setup_rknn_venv.sh``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from footfall_training.rknn_worker import OpPlacement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import md_table  # noqa: E402

NPU_HZ = 1e9
MACS_PER_CYCLE = 1024  # INT8, per core
CORES = 3
PAPER_FPS = 285.7  # the Orange Pi paper's figure for its model on the RK3588
# rknn_model_zoo README, "Model performance benchmark (FPS)": mobilenetv2-12, [1, 3, 224, 224], INT8,
# RK3588 @single_core, over its releases (433.0, 450.7, 453.0).
ZOO_MOBILENETV2_FPS = (433.0, 453.0)


def layer_kind(op: OpPlacement) -> str:
    """Stem, depthwise, pointwise, GDC or heads, from the layer's name and shapes.

    >>> layer_kind(OpPlacement(1, "ConvClip", "INT8", "NPU", "Conv:/net/features/features.0/features.0.0/Conv",
    ...                        "(1,3,112,112),(16,3,3,3),(16)", "(1,16,56,56)"))
    'stem 3x3 conv'
    """
    shapes = [s for s in op.inputs.replace("),", ") ").split() if s.startswith("(")]
    if "head" in op.name or "ReduceSum" in op.name or "Softmax" in op.op_type or op.op_type == "exDataConvert":
        return "heads and tail"
    if not op.op_type.startswith("Conv") or len(shapes) < 2:
        return "other"
    data = [int(v) for v in shapes[0].strip("(),").split(",")]
    weight = [int(v) for v in shapes[1].strip("(),").split(",")]
    if data[1] == 3:
        return "stem 3x3 conv"
    if weight[0] == 1 and weight[1] == data[1] > 1:
        return "GDC 4x4 conv" if weight[2:] == [4, 4] else "depthwise 3x3 conv"
    return "pointwise 1x1 conv"


def build_ops(onnx_path: Path, size: int = 112, float16_tails: tuple[str, ...] | None = None) -> list[OpPlacement]:
    """The layer table (with the compiler's cycle estimates) of an rknn build of ``onnx_path``."""
    from footfall_training.rknn_convert import run_worker
    from footfall_training.rknn_worker import FLOAT16_TAILS

    # Calibration only sets quantization ranges; the compiled layers and their cycles do not depend on them.
    faces = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    run = run_worker(onnx_path, faces, float16_tails=FLOAT16_TAILS if float16_tails is None else float16_tails)
    return [OpPlacement(**op) for op in run.report["ops"]]


def export_zoo_mobilenetv2(path: Path) -> Path:
    """MobileNetV2 1.0 as the model zoo's ``mobilenetv2-12`` (224 px, average pooling, 1000 classes),
    untrained, from our network's MobileNetV2 backbone, with the metadata the rknn worker reads."""
    import onnx
    import torch
    from torch import nn

    from footfall.model_file import METADATA_KEY, ModelMetadata
    from footfall_training.network import FaceNet

    torch.manual_seed(0)
    net = nn.Sequential(FaceNet(width=1.0).features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    meta = ModelMetadata(name="mobilenetv2-w100-imagenet", version="random-init", input_size=224,
                         channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3, races=(), emotions=(),
                         outputs=("logits",))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.save(model, str(path))
    return path


def npu_seconds(ops: list[OpPlacement]) -> float:
    """The compiler's estimate of one inference on one core: its layers' cycles at the NPU clock."""
    return sum(op.cycles for op in ops if op.target == "NPU") / NPU_HZ


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="FP32 ONNX files with footfall metadata")
    parser.add_argument("--widths", default="", help="also untrained exports of these widths, e.g. 1.0,1.4")
    parser.add_argument("--overhead-ms", type=float, help="fixed cost per inference (default: calibrated on the "
                        "model zoo's published MobileNetV2 figure)")
    args = parser.parse_args(argv)

    builds: dict[str, list[OpPlacement]] = {}
    with tempfile.TemporaryDirectory(prefix="footfall-npu-") as tmp:
        files = {path.stem: path for path in args.models}
        for width in [float(w) for w in args.widths.split(",") if w]:
            import torch

            from footfall_training.export import export_onnx
            from footfall_training.network import FaceNet

            torch.manual_seed(0)
            net = FaceNet(width=width).eval()
            files[f"{net.config.file_stem} (random init)"] = export_onnx(
                net, Path(tmp) / f"{net.config.file_stem}.onnx", version="random-init")
        for label, path in files.items():
            print(f"building {label} in rknn-toolkit2 ...", flush=True)
            builds[label] = build_ops(path)
        print("building the model zoo's MobileNetV2 (224 px) in rknn-toolkit2 ...", flush=True)
        zoo = build_ops(export_zoo_mobilenetv2(Path(tmp) / "mobilenetv2.onnx"), size=224, float16_tails=())

    zoo_seconds = npu_seconds(zoo)
    implied = [1 / fps - zoo_seconds for fps in ZOO_MOBILENETV2_FPS]
    overhead = args.overhead_ms / 1e3 if args.overhead_ms is not None else float(np.mean(implied))
    # The other reading of the same gap: the compiler underestimates every layer by one factor.
    scale = float(np.mean([1 / fps for fps in ZOO_MOBILENETV2_FPS])) / zoo_seconds
    print("\n### Calibration: the model zoo's MobileNetV2 on one RK3588 core\n")
    print(f"MobileNetV2 1.0 at 224 px ({sum(op.macs for op in zoo) / 1e6:.0f} M multiply-adds): compiler estimate "
          f"{zoo_seconds * 1e3:.3f} ms per inference on one core ({1 / zoo_seconds:,.0f} FPS); published "
          f"{ZOO_MOBILENETV2_FPS[0]:g}-{ZOO_MOBILENETV2_FPS[1]:g} FPS (rknn_model_zoo, mobilenetv2-12, INT8, "
          f"single core), i.e. {1e3 / ZOO_MOBILENETV2_FPS[1]:.2f}-{1e3 / ZOO_MOBILENETV2_FPS[0]:.2f} ms: "
          f"{implied[1] * 1e3:.2f}-{implied[0] * 1e3:.2f} ms per inference outside the compiler's estimate. "
          f"Used below as a fixed cost per inference: {overhead * 1e3:.2f} ms"
          + (" (--overhead-ms)" if args.overhead_ms is not None else "")
          + f"; read instead as a factor on every layer's estimate: {scale:.2f}x (the other bound).")
    rows = []
    for label, ops in builds.items():
        layers = [op for op in ops if op.target == "NPU"]
        cycles = sum(op.cycles for op in layers)
        macs = sum(op.macs for op in layers)
        memory_bound = sum(op.cycles for op in layers if op.cycles_ddr > op.cycles_npu)
        seconds = cycles / NPU_HZ
        rows.append([label, f"{macs / 1e6:.0f} M", f"{cycles / 1e3:.0f} k", f"{100 * memory_bound / cycles:.0f} %",
                     f"{100 * macs / (cycles * MACS_PER_CYCLE):.1f} %", f"{seconds * 1e3:.3f}",
                     f"{CORES / seconds:,.0f}", f"{CORES / (seconds * scale):,.0f}",
                     f"{CORES / (seconds + overhead):,.0f}",
                     f"{CORES / (2 * (seconds + overhead)):,.0f}",
                     f"{CORES * MACS_PER_CYCLE * NPU_HZ / macs:,.0f}",
                     f"{CORES / (seconds + overhead) / PAPER_FPS:.1f}x"])
    print(f"\n### NPU estimate per board: RK3588, {CORES} cores at 1 GHz, one context per core, batch 1\n")
    print(md_table(["model", "multiply-adds", "compiler cycles per face", "of them memory-bound",
                    "MAC utilisation", "ms per face (one core)", "faces/s, layers only", f"faces/s, layers x {scale:.2f}",
                    f"faces/s, + {overhead * 1e3:.2f} ms per inference", "flip-averaged (2 inferences), + overhead",
                    "nominal 6 TOPS bound", f"vs the paper's {PAPER_FPS} FPS"], rows))

    for label, ops in builds.items():
        kinds: dict[str, list[OpPlacement]] = {}
        for op in ops:
            if op.target == "NPU":
                kinds.setdefault(layer_kind(op), []).append(op)
        total = sum(op.cycles for op in ops if op.target == "NPU")
        print(f"\n### Where the NPU time goes: {label}, compiler estimate per layer kind\n")
        print(md_table(["layer kind", "layers", "multiply-adds", "cycles", "share of cycles",
                        "MACs per cycle (of 1,024)", "memory-bound layers"],
                       [[kind, str(len(k)), f"{sum(o.macs for o in k) / 1e6:.2f} M", f"{sum(o.cycles for o in k):,}",
                         f"{100 * sum(o.cycles for o in k) / total:.0f} %",
                         f"{sum(o.macs for o in k) / max(1, sum(o.cycles for o in k)):.0f}",
                         f"{sum(o.cycles_ddr > o.cycles_npu for o in k)} of {len(k)}"]
                        for kind, k in sorted(kinds.items(), key=lambda kv: -sum(o.cycles for o in kv[1]))]))


if __name__ == "__main__":
    main()
