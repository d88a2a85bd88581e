"""Export a trained checkpoint to ONNX FP32, ONNX Runtime static INT8 (QDQ) and PyTorch weights.

The ONNX files carry a dynamic batch axis, outputs named after the heads, and the model's
metadata (name, version, preprocessing, label names) under the ``footfall`` key, which every
consumer reads (``footfall.model_file.ModelMetadata``). INT8 calibration uses
real training faces. The PyTorch weights (``<stem>.pt``: EMA weights and the run's config,
no optimizer) ship too, so that training can continue from them on any machine
(``footfall-train --init model/footfall_w050.pt``) and evaluation can compare against them.

    footfall-export ~/.cache/footfall/runs/w050/best.pt --out model/ --version 2026.11.25
    footfall-export model/footfall_w050.pt --out model/ --version V --emotion-bias bias.json

``--emotion-bias`` sets the network's ``emotion_bias`` (a constant added to the emotion logits,
written by ``python -m footfall_training.logit_adjust sweep ... --write-bias``) before export, so
every file made here (and the RKNN model converted from the ONNX) carries it; the metadata
records it. ``--flip-confidence`` records the flip-averaging threshold chosen for the weights (the
worker's default, ``FlipAveragedBackend``); the ``.pt`` keeps it for the next export.

A quantization-aware-trained checkpoint (``footfall-train --qat``) exports its float weights, and its
INT8 model takes the activation ranges learned in training (``footfall_training.qat``) instead of
calibrated ones; a pruned checkpoint (``footfall-prune``) exports with its own channel counts.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch

from footfall.model_file import METADATA_KEY, ModelMetadata
from footfall.labels import EMOTIONS, RACES
from footfall_training.network import ExportWrapper, FaceNet
from footfall_training.preprocess import CHANNEL_ORDER, MEAN, STD

log = logging.getLogger("footfall.export")


def model_metadata(net: FaceNet, version: str, precision: str = "fp32",
                   flip_confidence: float | None = None) -> ModelMetadata:
    return ModelMetadata(name=net.export_name, version=version, input_size=net.image_size,
                         channel_order=CHANNEL_ORDER, mean=MEAN, std=STD, races=RACES, emotions=EMOTIONS,
                         outputs=ExportWrapper.OUTPUT_NAMES, precision=precision,
                         emotion_bias=tuple(float(v) for v in net.emotion_bias) if net.emotion_bias.any() else (),
                         flip_confidence=flip_confidence)


def read_emotion_bias(path: Path) -> torch.Tensor:
    """The emotion bias of a JSON file ``{"emotion_bias": {emotion: value, ...}, ...}`` in EMOTIONS order."""
    values = json.loads(Path(path).read_text())["emotion_bias"]
    if set(values) != set(EMOTIONS):
        raise ValueError(f"{path}: emotion_bias needs exactly the emotions {', '.join(EMOTIONS)}, got {', '.join(values)}")
    return torch.tensor([float(values[e]) for e in EMOTIONS])


def set_emotion_bias(net: FaceNet, checkpoint: dict, bias: torch.Tensor) -> None:
    """Give the network and the checkpoint's EMA weights (what ships as ``<stem>.pt``) this bias."""
    net.emotion_bias.copy_(bias)
    checkpoint["ema"] = {**checkpoint["ema"], "emotion_bias": bias.clone()}


def _set_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    model.doc_string = (f"{meta.name} {meta.version} ({meta.precision}): age/gender/race/emotion from "
                        f"{meta.input_size}x{meta.input_size} faces")


def trace_onnx(net: FaceNet, f: str | BinaryIO, outputs: tuple[str, ...] = ExportWrapper.OUTPUT_NAMES) -> FaceNet:
    """Trace ``net`` to an ONNX graph written to ``f`` (a path or a binary file object), with ``outputs``
    of its forward pass in that order and a dynamic batch; returns the net as traced.

    The graph takes faces at the size the weights learned at (``image_size``): a net that learned at
    another size is traced with its GDC folded to that size (``FaceNet.at_image_size``). A QAT net is
    traced with its float weights.
    """
    if net.config.qat:
        from footfall_training.qat import float_copy

        net = float_copy(net)
    net = net.at_image_size().eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 3, net.image_size, net.image_size)
    # The wrapper in eval mode: the exporter restores the mode of the module it is given, and a new
    # wrapper is in training mode, which would leave ``net`` (its child) in training mode afterwards.
    torch.onnx.export(ExportWrapper(net, outputs).eval(), (dummy,), f, input_names=["input"],
                      output_names=list(outputs), opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, **{k: {0: "batch"} for k in outputs}})
    return net


def export_onnx(net: FaceNet, path: Path, version: str, flip_confidence: float | None = None) -> Path:
    """Write the FP32 ONNX model with metadata (``flip_confidence``: the worker's flip-averaging
    threshold chosen for these weights, recorded for the backends); returns its path.

    The graph takes faces at the size the weights learned at (``image_size``, recorded in the
    metadata): the product's 112 px crops are resized to it by the inference worker, like any crop of
    another size (``trace_onnx``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    net = trace_onnx(net, str(path))
    model = onnx.load(str(path))
    _set_metadata(model, model_metadata(net, version, flip_confidence=flip_confidence))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_weights(checkpoint: dict, path: Path, version: str, flip_confidence: float | None = None) -> Path:
    """The shippable part of a training checkpoint: EMA weights, config, epoch, validation metrics
    (and the flip-averaging threshold the ONNX files record, so a re-export keeps it)."""
    keep = {k: checkpoint[k] for k in ("ema", "config", "epoch", "metrics") if k in checkpoint}
    extra = {} if flip_confidence is None else {"flip_confidence": flip_confidence}
    torch.save({**keep, "version": version, **extra}, path)
    return path


def calibration_faces(count: int = 512, seed: int = 0) -> np.ndarray:
    """Real training faces (both datasets, uint8 RGB 112x112) for INT8 calibration (resized to the
    model's input by ``quantize_int8``)."""
    from footfall_training.data import load_split

    train = load_split("train")
    rng = np.random.default_rng(seed)
    return train.images[np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))]


@dataclass(frozen=True)
class Int8Layout:
    """How ``quantize_int8`` quantizes: the ONNX Runtime options that change the INT8 graph's speed (and
    ``benchmarks/int8_layout.py`` compares side by side); the defaults are the shipped export's.

    ``float_nodes``: kinds of node left in float, out of ``stem`` (the first 3x3 convolution, 3 input
    channels), ``depthwise`` (the 3x3 depthwise convolutions), ``heads`` (the linear heads). None by
    default: ONNX Runtime fuses the whole body into integer kernels. Measured (model card, "Why INT8
    gains only ~1.3x"): a float stem and float heads run about 1.1x faster, within the noise of a shared
    machine, and moved flip-averaged emotion by one test face, so the shipped export keeps them INT8.
    """

    per_channel: bool = True
    quant_format: str = "QDQ"  # or "QOperator"
    activations: str = "uint8"  # or "int8" (S8S8: ONNX Runtime then leaves many nodes unfused, 0.6x)
    weights: str = "int8"  # or "uint8" (U8U8: no saturation either, but 0.8-0.85x the speed on AVX2)
    # Weights in -64..64 instead of -127..127. On x86 CPUs without VNNI (AVX2 only), ONNX Runtime
    # multiplies UINT8 activations by INT8 weights with VPMADDUBSW, which sums two products into a
    # 16-bit integer and saturates beyond 32,767 (255 * 127 * 2 = 64,770): measured on an AMD EPYC
    # without VNNI, the full-range export lost 1.0-1.5 points of race and emotion accuracy against FP32
    # (emotion flip-averaged 82.1 % instead of 83.4 %), where a VNNI CPU (exact 32-bit sums) lost
    # nothing. With 7-bit weights (255 * 64 * 2 = 32,640) every CPU computes the same exact sums, at
    # the same speed; the weights' extra rounding costs at most 0.1 point here (model card, "INT8 and
    # RKNN vs FP32").
    reduce_range: bool = True
    float_nodes: tuple[str, ...] = ()

    def label(self) -> str:
        parts = [self.quant_format, "per-channel" if self.per_channel else "per-tensor",
                 ("U8" if self.activations == "uint8" else "S8") + ("S8" if self.weights == "int8" else "U8")]
        parts += ["reduce-range"] * self.reduce_range
        return " ".join(parts + [f"float {'+'.join(self.float_nodes)}"] * bool(self.float_nodes))


def float_node_names(model: onnx.ModelProto, kinds: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``kinds`` (see ``Int8Layout.float_nodes``) in an exported FaceNet graph."""
    inits = {t.name: t for t in model.graph.initializer}
    input_name = model.graph.input[0].name
    names = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            kernel = list(attrs.get("kernel_shape", inits[node.input[1]].dims[2:]))
            if ("stem" in kinds and node.input[0] == input_name) or (
                    "depthwise" in kinds and attrs.get("group", 1) > 1 and kernel == [3, 3]):
                names.append(node.name)
        elif node.op_type == "Gemm" and "heads" in kinds:
            names.append(node.name)
    return names


def emotion_bias_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes adding ``FaceNet.emotion_bias`` (an initializer) to the emotion logits."""
    return [node.name for node in model.graph.node
            if node.op_type == "Add" and any(name.endswith("emotion_bias") for name in node.input)]


def quantize_int8(fp32_path: Path, int8_path: Path, faces: np.ndarray, layout: Int8Layout = Int8Layout(),
                  activation_overrides: dict[str, list[dict]] | None = None) -> Path:
    """ONNX Runtime static INT8 quantization calibrated on ``faces``: by default QDQ, per-channel
    symmetric 7-bit weights (``Int8Layout.reduce_range``), asymmetric UINT8 activations (``layout``
    changes them).
    ``activation_overrides`` (tensor name -> scale and zero point, e.g. learned by QAT) replace the
    calibrated ranges of those tensors."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from footfall.inference.backends.base import normalize_nchw, prepare_crops

    meta = ModelMetadata.from_onnx(onnx.load(str(fp32_path)))
    faces = prepare_crops(list(faces), meta.input_size)  # as the worker feeds the model

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([normalize_nchw(faces[i:i + 32], meta) for i in range(0, len(faces), 32)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    prepped = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
    prepped_model = onnx.load(str(prepped))
    # The body is INT8; the heads' softmax/sigmoid and the age expectation stay float so the
    # outputs are not rounded to 1/255 steps (and the layout's float nodes, for speed); the emotion
    # bias's Add too, so the emotion logits are rounded once (the Gemm's output), as without a bias.
    quantize_static(str(prepped), str(int8_path), Reader(), quant_format=QuantFormat.from_string(layout.quant_format),
                    per_channel=layout.per_channel, op_types_to_quantize=["Conv", "Gemm", "Add", "Clip", "Relu"],
                    nodes_to_exclude=float_node_names(prepped_model, layout.float_nodes) + emotion_bias_nodes(prepped_model),
                    activation_type=QuantType.QUInt8 if layout.activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8 if layout.weights == "int8" else QuantType.QUInt8,
                    reduce_range=layout.reduce_range,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": layout.weights == "int8",
                                   "TensorQuantOverrides": activation_overrides or {}})
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
    parser.add_argument("--emotion-bias", type=Path, help="JSON file of the constant added to the emotion logits "
                                                          "(footfall_training.logit_adjust sweep --write-bias)")
    parser.add_argument("--flip-confidence", type=float,
                        help="the emotion confidence below which the worker mirrors a face, chosen for these weights "
                             "(footfall-evaluate --split val --flip-sweep); recorded in every file's metadata, where "
                             "the worker reads it unless FOOTFALL_FLIP_CONFIDENCE is set. Default: the checkpoint's "
                             "own (a shipped .pt keeps it), else none (the worker then mirrors every face)")
    args = parser.parse_args(argv)
    if args.flip_confidence is not None and not 0 < args.flip_confidence <= 1:
        parser.error(f"--flip-confidence {args.flip_confidence:g}: must be in (0, 1]")
    logging.basicConfig(level=logging.INFO)
    net = load_checkpoint(args.checkpoint)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if args.emotion_bias:
        try:
            set_emotion_bias(net, checkpoint, read_emotion_bias(args.emotion_bias))
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"--emotion-bias: {error}")
        log.info("emotion bias %s", ", ".join(f"{e} {float(v):+.4f}" for e, v in zip(EMOTIONS, net.emotion_bias)))
    flip_confidence = args.flip_confidence if args.flip_confidence is not None else checkpoint.get("flip_confidence")
    stem = net.export_stem
    fp32 = export_onnx(net, args.out / f"{stem}.onnx", args.version, flip_confidence)
    overrides = None
    if net.config.qat:
        from footfall_training.qat import activation_quant_overrides

        overrides = activation_quant_overrides(net, onnx.load(str(fp32)))
        log.info("INT8 with the activation ranges learned in QAT (%d tensors)", len(overrides))
    int8 = quantize_int8(fp32, args.out / f"{stem}.int8.onnx", calibration_faces(args.calibration),
                         activation_overrides=overrides)
    weights = save_weights(checkpoint, args.out / f"{stem}.pt", args.version, flip_confidence)
    for path in (fp32, int8, weights):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
