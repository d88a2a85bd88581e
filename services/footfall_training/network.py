"""The multi-task face network: a MobileNetV2-style backbone with four heads.

Channel plan and strides follow MobileNetV2 (Sandler et al. 2018) scaled by a width
multiplier; at width 1.4 it is the Orange Pi paper's plan (conv1 48, blocks 24x1, 32x2,
48x3, 88x4, 136x3, 224x3, 448x1, 1x1 conv to 1792). At 112x112 input the last feature map
is 4x4. Instead of global average pooling we use a *global depthwise convolution* (GDC,
as in MobileFaceNet) whose 4x4 kernel covers the whole map: a plain convolution, which the
RK3588 NPU runs natively, and it learns a spatial weighting that average pooling cannot.

Outputs (the exported ONNX keeps these names whatever the heads do inside):

- ``age``: expected age in years, shape (N,), from a distribution over 0..100 years
  (label-distribution learning); ``age_logits`` are used by the training loss only.
- ``gender``: probability of female, shape (N,).
- ``race``: probabilities over RACES, shape (N, 5).
- ``emotion``: probabilities over EMOTIONS, shape (N, 7).

Example:
    >>> import torch
    >>> net = FaceNet(width=0.5).eval()
    >>> out = net(torch.zeros(2, 3, 112, 112))
    >>> sorted(k for k in out if not k.endswith(("logits", "logit")))
    ['age', 'emotion', 'gender', 'race']
    >>> tuple(out["emotion"].shape)
    (2, 7)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from footfall.labels import AGE_BINS, EMOTIONS, RACES
from footfall_training.preprocess import INPUT_SIZE
from footfall.predictions import HEADS
# (expansion t, output channels c, repeats n, first stride s) as in MobileNetV2.
_INVERTED_RESIDUAL_PLAN = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 without going more than 10 % below (MobileNetV2 rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        # ReLU6 quantizes well (bounded range) and is native on the RK3588 NPU.
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``hidden`` and ``residual`` are given for pruned nets (channel counts that
    no longer follow the plan; the residual follows the unpruned plan, not the pruned counts)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, hidden: int | None = None,
                 residual: bool | None = None) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_act(cin, hidden, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn_act(hidden, cout, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout if residual is None else residual
        # Fake quantization of the residual sum in quantization-aware training (footfall_training.qat).
        self.out_fq: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_fq(x + self.block(x)) if self.use_residual else self.block(x)


@dataclass(frozen=True)
class NetConfig:
    width: float = 1.0
    dropout: float = 0.2
    # Channel counts of a pruned net (``channel_plan``'s order; None: the width's plan) and a tag that
    # names the variant (``l1p25``: 25 % of the channels pruned by L1 magnitude, ``qat``: fake-quant trained).
    channels: tuple[int, ...] | None = None
    tag: str = ""
    # Fake quantization in the forward pass (quantization-aware training, footfall_training.qat).
    qat: bool = False

    @property
    def name(self) -> str:
        return f"footfall-mnv2-w{int(round(self.width * 100)):03d}" + (f"-{self.tag}" if self.tag else "")

    @property
    def file_stem(self) -> str:
        """Stem of the model's files in model/ (``footfall_w050``.onnx, .int8.onnx, .pt, .rknn)."""
        return self.name.replace("footfall-mnv2-", "footfall_").replace("-", "_")


def default_channel_plan(width: float) -> list[int]:
    """Channel counts of the width's net: stem, then (hidden, output) per inverted residual block, then the
    embedding; the order ``FaceNet(channels=...)`` and ``FaceNet.channel_plan`` use.

    >>> plan = default_channel_plan(0.5)
    >>> plan[:5], plan[-1], len(plan)
    ([16, 16, 8, 48, 16], 1280, 36)
    """
    stem = _make_divisible(32 * width)
    plan, cin = [stem], stem
    for t, c, n, _ in _INVERTED_RESIDUAL_PLAN:
        cout = _make_divisible(c * width)
        for _ in range(n):
            plan += [cin * t, cout]
            cin = cout
    return plan + [_make_divisible(1280 * max(1.0, width))]


class FaceNet(nn.Module):
    """MobileNetV2-style multi-task network for 112x112 RGB faces."""

    #: The face size the weights learned at (``footfall-train --image-size``; set by ``load_checkpoint``).
    image_size: int = INPUT_SIZE

    def __init__(self, width: float = 1.0, dropout: float = 0.2, channels: tuple[int, ...] | None = None,
                 tag: str = "", qat: bool = False) -> None:
        super().__init__()
        channels = tuple(channels) if channels is not None else None
        self.config = NetConfig(width=width, dropout=dropout, channels=channels, tag=tag, qat=qat)
        # Like MobileNetV2, the last conv never shrinks below 1280 channels (the plan's last entry).
        full = default_channel_plan(width)
        plan = list(channels) if channels is not None else full
        if len(plan) != len(full):
            raise ValueError(f"channels has {len(plan)} entries, the plan of width {width} has {len(full)}")
        stem = plan[0]
        layers: list[nn.Module] = [_conv_bn_act(3, stem, 3, stride=2)]
        cin, full_cin, k = stem, full[0], 1
        for t, _c, n, s in _INVERTED_RESIDUAL_PLAN:
            for i in range(n):
                hidden, cout = plan[k], plan[k + 1]
                residual = (s if i == 0 else 1) == 1 and full_cin == full[k + 1]
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, hidden=hidden, residual=residual))
                cin, full_cin, k = cout, full[k + 1], k + 2
        self.embedding_dim = plan[-1]
        layers.append(_conv_bn_act(cin, self.embedding_dim, 1))
        self.features = nn.Sequential(*layers)
        final_map = INPUT_SIZE // 32 + (1 if INPUT_SIZE % 32 else 0)  # 112 -> 4
        # Global depthwise conv over the final 4x4 map replaces average pooling.
        self.gdc = nn.Sequential(
            nn.Conv2d(self.embedding_dim, self.embedding_dim, final_map, groups=self.embedding_dim, bias=False),
            nn.BatchNorm2d(self.embedding_dim),
        )
        self.dropout = nn.Dropout(dropout)
        self.age_head = nn.Linear(self.embedding_dim, len(AGE_BINS))
        self.gender_head = nn.Linear(self.embedding_dim, 1)
        self.race_head = nn.Linear(self.embedding_dim, len(RACES))
        self.emotion_head = nn.Linear(self.embedding_dim, len(EMOTIONS))
        self.register_buffer("age_bins", torch.tensor(AGE_BINS, dtype=torch.float32), persistent=False)
        # Fake quantization of the normalised input in quantization-aware training.
        self.input_fq: nn.Module = nn.Identity()
        self._init_weights()
        if qat:
            from footfall_training.qat import insert_fake_quant

            insert_fake_quant(self)

    def channel_plan(self) -> list[int]:
        """The channel counts as built (after pruning too), in ``default_channel_plan``'s order."""
        plan = [self.features[0][0].out_channels]
        for block in self.features[1:-1]:
            plan += [block.block[-2][0].out_channels, block.block[-1][0].out_channels]
        return plan + [self.features[-1][0].out_channels]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.config.qat:
            from footfall_training.qat import with_fake_quant_state

            # Float weights (e.g. the shipped model) start a QAT net: its fake-quant ranges are then unobserved.
            state_dict = with_fake_quant_state(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(self.input_fq(x))
        kernel = self.gdc[0].kernel_size
        if not torch.jit.is_tracing() and tuple(fmap.shape[-2:]) != kernel:
            # Low-resolution training (footfall-train --image-size 64): the GDC's kernel covers
            # the 112x112 map, so the smaller final map is stretched to it. Never true at 112,
            # and the ONNX export (a trace at 112) leaves the check out of the graph.
            fmap = F.interpolate(fmap, size=kernel, mode="bilinear", align_corners=False)
        return self.dropout(torch.flatten(self.gdc(fmap), 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.embed(x)
        age_logits = self.age_head(z)
        gender_logit = self.gender_head(z).squeeze(1)
        race_logits = self.race_head(z)
        emotion_logits = self.emotion_head(z)
        return {
            "age": (torch.softmax(age_logits, dim=1) * self.age_bins).sum(dim=1),
            "gender": torch.sigmoid(gender_logit),
            "race": torch.softmax(race_logits, dim=1),
            "emotion": torch.softmax(emotion_logits, dim=1),
            "age_logits": age_logits,
            "gender_logit": gender_logit,
            "race_logits": race_logits,
            "emotion_logits": emotion_logits,
        }


def net_from_config(config: dict) -> FaceNet:
    """An untrained FaceNet of the architecture a checkpoint's ``config`` describes (width, pruned channels,
    tag, fake quantization)."""
    channels = config.get("channels")
    return FaceNet(width=config["width"], channels=tuple(channels) if channels else None,
                   tag=config.get("tag", ""), qat=bool(config.get("qat", False)))


def architecture(net: FaceNet) -> dict:
    """What a checkpoint's config stores so that ``net_from_config`` rebuilds ``net``."""
    return {"width": net.config.width, "channels": list(net.config.channels) if net.config.channels else None,
            "tag": net.config.tag, "qat": net.config.qat}


class ExportWrapper(nn.Module):
    """The four product outputs only, in a fixed order, for ONNX export."""

    OUTPUT_NAMES = HEADS

    def __init__(self, net: FaceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[k] for k in self.OUTPUT_NAMES)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: FaceNet, size: int = INPUT_SIZE) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    macs = 0

    def conv_hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += out.numel() // out.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inp, _out) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    net.train(was_training)
    for h in hooks:
        h.remove()
    return macs
