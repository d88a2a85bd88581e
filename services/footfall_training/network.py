"""The multi-task face network: a MobileNetV2-style backbone with four heads.

``NetConfig`` also builds the variants of issue 23: a MobileNetV3-Large-style backbone (``arch="mnv3"``:
hard-swish, squeeze-excite, 5x5 depthwise), multi-head self-attention over the final map's spatial
tokens (``attention="mha"``) and a net that branches after ``shared_depth`` backbone stages, one copy
of the later stages for the face attributes (age, gender, race) and one for emotion. The defaults
build exactly the shipped network (its checkpoint keys, ONNX graph and file names).

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

``emotion_bias`` is a constant added to the emotion logits (zeros unless set, e.g. by
``footfall-export --emotion-bias``: post-hoc logit adjustment, ``footfall_training.logit_adjust``).
It is a buffer saved with the weights, so the .pt, ONNX, INT8 and RKNN files all carry it and
every backend applies it identically; checkpoints saved before it existed load with zeros.

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

import copy
import re
from dataclasses import asdict, dataclass

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


def _activation(kind: str) -> nn.Module:
    # ReLU6 quantizes well (bounded range) and is native on the RK3588 NPU; hard-swish (MobileNetV3)
    # exports as ONNX HardSwish, which rknn also runs on the NPU.
    return nn.Hardswish() if kind == "hswish" else nn.ReLU6(inplace=True)


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True,
                 activation: str = "relu6") -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(_activation(activation))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention of MobileNetV3: global average pool, 1x1 reduce (ReLU), 1x1 expand, hard-sigmoid,
    multiply. Exports as GlobalAveragePool, Conv, Relu, HardSigmoid, Mul: all RK3588 NPU operators."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _make_divisible(channels / 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.relu(self.reduce(self.pool(x)), inplace=True))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2 block (3x3, ReLU6); with ``kernel``/``se``/``activation`` the MobileNetV3 one.
    ``hidden`` (expanded channels) defaults to ``cin * expansion``; ``expand`` (a 1x1 expansion conv
    first) to ``hidden != cin``. Pruned nets give ``hidden``, ``expand`` and ``residual``: their channel
    counts no longer follow the plan, the block's structure does."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 6, kernel: int = 3, se: bool = False,
                 activation: str = "relu6", hidden: int | None = None, expand: bool | None = None,
                 residual: bool | None = None) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else cin * expansion
        expand = hidden != cin if expand is None else expand
        layers: list[nn.Module] = []
        if expand:
            layers.append(_conv_bn_act(cin, hidden, 1, activation=activation))
        layers.append(_conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, activation=activation))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(_conv_bn_act(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout if residual is None else residual
        # Fake quantization of the residual sum in quantization-aware training (footfall_training.qat).
        self.out_fq: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_fq(x + self.block(x)) if self.use_residual else self.block(x)


# MobileNetV3-Large (Howard et al. 2019, table 1) grouped into stages of equal output channels:
# per block (kernel, expanded channels, output channels, squeeze-excite, activation, first stride).
_MNV3_STAGES = (
    ((3, 16, 16, False, "relu6", 1),),
    ((3, 64, 24, False, "relu6", 2), (3, 72, 24, False, "relu6", 1)),
    ((5, 72, 40, True, "relu6", 2), (5, 120, 40, True, "relu6", 1), (5, 120, 40, True, "relu6", 1)),
    ((3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
     (3, 184, 80, False, "hswish", 1)),
    ((3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1)),
    ((5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1)),
)

ARCHS = ("mnv2", "mnv3")
ATTENTIONS = ("none", "mha")
#: Head groups that get their own late backbone stages when the net branches (``shared_depth``):
#: the face attributes learn from UTKFace, emotion from FER+, so they are the natural split.
HEAD_GROUPS = (("age", "gender", "race"), ("emotion",))


def _stem(cout: int, stem_stride: int, activation: str = "relu6") -> nn.Sequential:
    """The first convolution: 3x3 at stride 2, or at ``stem_stride`` 4 a 6x6 kernel (padding 2) whose every
    output sees the 6x6 pixels that a 2x2 area shrink followed by the 3x3 stride-2 stem would see."""
    if stem_stride not in STEM_STRIDES:
        raise ValueError(f"stem_stride must be one of {', '.join(map(str, STEM_STRIDES))}, not {stem_stride}")
    return _conv_bn_act(3, cout, 3 if stem_stride == 2 else 6, stride=stem_stride, activation=activation)


def stem_kernel_at_stride_4(kernel: torch.Tensor) -> torch.Tensor:
    """A 3x3 stride-2 stem's kernel as the 6x6 stride-4 kernel that computes, on a 112 px face, exactly what the
    3x3 kernel computes on that face shrunk to 56 px by 2x2 means: each tap spread over the 2x2 pixels it averaged.

    >>> conv3 = nn.Conv2d(3, 4, 3, 2, 1, bias=False); conv6 = nn.Conv2d(3, 4, 6, 4, 2, bias=False)
    >>> with torch.no_grad(): _ = conv6.weight.copy_(stem_kernel_at_stride_4(conv3.weight))
    >>> x = torch.rand(1, 3, 112, 112)
    >>> bool(torch.allclose(conv6(x), conv3(F.avg_pool2d(x, 2)), atol=1e-6))
    True
    """
    return kernel.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2) / 4


def _backbone_stages(arch: str, width: float, channels: tuple[int, ...] | None = None,
                     stem_stride: int = 2) -> tuple[list[nn.Module], int]:
    """The backbone as a list of stages (the stem, one per channel group, the final 1x1 conv), and the
    final conv's output channels (the embedding size). ``channels``: a pruned mnv2 net's counts
    (``default_channel_plan``'s order)."""
    if arch == "mnv2":
        full = default_channel_plan(width)
        plan = list(channels) if channels is not None else full
        if len(plan) != len(full):
            raise ValueError(f"channels has {len(plan)} entries, the plan of width {width} has {len(full)}")
        stages: list[nn.Module] = [_stem(plan[0], stem_stride)]
        cin, full_cin, k = plan[0], full[0], 1
        for t, _c, n, s in _INVERTED_RESIDUAL_PLAN:
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                hidden, cout = plan[k], plan[k + 1]
                # The residual and the expansion conv follow the unpruned plan, not the pruned counts.
                blocks.append(InvertedResidual(cin, cout, stride, t, hidden=hidden, expand=t != 1,
                                               residual=stride == 1 and full_cin == full[k + 1]))
                cin, full_cin, k = cout, full[k + 1], k + 2
            stages.append(nn.Sequential(*blocks))
        # Like MobileNetV2, the last conv never shrinks below 1280 channels (the plan's last entry).
        stages.append(_conv_bn_act(cin, plan[-1], 1))
        return stages, plan[-1]
    if channels is not None:
        raise ValueError(f"pruned channel counts are for arch mnv2, not {arch}")
    if arch == "mnv3":
        stem = _make_divisible(16 * width)
        stages = [_stem(stem, stem_stride, activation="hswish")]
        cin = stem
        for plan in _MNV3_STAGES:
            blocks = []
            for k, exp, c, se, act, s in plan:
                cout = _make_divisible(c * width)
                blocks.append(InvertedResidual(cin, cout, s, kernel=k, se=se, activation=act,
                                               hidden=_make_divisible(exp * width)))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        # MobileNetV3's last 1x1 conv (960 at width 1); its 1280-unit classifier layer is left out:
        # the GDC and the heads follow, as in the mnv2 net.
        embedding = _make_divisible(960 * width)
        stages.append(_conv_bn_act(cin, embedding, 1, activation="hswish"))
        return stages, embedding
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")


OUTPUT_STRIDES = (32, 16)
#: 4: the stem takes a 112 px face straight to the 28x28 grid a 56 px face's stem reaches (``_stem``).
STEM_STRIDES = (2, 4)


def _keep_last_stride(stages: list[nn.Module]) -> None:
    """Output stride 16: the backbone's last stride-2 convolution (a depthwise one, in the block that widens
    the channels, so no residual depends on it) takes stride 1 instead."""
    last = [m for stage in stages for m in stage.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)][-1]
    last.stride = (1, 1)


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the final feature map's spatial tokens (4x4 at 112 px), residual.

    Queries, keys and values are 1x1 convolutions down to ``dim`` channels (the embedding has 960-1280,
    full-width attention would cost millions of parameters); the heads' output is projected back by a
    1x1 conv with batch norm (zero-initialised scale, so a new block starts as the identity). No position
    encoding: the GDC after it weighs positions, and the block stays resolution-independent (64 px training).
    """

    def __init__(self, channels: int, dim: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv = nn.Conv2d(channels, 3 * dim, 1)
        self.proj = nn.Sequential(nn.Conv2d(dim, channels, 1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.proj[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.heads, self.dim // self.heads, h * w).unbind(1)
        # (n, heads, tokens, head_dim) x (n, heads, head_dim, tokens)
        attn = torch.softmax(q.transpose(-2, -1) @ k * (self.dim // self.heads) ** -0.5, dim=-1)
        out = (v @ attn.transpose(-2, -1)).reshape(n, self.dim, h, w)
        return x + self.proj(out)

    def extra_macs(self, tokens: int) -> int:
        """Multiply-adds of the two attention matrix products (not convolutions, so not hooked)."""
        return 2 * tokens * tokens * self.dim


def _stage_lengths(arch: str) -> list[int]:
    """Blocks per backbone stage, as ``_backbone_stages`` builds them (the stem and the final conv: one each)."""
    middle = [n for _t, _c, n, _s in _INVERTED_RESIDUAL_PLAN] if arch == "mnv2" else [len(p) for p in _MNV3_STAGES]
    return [1, *middle, 1]


def branched_state_dict(state_dict: dict[str, torch.Tensor], config: NetConfig) -> dict[str, torch.Tensor]:
    """A one-trunk net's weights (``shared_depth`` 0) laid out for the branched net of ``config``.

    The shared stages keep the trunk's blocks, and each head group's copy of the late stages, attention
    and GDC starts as the trunk's, so the branched net first computes exactly what the trunk did; training
    then lets emotion's late features part from the face attributes' (``footfall-train --init`` of the
    shipped weights with ``--shared-depth``). The trunk keeps its blocks flat (``features.K``); the
    branched net groups them by stage (``features.S.J``, ``branches.B.features.S.J``).
    """
    if not config.shared_depth:
        raise ValueError(f"{config.name} does not branch")
    lengths = _stage_lengths(config.arch)
    groups = range(len(HEAD_GROUPS))
    block_paths: list[list[str]] = []  # per trunk block features.K: its module path(s) in the branched net
    for stage, blocks in enumerate(lengths):
        for j in range(blocks):
            inner = "" if stage in (0, len(lengths) - 1) else f".{j}"
            block_paths.append([f"features.{stage}{inner}"] if stage < config.shared_depth else
                               [f"branches.{b}.features.{stage - config.shared_depth}{inner}" for b in groups])
    out = {}
    for key, value in state_dict.items():
        top, _, rest = key.partition(".")
        if top == "features":
            block, _, rest = rest.partition(".")
            targets = [f"{path}.{rest}" for path in block_paths[int(block)]]
        elif top in ("gdc", "attention"):
            targets = [f"branches.{b}.{key}" for b in groups]
        else:
            targets = [key]
        out.update({target: value.clone() for target in targets})
    return out


class Branch(nn.Module):
    """The late stages of one head group when the net branches: its own copy of the stages after the
    shared ones, attention (if any) and GDC."""

    def __init__(self, stages: list[nn.Module], attention: nn.Module | None, gdc: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*stages)
        self.attention = attention if attention is not None else nn.Identity()
        self.gdc = gdc


@dataclass(frozen=True)
class NetConfig:
    """What builds a FaceNet. The defaults are the shipped network (``footfall-mnv2-w050`` at width 0.5).

    ``shared_depth``: backbone stages all heads share (stage 0 is the stem, then one per channel group, the
    last is the final 1x1 conv: mnv2 has 9, mnv3 8); the later ones are duplicated per head group
    (``HEAD_GROUPS``). 0 means all shared (one trunk, today's net).
    """

    width: float = 1.0
    dropout: float = 0.2
    arch: str = "mnv2"
    attention: str = "none"
    shared_depth: int = 0
    # 16: the last downsampling block (to 160 channels at width 1) keeps stride 1, so a 56 px face ends on the
    # same 4x4 map as a 112 px face does at 32: the late blocks see the face on the grid the shipped net
    # learnt, and its weights (the same shapes) start such a net.
    output_stride: int = 32
    # 4: a 6x6 stride-4 stem (``_stem``) puts a 112 px face on the grid of a 56 px one after the stem, so the rest
    # of the net costs what the 56 px net does, while the stem still sees every pixel instead of 2x2 means.
    stem_stride: int = 2
    # Channel counts of a pruned net (``default_channel_plan``'s order; None: the width's plan) and a tag
    # that names the variant (``l1p25``: 25 % of the channels pruned by L1 magnitude, ``qat``: fake-quant trained).
    channels: tuple[int, ...] | None = None
    tag: str = ""
    # Fake quantization in the forward pass (quantization-aware training, footfall_training.qat).
    qat: bool = False

    @property
    def name(self) -> str:
        suffix = ("-mha" if self.attention == "mha" else "") + (f"-sd{self.shared_depth}" if self.shared_depth else "")
        suffix += f"-os{self.output_stride}" if self.output_stride != 32 else ""
        suffix += f"-s{self.stem_stride}" if self.stem_stride != 2 else ""
        suffix += f"-{self.tag}" if self.tag else ""
        return f"footfall-{self.arch}-w{int(round(self.width * 100)):03d}{suffix}"

    @property
    def file_stem(self) -> str:
        """Stem of the model's files in model/ (``footfall_w050``.onnx, .int8.onnx, .pt, .rknn for the default
        arch, e.g. ``footfall_mnv3_w060_mha`` for others)."""
        return file_stem_of(self.name)

    @classmethod
    def from_name(cls, name: str, prefix: bool = False) -> NetConfig:
        """The config of a model name (``name`` above; dropout, which has no weights, at its default). A pruned
        or QAT variant's name (``-l1p25``, ``-qat``) does not say its channel counts: rebuild those from a checkpoint.
        ``prefix``: read the architecture at the start of a longer name (an exported model's, whose tag and face
        size follow it) and ignore the rest.

        >>> NetConfig.from_name("footfall-mnv3-w060-mha-sd6")
        NetConfig(width=0.6, dropout=0.2, arch='mnv3', attention='mha', shared_depth=6, output_stride=32, stem_stride=2, channels=None, tag='', qat=False)
        >>> NetConfig.from_name("footfall-mnv2-w050-os16").output_stride, NetConfig.from_name("footfall-mnv2-w050-s4").stem_stride
        (16, 4)
        >>> NetConfig.from_name("footfall-mnv2-w050-os16-56px", prefix=True).output_stride
        16
        """
        pattern = r"footfall-(\w+?)-w(\d{3})(-mha)?(?:-sd(\d+))?(?:-os(\d+))?(?:-s(\d+))?(?=-|$)"
        match = (re.match if prefix else re.fullmatch)(pattern, name)
        if not match:
            raise ValueError(f"not a model name: {name!r} (e.g. footfall-mnv2-w050, footfall-mnv3-w060-mha-sd6)")
        arch, width, mha, depth, stride, stem = match.groups()
        return cls(width=int(width) / 100, arch=arch, attention="mha" if mha else "none", shared_depth=int(depth or 0),
                   output_stride=int(stride or 32), stem_stride=int(stem or 2))

    @classmethod
    def from_dict(cls, config: dict) -> NetConfig:
        """The net's part of a run's config (``TrainConfig`` as a dict; older runs lack the newer keys)."""
        values = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        if values.get("channels") is not None:
            values["channels"] = tuple(values["channels"])
        return cls(**values)


def file_stem_of(name: str) -> str:
    """The files' stem for a model name: the default arch's prefix shortened, dashes as underscores.

    >>> file_stem_of("footfall-mnv2-w050-56px"), file_stem_of("footfall-mnv3-w060-mha")
    ('footfall_w050_56px', 'footfall_mnv3_w060_mha')
    """
    if name.startswith("footfall-mnv2-"):
        name = name.replace("footfall-mnv2-", "footfall-", 1)
    return name.replace("-", "_")


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
    """Multi-task network for 112x112 RGB faces: MobileNetV2- or V3-style backbone, optional attention,
    optionally branched per head group (see ``NetConfig``)."""

    #: The face size the weights learned at (``footfall-train --image-size``; set by ``load_checkpoint``).
    image_size: int = INPUT_SIZE

    def __init__(self, width: float = 1.0, dropout: float = 0.2, arch: str = "mnv2", attention: str = "none",
                 shared_depth: int = 0, channels: tuple[int, ...] | None = None, tag: str = "",
                 qat: bool = False, output_stride: int = 32, stem_stride: int = 2) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {attention!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, not {output_stride}")
        channels = tuple(channels) if channels is not None else None
        if (channels is not None or qat) and (arch != "mnv2" or shared_depth or attention != "none"):
            # footfall-prune and footfall_training.qat know the plain MobileNetV2 trunk only.
            raise ValueError("pruned channels and fake quantization need arch mnv2 without attention or branching")
        stages, self.embedding_dim = _backbone_stages(arch, width, channels, stem_stride)
        if output_stride == 16:
            _keep_last_stride(stages)
        if shared_depth >= len(stages) or shared_depth < 0:
            raise ValueError(f"shared_depth must be 1..{len(stages) - 1} (0: all shared) for {arch}, not {shared_depth}")
        self.config = NetConfig(width=width, dropout=dropout, arch=arch, attention=attention,
                                shared_depth=shared_depth, output_stride=output_stride, stem_stride=stem_stride,
                                channels=channels, tag=tag, qat=qat)
        # The GDC kernel is the final map of a 112 px face at stride 32 whatever the stride (a stride-16 net
        # is meant for 56 px faces, which end on that map), so every variant takes the shipped net's weights.
        final_map = INPUT_SIZE // 32 + (1 if INPUT_SIZE % 32 else 0)  # 112 -> 4

        def gdc() -> nn.Sequential:
            # Global depthwise conv over the final 4x4 map replaces average pooling.
            return nn.Sequential(
                nn.Conv2d(self.embedding_dim, self.embedding_dim, final_map, groups=self.embedding_dim, bias=False),
                nn.BatchNorm2d(self.embedding_dim),
            )

        def attention_block() -> nn.Module | None:
            return SpatialSelfAttention(self.embedding_dim) if attention == "mha" else None

        if shared_depth:
            # The mnv2 stages are flattened into features as before, so unbranched keys stay those of
            # the shipped checkpoint (features.N for the Nth block).
            self.features = nn.Sequential(*stages[:shared_depth])
            self.branches = nn.ModuleList(
                Branch(stages[shared_depth:] if i == 0 else copy.deepcopy(stages[shared_depth:]),
                       attention_block(), gdc()) for i in range(len(HEAD_GROUPS)))
        else:
            # flat list of blocks: the shipped checkpoint's keys (features.0 ... features.18, gdc)
            blocks = [stages[0]] + [b for stage in stages[1:-1] for b in stage] + [stages[-1]]
            self.features = nn.Sequential(*blocks)
            if attention == "mha":
                self.attention = attention_block()
            self.gdc = gdc()
        self.dropout = nn.Dropout(dropout)
        self.age_head = nn.Linear(self.embedding_dim, len(AGE_BINS))
        self.gender_head = nn.Linear(self.embedding_dim, 1)
        self.race_head = nn.Linear(self.embedding_dim, len(RACES))
        self.emotion_head = nn.Linear(self.embedding_dim, len(EMOTIONS))
        self.register_buffer("age_bins", torch.tensor(AGE_BINS, dtype=torch.float32), persistent=False)
        self.register_buffer("emotion_bias", torch.zeros(len(EMOTIONS)))
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Weights saved before the emotion bias existed mean no bias.
        state_dict.setdefault(prefix + "emotion_bias", torch.zeros(len(EMOTIONS)))
        stem = prefix + "features.0.0.weight"
        if self.config.stem_stride == 4 and stem in state_dict and state_dict[stem].shape[-1] == 3:
            # A stride-2 net's weights (the shipped ones) start a stride-4-stem net as that net on 56 px faces.
            state_dict[stem] = stem_kernel_at_stride_4(state_dict[stem])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_config(cls, config: NetConfig) -> FaceNet:
        return cls(**asdict(config))

    @property
    def export_name(self) -> str:
        """The exported model's name: the config's, with the face size when it is not 112
        (``footfall-mnv2-w050-64px``), so models served at different sizes never share files."""
        return self.config.name + (f"-{self.image_size}px" if self.image_size != INPUT_SIZE else "")

    @property
    def export_stem(self) -> str:
        """Stem of the exported files (``footfall_w050_56px`` for a 56 px model)."""
        return file_stem_of(self.export_name)

    def at_image_size(self) -> FaceNet:
        """A copy that runs at ``image_size`` with no resize inside: each GDC kernel becomes the final
        map at that size (2x2 at 64 px) and takes the bilinear stretch of ``_pool`` into its weights.
        Both are linear maps, so the fold is exact: the copy's outputs equal this net's at that size.
        At 112 px the copy is unchanged (the kernel already covers the final map).

        >>> net = FaceNet(width=0.5).eval()
        >>> net.image_size = 64
        >>> x = torch.randn(2, 3, 64, 64)
        >>> folded = net.at_image_size()
        >>> folded.gdc[0].kernel_size, bool(torch.allclose(folded(x)["age"], net(x)["age"], atol=1e-4))
        ((2, 2), True)
        """
        was_training = self.training
        net = copy.deepcopy(self).eval()
        branches = list(net.branches) if self.config.shared_depth else [net]
        with torch.no_grad():
            fmap = net.features(net.input_fq(torch.zeros(1, 3, self.image_size, self.image_size)))
            for branch in branches:
                side = tuple((branch.features(fmap) if branch is not net else fmap).shape[-2:])
                conv = branch.gdc[0]
                if conv.kernel_size == side:
                    continue
                cells = side[0] * side[1]
                # Where each cell of the small map lands on the kernel's grid after the stretch.
                basis = torch.eye(cells).reshape(cells, 1, *side)
                stretch = F.interpolate(basis, size=conv.kernel_size, mode="bilinear", align_corners=False)
                weight = conv.weight.reshape(conv.out_channels, -1) @ stretch.reshape(cells, -1).T
                folded = nn.Conv2d(conv.in_channels, conv.out_channels, side, groups=conv.groups, bias=False)
                folded.weight.copy_(weight.reshape(conv.out_channels, 1, *side))
                branch.gdc[0] = folded
        return net.train(was_training)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, SpatialSelfAttention):
                nn.init.zeros_(m.proj[1].weight)  # the attention block starts as the identity (again)

    @staticmethod
    def _pool(fmap: torch.Tensor, attention: nn.Module | None, gdc: nn.Sequential) -> torch.Tensor:
        if attention is not None:
            fmap = attention(fmap)
        kernel = gdc[0].kernel_size
        if not torch.jit.is_tracing() and tuple(fmap.shape[-2:]) != kernel:
            # Low-resolution training (footfall-train --image-size 64): the GDC's kernel covers
            # the 112x112 map, so the smaller final map is stretched to it. Never true at 112,
            # and the ONNX export (a trace at 112) leaves the check out of the graph.
            fmap = F.interpolate(fmap, size=kernel, mode="bilinear", align_corners=False)
        return torch.flatten(gdc(fmap), 1)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One embedding per head group (``HEAD_GROUPS``; the same tensor for all when nothing branches)."""
        fmap = self.features(self.input_fq(x))
        if self.config.shared_depth:
            return tuple(self.dropout(self._pool(b.features(fmap), b.attention, b.gdc)) for b in self.branches)
        z = self.dropout(self._pool(fmap, getattr(self, "attention", None), self.gdc))
        return (z,) * len(HEAD_GROUPS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_face, z_emotion = self.embed(x)
        age_logits = self.age_head(z_face)
        gender_logit = self.gender_head(z_face).squeeze(1)
        race_logits = self.race_head(z_face)
        emotion_logits = self.emotion_head(z_emotion) + self.emotion_bias
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


class ExportWrapper(nn.Module):
    """The four product outputs only (or ``outputs``: e.g. the raw logits a distillation teacher gives),
    in a fixed order, for ONNX export."""

    OUTPUT_NAMES = HEADS

    def __init__(self, net: FaceNet, outputs: tuple[str, ...] = OUTPUT_NAMES) -> None:
        super().__init__()
        self.net = net
        self.outputs = tuple(outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[k] for k in self.outputs)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: FaceNet, size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on ``size`` px faces (default: the net's ``image_size``)
    through convolutions, linear layers and attention products."""
    size = size or net.image_size
    macs = 0

    def conv_hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += out.numel() // out.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inp, _out) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    def attention_hook(module: SpatialSelfAttention, inp, _out) -> None:
        nonlocal macs
        macs += module.extra_macs(inp[0].shape[-2] * inp[0].shape[-1])

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(attention_hook) for m in net.modules() if isinstance(m, SpatialSelfAttention)]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    net.train(was_training)
    for h in hooks:
        h.remove()
    return macs
