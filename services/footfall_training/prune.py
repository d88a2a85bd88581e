"""Structured channel pruning of a trained FaceNet (``footfall-prune``), to fine-tune with ``footfall-train``.

Whole channels (filters) are removed, so the pruned network is an ordinary smaller FaceNet: fewer
multiply-adds on the CPU and the NPU, no sparse kernels needed. ``torch-pruning`` (Fang et al., "DepGraph",
CVPR 2023) finds the channels that must go together (a depthwise convolution and the 1x1 convolutions
around it, the residual chains of a stage, the embedding with the GDC and the heads' inputs) and ranks
each group by

- ``l1``: the L1 norm of its filters (magnitude: small filters contribute little), or
- ``fpgm``: the distance to the geometric median of the layer's filters (He et al., CVPR 2019: a filter
  close to the median is the most replaceable by the others, i.e. the least distinctive).

Every layer loses ``--amount`` of its channels; the remaining counts are rounded to the nearest multiple
of ``--round-to`` (CPU INT8 kernels and the RK3588 NPU process channels in blocks of 8/16), never below one
block. The heads' outputs are never pruned. The checkpoint written keeps the channel counts in its config
(``channels``), so ``footfall-train --init``, ``footfall-evaluate`` and ``footfall-export`` rebuild the net.

    footfall-prune model/footfall_w050.pt --method l1 --amount 0.25 --out ~/.cache/footfall/compress/l1p25.pt
    footfall-train --init ~/.cache/footfall/compress/l1p25.pt --run compress-l1p25 --epochs 1 --max-steps 200 \\
        --warmup-steps 20 --lr 2e-4
    footfall-export ~/.cache/footfall/runs/compress-l1p25/best.pt --out model/compressed --version 2026.12.03
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from footfall_training.network import FaceNet, count_macs, count_parameters
from footfall_training.preprocess import INPUT_SIZE

METHODS = ("l1", "fpgm")


def importance(method: str):
    import torch_pruning as tp

    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def prune_tag(method: str, amount: float) -> str:
    """``l1``, 0.25 -> ``l1p25`` (the pruned model's name suffix)."""
    return f"{method}p{int(round(amount * 100)):02d}"


def kept_channels(channels: int, amount: float, round_to: int = 8) -> int:
    """Channels a layer keeps: ``1 - amount`` of them, to the nearest multiple of ``round_to`` (at least one
    block; a layer of one block or less stays whole).

    >>> [kept_channels(c, 0.25) for c in (8, 16, 48, 144, 1280)]
    [8, 16, 40, 112, 960]
    """
    if channels <= round_to:
        return channels
    return max(round_to, int((1 - amount) * channels / round_to + 0.5) * round_to)


def prune(net: FaceNet, method: str, amount: float, round_to: int = 8) -> FaceNet:
    """``net`` with ``amount`` of each layer's channels removed (in place; returned with its new config)."""
    import torch_pruning as tp
    from dataclasses import replace

    if net.config.qat:
        raise ValueError("prune the float model, then fine-tune it with --qat")
    net = net.eval().to(memory_format=torch.contiguous_format)
    heads = [net.age_head, net.gender_head, net.race_head, net.emotion_head]
    graph = tp.DependencyGraph().build_dependency(
        net, example_inputs=torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),
        output_transform=lambda out: sum(out[k].sum() for k in ("age_logits", "gender_logit", "race_logits",
                                                                  "emotion_logits")))
    rank = importance(method)
    # One group per set of coupled channels (torch-pruning's own rounding only rounds down, which would
    # halve the 16-channel layers at 25 %: each group keeps the nearest multiple of round_to instead).
    for group in list(graph.get_all_groups(ignored_layers=heads, root_module_types=[torch.nn.Conv2d])):
        scores = rank(group)
        channels = len(scores)
        drop = channels - kept_channels(channels, amount, round_to)
        if drop <= 0:
            continue
        root, handler = group[0].dep.target.module, group[0].dep.handler
        weakest = torch.argsort(scores)[:drop].tolist()
        graph.get_pruning_group(root, handler, idxs=weakest).prune()
    net.embedding_dim = net.features[-1][0].out_channels
    net.config = replace(net.config, channels=tuple(net.channel_plan()),
                         tag="-".join(t for t in (net.config.tag, prune_tag(method, amount)) if t))
    return net


def main(argv: list[str] | None = None) -> None:
    from footfall_training.train import load_checkpoint, save_whole

    parser = argparse.ArgumentParser(prog="footfall-prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a float checkpoint (model/footfall_w050.pt or a run's best.pt)")
    parser.add_argument("--method", choices=METHODS, default="l1")
    parser.add_argument("--amount", type=float, default=0.25, help="share of each layer's channels to remove")
    parser.add_argument("--round-to", type=int, default=8, help="channel counts a multiple of this")
    parser.add_argument("--out", type=Path, required=True, help="the pruned checkpoint to write (.pt)")
    args = parser.parse_args(argv)
    net = load_checkpoint(args.checkpoint)
    before = count_parameters(net), count_macs(net)
    source = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    net = prune(net, args.method, args.amount, args.round_to)
    after = count_parameters(net), count_macs(net)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_whole({"ema": net.state_dict(), "config": {**source["config"], **asdict(net.config)},
                "epoch": source.get("epoch"), "pruned_from": str(args.checkpoint)}, args.out)
    print(f"wrote {args.out}: {net.config.name}, parameters {before[0] / 1e6:.2f} M -> {after[0] / 1e6:.2f} M, "
          f"multiply-adds {before[1] / 1e6:.0f} M -> {after[1] / 1e6:.0f} M\nchannels {list(net.config.channels)}")


if __name__ == "__main__":
    main()
