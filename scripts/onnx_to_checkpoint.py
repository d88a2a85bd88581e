"""Recover trainable PyTorch weights from an exported FP32 ONNX model (when the .pt is gone).

The ONNX export folds every BatchNorm into the convolution before it (weight scaled, bias
added), so the file holds no BatchNorm parameters. This rebuilds a ``FaceNet`` whose eval-mode
output equals the ONNX model's and whose BatchNorms are "unfolded" so that training can go on:
each convolution keeps the folded weight, and its BatchNorm gets running mean/var = the mean
and variance of that convolution's output on real faces, gamma = sqrt(var + eps) and
beta = mean + folded bias. In eval mode that is the identity plus the folded bias (exact); in
train mode the batch statistics start close to the running ones, so the first steps do not
throw the network off.

    python scripts/onnx_to_checkpoint.py model/footfall_w050.onnx /tmp/w050.pt
    footfall-train --run w050b --width 0.5 --init /tmp/w050.pt

It was used once: the epoch-16 checkpoint of the first CPU run was lost with its machine's cache,
and the second run started from the committed ONNX (see model/README.md, Training runs).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from footfall.model_file import ModelMetadata
from footfall_training.network import FaceNet
from footfall_training.preprocess import normalize_batch
from footfall_training.train import TrainConfig


def width_from_name(name: str) -> float:
    """``footfall-mnv2-w050`` -> 0.5 (the name in the model's metadata)."""
    return int(name.rsplit("-w", 1)[1]) / 100


def net_from_onnx(path: Path, faces: np.ndarray) -> FaceNet:
    """An eval-mode FaceNet equal to the ONNX model, BatchNorms unfolded on ``faces`` (uint8 RGB)."""
    model = onnx.load(str(path))
    meta = ModelMetadata.from_onnx(model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # The exporter keeps one copy of identical initializers (e.g. a zero head bias and a zero
    # emotion bias) and names the others through Identity nodes.
    weights.update({n.output[0]: weights[n.input[0]] for n in model.graph.node
                    if n.op_type == "Identity" and n.input[0] in weights})
    net = FaceNet(width=width_from_name(meta.name)).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    nodes = [n for n in model.graph.node if n.op_type == "Conv"]
    if not len(nodes) == len(convs) == len(norms):
        raise ValueError(f"{path}: {len(nodes)} Conv nodes for {len(convs)} convolutions: not this network")
    biases = []
    with torch.no_grad():
        # Graph order is forward order, which is module order in FaceNet.
        for node, conv, norm in zip(nodes, convs, norms):
            conv.weight.copy_(torch.from_numpy(weights[node.input[1]].copy()))
            biases.append(torch.from_numpy(weights[node.input[2]].copy()))
            norm.weight.fill_(1.0)
            norm.bias.copy_(biases[-1])
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # sqrt(var + eps) == 1: the identity plus the bias
        heads = {h.weight.shape: h for h in (net.age_head, net.gender_head, net.race_head, net.emotion_head)}
        for node in (n for n in model.graph.node if n.op_type == "Gemm"):
            w = weights[node.input[1]]
            if not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                w = w.T
            head = heads[torch.Size(w.shape)]
            head.weight.copy_(torch.from_numpy(w.copy()))
            head.bias.copy_(torch.from_numpy(weights[node.input[2]].copy()))
        if meta.emotion_bias:  # an Add after the emotion head's Gemm, recorded in the metadata
            net.emotion_bias.copy_(torch.tensor(meta.emotion_bias))

        stats = []

        def record(_module, _inputs, out: torch.Tensor) -> None:
            # Population variance: what train-mode BatchNorm divides by on this batch.
            stats.append((out.mean((0, 2, 3)), out.var((0, 2, 3), correction=0)))

        hooks = [c.register_forward_hook(record) for c in convs]
        net(normalize_batch(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0))
        for h in hooks:
            h.remove()
        for (mean, var), norm, bias in zip(stats, norms, biases):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean + bias)
    return net


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="FP32 ONNX model written by footfall-export")
    parser.add_argument("out", type=Path, help="checkpoint to write (loadable by footfall-train --init)")
    parser.add_argument("--faces", type=int, default=1024, help="training faces for the BatchNorm statistics")
    args = parser.parse_args(argv)
    from footfall_training.data import load_split

    train = load_split("train")
    pick = np.sort(np.random.default_rng(0).choice(len(train), size=min(args.faces, len(train)), replace=False))
    net = net_from_onnx(args.onnx, train.images[pick])
    config = asdict(TrainConfig(width=net.config.width))
    torch.save({"ema": net.state_dict(), "config": config, "source": str(args.onnx)}, args.out)
    print(f"wrote {args.out} (width {net.config.width}, from {args.onnx})")


if __name__ == "__main__":
    main()
