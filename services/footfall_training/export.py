"""Export a trained checkpoint to ONNX FP32, ONNX Runtime static INT8 (QDQ) and PyTorch weights.

The ONNX files carry a dynamic batch axis, outputs named after the heads, and the model's
metadata (name, version, preprocessing, label names) under the ``footfall`` key, which every
consumer reads (``footfall.model_file.ModelMetadata``). INT8 calibration uses
real training faces. The PyTorch weights (``<stem>.pt``: EMA weights and the run's config,
no optimizer) ship too, so that training can continue from them on any machine
(``footfall-train --init model/footfall_w050.pt``) and evaluation can compare against them.

    footfall-export ~/.cache/footfall/runs/w050/best.pt --out model/ --version 2026.11.25
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from footfall.model_file import METADATA_KEY, ModelMetadata
from footfall.labels import EMOTIONS, RACES
from footfall_training.network import ExportWrapper, FaceNet
from footfall_training.preprocess import CHANNEL_ORDER, INPUT_SIZE, MEAN, STD

log = logging.getLogger("footfall.export")


def model_metadata(net: FaceNet, version: str, precision: str = "fp32") -> ModelMetadata:
    return ModelMetadata(name=net.config.name, version=version, input_size=INPUT_SIZE,
                         channel_order=CHANNEL_ORDER, mean=MEAN, std=STD, races=RACES, emotions=EMOTIONS,
                         outputs=ExportWrapper.OUTPUT_NAMES, precision=precision)


def _set_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    model.doc_string = f"{meta.name} {meta.version} ({meta.precision}): age/gender/race/emotion from 112x112 faces"


def export_onnx(net: FaceNet, path: Path, version: str) -> Path:
    """Write the FP32 ONNX model with metadata; returns its path.

    The graph always takes 112x112 faces (what the product feeds), so weights that learned at a
    lower resolution are refused: finish them at 112 first.
    """
    if net.image_size != INPUT_SIZE:
        raise ValueError(f"{net.config.name} learned at {net.image_size} px but the exported model takes "
                         f"{INPUT_SIZE} px faces: finish it at {INPUT_SIZE} first "
                         f"(footfall-train --init CHECKPOINT --image-size {INPUT_SIZE})")
    net = net.eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(ExportWrapper(net), (dummy,), str(path), input_names=["input"],
                      output_names=list(ExportWrapper.OUTPUT_NAMES), opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, **{k: {0: "batch"} for k in ExportWrapper.OUTPUT_NAMES}})
    model = onnx.load(str(path))
    _set_metadata(model, model_metadata(net, version))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_weights(checkpoint: dict, path: Path, version: str) -> Path:
    """The shippable part of a training checkpoint: EMA weights, config, epoch, validation metrics."""
    keep = {k: checkpoint[k] for k in ("ema", "config", "epoch", "metrics") if k in checkpoint}
    torch.save({**keep, "version": version}, path)
    return path


def calibration_faces(count: int = 512, seed: int = 0) -> np.ndarray:
    """Real training faces (both datasets, uint8 RGB 112x112) for INT8 calibration."""
    from footfall_training.data import load_split

    train = load_split("train")
    rng = np.random.default_rng(seed)
    return train.images[np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))]


def quantize_int8(fp32_path: Path, int8_path: Path, faces: np.ndarray) -> Path:
    """ONNX Runtime static INT8 quantization (QDQ, per-channel weights) calibrated on ``faces``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from footfall.inference.backends.base import normalize_nchw

    meta = ModelMetadata.from_onnx(onnx.load(str(fp32_path)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([normalize_nchw(faces[i:i + 32], meta) for i in range(0, len(faces), 32)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    prepped = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
    # The body is INT8; the heads' softmax/sigmoid and the age expectation stay float so the
    # outputs are not rounded to 1/255 steps.
    quantize_static(str(prepped), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["Conv", "Gemm", "Add", "Clip", "Relu"],
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    prepped.unlink(missing_ok=True)
    model = onnx.load(str(int8_path))
    meta_int8 = ModelMetadata(**{**meta.__dict__, "precision": "int8"})
    _set_metadata(model, meta_int8)
    onnx.save(model, str(int8_path))
    return int8_path


def main(argv: list[str] | None = None) -> None:
    from footfall_training.train import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("model"))
    parser.add_argument("--version", required=True)
    parser.add_argument("--calibration", type=int, default=512, help="number of training faces for INT8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    net = load_checkpoint(args.checkpoint)
    stem = net.config.file_stem
    try:
        fp32 = export_onnx(net, args.out / f"{stem}.onnx", args.version)
    except ValueError as error:  # nothing written yet
        parser.error(f"{args.checkpoint}: {error}")
    int8 = quantize_int8(fp32, args.out / f"{stem}.int8.onnx", calibration_faces(args.calibration))
    weights = save_weights(torch.load(args.checkpoint, map_location="cpu", weights_only=False),
                           args.out / f"{stem}.pt", args.version)
    for path in (fp32, int8, weights):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
