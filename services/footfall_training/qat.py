"""Quantization-aware training (fake quantization) that matches ``footfall-export``'s ONNX Runtime INT8.

``footfall-export`` quantizes the FP32 graph (BatchNorm folded into the convolutions) with ONNX Runtime's
static QDQ quantizer: per-channel symmetric 7-bit weights (scale = max |w| / 64 per output channel: ``Int8Layout.reduce_range``) and
per-tensor asymmetric UINT8 activations (scale = (max - min) / 255 over a range that includes 0) on the
network input, every convolution's output (after its ReLU6, which ONNX Runtime folds into it), every
residual sum and every head's logits. ``FaceNet(qat=True)`` rounds the same tensors the same way in its
forward pass (straight-through gradients), so training learns weights that survive that rounding:

- convolution + BatchNorm: BatchNorm is folded with its running statistics (frozen during the fine-tune,
  as in the export) and the folded weight is fake-quantized per channel;
- activations: per-tensor UINT8 fake quantization over an exponential moving average of the observed
  minimum and maximum (updated in training mode only; the EMA model averages them like the weights).

Export (``footfall-export`` of a QAT checkpoint) writes the float graph and quantizes it with these
ranges (``activation_quant_overrides``: ONNX Runtime's TensorQuantOverrides) instead of recalibrating.

    footfall-train --qat --init model/footfall_w050.pt --run compress-qat --epochs 1 --max-steps 200 \\
        --warmup-steps 20 --lr 2e-4
    footfall-export ~/.cache/footfall/runs/compress-qat/best.pt --out model/compressed --version 2026.12.03
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_QMAX = 255  # UINT8 activations (ONNX Runtime's default for the shipped export)
# Symmetric weights in -64..64: ONNX Runtime's range with reduce_range, which the export uses so that CPUs
# without VNNI do not saturate (footfall_training.export.Int8Layout).
WEIGHT_QMAX = 64


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric UINT8 fake quantization over an EMA of the observed range."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point as ONNX Runtime computes them from a range (0 always representable)."""
        rmin = torch.clamp(self.min_val, max=0.0)
        rmax = torch.clamp(self.max_val, min=0.0)
        scale = (rmax - rmin) / ACTIVATION_QMAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.round(-rmin / scale), 0, ACTIVATION_QMAX)
        return scale.float(), zero_point.to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if int(self.observed) == 0:
                    self.min_val.copy_(lo)
                    self.max_val.copy_(hi)
                    self.observed.fill_(1)
                else:
                    self.min_val.lerp_(lo, self.momentum)
                    self.max_val.lerp_(hi, self.momentum)
        if int(self.observed) == 0:
            return x  # nothing observed yet (an untrained QAT net in eval mode)
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, 0, ACTIVATION_QMAX).to(x.dtype)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization (scale max |w| / WEIGHT_QMAX), straight-through."""
    absmax = w.detach().abs().flatten(1).amax(1).clamp(min=1e-8)
    scale = (absmax / WEIGHT_QMAX).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX).to(w.dtype)


def folded_conv_params(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight and bias with BatchNorm (running statistics) folded in, as in the export."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * factor.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * factor
    return weight, bias


class FakeQuantConvBn(nn.Sequential):
    """A ``conv, BatchNorm[, ReLU6]`` block run as the INT8 export runs it: folded, quantized weights, and
    the output (after the activation) fake-quantized. Same children (and state-dict keys) as the float block,
    plus ``out_fq``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self[0], self[1]
        weight, bias = folded_conv_params(conv, bn)
        y = F.conv2d(x, fake_quant_weight(weight), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if len(self) > 3:  # conv, bn, act, out_fq
            y = self[2](y)
        return self.out_fq(y)


class FakeQuantLinear(nn.Linear):
    """A head with per-channel INT8 weights and fake-quantized logits (ONNX Runtime quantizes Gemm outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_fq(F.linear(x, fake_quant_weight(self.weight), self.bias))


def insert_fake_quant(net: nn.Module) -> None:
    """Turn a FaceNet into its fake-quantized form in place (the weights stay where they are)."""
    net.input_fq = ActivationFakeQuant()
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential) and len(module) in (2, 3) and isinstance(module[0], nn.Conv2d) \
                and isinstance(module[1], nn.BatchNorm2d):
            module.__class__ = FakeQuantConvBn
            module.add_module("out_fq", ActivationFakeQuant())
        elif hasattr(module, "use_residual") and module.use_residual:
            module.out_fq = ActivationFakeQuant()
    for name in ("age_head", "gender_head", "race_head", "emotion_head"):
        head = getattr(net, name)
        head.__class__ = FakeQuantLinear
        head.add_module("out_fq", ActivationFakeQuant())


def is_fake_quant_key(key: str) -> bool:
    return key.split(".")[-2:-1] in (["input_fq"], ["out_fq"])


def with_fake_quant_state(net: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` completed with ``net``'s own fake-quant buffers where it has none (float weights)."""
    own = {k: v for k, v in net.state_dict().items() if is_fake_quant_key(k) and k not in state_dict}
    return {**state_dict, **own}


def float_state(state_dict: dict) -> dict:
    """The float weights of a QAT state dict (fake-quant buffers dropped)."""
    return {k: v for k, v in state_dict.items() if not is_fake_quant_key(k)}


def onnx_scope(module_name: str) -> str:
    """The ONNX node-name prefix torch.onnx gives a FaceNet submodule inside ``ExportWrapper``.

    >>> onnx_scope("features.15.block.0")
    '/net/features/features.15/block/block.0'
    """
    parts, scope = module_name.split("."), []
    for part in parts:
        scope.append(f"{scope[-1]}.{part}" if part.isdigit() and scope else part)
    return "/net/" + "/".join(scope)


def activation_quant_overrides(net: nn.Module, float_model) -> dict[str, list[dict]]:
    """ONNX Runtime TensorQuantOverrides (tensor name -> scale and zero point) for the FP32 graph
    ``float_model`` (an onnx.ModelProto exported from ``net``'s float copy), from ``net``'s fake-quant ranges.

    Each observed tensor is the output of the last node in its module's scope (a ReLU6 block: the Clip,
    which ONNX Runtime folds into the convolution, giving the convolution's output that range), and
    ``Flatten`` after the GDC carries the GDC's range (same values).
    """
    ranges: dict[str, ActivationFakeQuant] = {"input": net.input_fq}
    nodes = list(float_model.graph.node)

    def last_output(scope: str, op_type: str | None = None) -> str:
        found = [n for n in nodes if n.name.startswith(scope + "/") and (op_type is None or n.op_type == op_type)]
        if not found:
            raise ValueError(f"no ONNX node in scope {scope}")
        return found[-1].output[0]

    for name, module in net.named_modules():
        fq = getattr(module, "out_fq", None)
        if not isinstance(fq, ActivationFakeQuant):
            continue
        if isinstance(module, FakeQuantConvBn) or isinstance(module, FakeQuantLinear):
            ranges[last_output(onnx_scope(name))] = fq
        else:  # a residual block: its Add
            ranges[last_output(onnx_scope(name), "Add")] = fq
    flatten = [n for n in nodes if n.op_type == "Flatten"]
    if flatten:
        ranges[flatten[0].output[0]] = net.gdc.out_fq
    overrides = {}
    for tensor, fq in ranges.items():
        if int(fq.observed) == 0:
            raise ValueError(f"fake quantization of {tensor} never observed a batch: train the QAT net first")
        scale, zero_point = fq.qparams()
        overrides[tensor] = [{"scale": np.array(scale.item(), np.float32),
                             "zero_point": np.array(zero_point.item(), np.uint8)}]
    return overrides


def float_copy(net: nn.Module) -> nn.Module:
    """The float FaceNet with ``net``'s weights (no fake quantization): what the FP32 ONNX export takes."""
    from dataclasses import replace

    from footfall_training.network import FaceNet

    plain = FaceNet.from_config(replace(net.config, qat=False))
    plain.load_state_dict(float_state(net.state_dict()))
    plain.image_size = net.image_size
    return plain.eval()
