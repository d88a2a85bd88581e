"""Compression of the face model: quantization-aware training (footfall_training.qat) and structured
channel pruning (footfall_training.prune), on the committed weights and real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from footfall.labels import EMOTIONS, RACES
from footfall_training.data import load_split
from footfall_training.network import FaceNet, count_macs, default_channel_plan
from footfall_training.qat import folded_conv_params
from footfall_training.train import load_checkpoint, predict_torch

from .model_files import REPO

SHIPPED = REPO / "model" / "footfall_w050.pt"


@pytest.fixture(scope="module")
def faces(shared_data):
    """Real training faces (ranges and calibration) and test faces (comparisons), both datasets."""
    rng = np.random.default_rng(0)
    train = load_split("train", data_dir=shared_data)
    test = load_split("test", data_dir=shared_data)
    return train.images[np.sort(rng.choice(len(train), 96, replace=False))], \
        test.images[np.sort(rng.choice(len(test), 96, replace=False))]


def observe_ranges(net: FaceNet, images: np.ndarray) -> None:
    """Let a QAT net's fake quantizers observe ``images`` (train mode, no weight update, no dropout)."""
    from footfall_training.preprocess import normalize_batch

    net.train()
    net.dropout.eval()
    with torch.no_grad():
        for i in range(0, len(images), 32):
            x = torch.from_numpy(images[i:i + 32]).permute(0, 3, 1, 2).float().div(255.0)
            net(normalize_batch(x))
    net.eval()


@pytest.fixture(scope="module")
def qat_export(faces, tmp_path_factory):
    """The shipped weights as a QAT net with ranges observed on real faces, exported FP32 + INT8."""
    from footfall_training.export import export_onnx, quantize_int8
    from footfall_training.qat import activation_quant_overrides

    torch.set_num_threads(1)
    net = FaceNet(width=0.5, tag="qat", qat=True)
    net.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=False)["ema"])
    train_faces, _ = faces
    observe_ranges(net, train_faces)
    out = tmp_path_factory.mktemp("qat")
    fp32 = export_onnx(net, out / f"{net.config.file_stem}.onnx", version="test")
    overrides = activation_quant_overrides(net, onnx.load(str(fp32)))
    # Calibration faces that differ from the observed ones: the INT8 ranges must still be the learned ones.
    noise = np.random.default_rng(1).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    int8 = quantize_int8(fp32, out / f"{net.config.file_stem}.int8.onnx", noise, activation_overrides=overrides)
    return net, fp32, int8, overrides


def onnx_tensor(model_path: Path, tensor: str, x: np.ndarray) -> np.ndarray:
    """An intermediate tensor of an ONNX graph (run without graph optimisations, so Q/DQ stay as written)."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([tensor], {"input": x})[0]


def test_fake_quant_forward_matches_the_int8_onnx_on_real_faces(qat_export, faces):
    from footfall.inference.backends.base import normalize_nchw
    from footfall.model_file import ModelMetadata
    from footfall_training.evaluate import predict

    net, fp32, int8, overrides = qat_export
    _, test_faces = faces
    # Layer by layer the fake-quantized net computes what the INT8 graph computes: the stem's quantized
    # output agrees to a small fraction of a quantization step, where the float net is off by a quarter step.
    x = normalize_nchw(test_faces[:16], ModelMetadata.from_onnx_file(int8))
    stem = "/net/features/features.0/features.0.2/Clip_output_0"
    step = float(overrides[stem][0]["scale"])
    in_int8 = onnx_tensor(int8, stem + "_DequantizeLinear_Output", x)
    with torch.no_grad():
        fake = net.features[0](net.input_fq(torch.from_numpy(x))).numpy()
        weight, bias = folded_conv_params(net.features[0][0], net.features[0][1])
        plain = F.relu6(F.conv2d(torch.from_numpy(x), weight, bias, stride=2, padding=1)).numpy()
    assert np.abs(fake - in_int8).mean() < 0.01 * step < 0.1 * np.abs(plain - in_int8).mean()
    # End to end, single elements that land next to a rounding step go either way (float summation order,
    # INT32 bias rounding) and spread through 50 layers: close, not identical.
    fake_p = predict_torch(net, test_faces, torch.device("cpu"))
    int8_p = predict(int8, test_faces, threads=1)
    assert np.abs(fake_p.age - int8_p.age).mean() < 0.3
    assert np.abs(fake_p.emotion - int8_p.emotion).max() < 0.1
    assert (fake_p.emotion.argmax(1) == int8_p.emotion.argmax(1)).mean() >= 0.95
    assert (fake_p.race.argmax(1) == int8_p.race.argmax(1)).mean() >= 0.95


def test_qat_export_keeps_the_learned_activation_scales(qat_export):
    net, _, int8, overrides = qat_export
    model = onnx.load(str(int8))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(n.input[0] in overrides for n in quantize)  # every activation, none calibrated
    for node in quantize:
        want = overrides[node.input[0]][0]
        assert np.isclose(inits[node.input[1]], want["scale"], rtol=1e-6)
        assert inits[node.input[2]] == want["zero_point"]
    # The input's range is the one observed on the normalised faces.
    scale, zero_point = net.input_fq.qparams()
    assert np.isclose(overrides["input"][0]["scale"], scale.item()) and zero_point.item() > 0


def test_the_float_copy_of_a_fake_quant_net_is_that_net_without_fake_quant():
    """What the FP32 export of a QAT net traces: the same config (a pruned plan, a stride) but qat, same outputs."""
    from dataclasses import replace

    from footfall_training.qat import float_copy

    net = FaceNet(width=0.25, output_stride=16, tag="qat", qat=True).eval()
    plain = float_copy(net)
    assert plain.config == replace(net.config, qat=False)
    assert not any(isinstance(m, type(net.input_fq)) for m in plain.modules())
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        assert plain.features(x).shape == net.features(x).shape == (2, 1280, 4, 4)


def test_qat_training_runs_from_float_weights_and_checkpoints_a_qat_net(tiny_sets, tmp_path, monkeypatch):
    from footfall_training import train as tr

    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets[0].subset(np.arange(64)), tiny_sets[1]  # two steps of 32
    cfg = tr.TrainConfig(run="q", width=0.5, epochs=1, batch_size=32, warmup_steps=1, lr=2e-4, threads=1,
                         qat=True, init=str(SHIPPED))
    best = tr.train(cfg, torch.device("cpu"), train_set, val_set)
    net = load_checkpoint(best)
    assert net.config.qat and net.config.name == "footfall-mnv2-w050-qat"
    assert int(net.input_fq.observed) == 1 and float(net.features[0].out_fq.max_val) > 0
    shipped = load_checkpoint(SHIPPED)
    # It started from the shipped weights (two small steps move them only a little).
    w, w0 = net.features[0][0].weight, shipped.features[0][0].weight
    assert 0 < (w - w0).abs().max() < 0.05 * w0.abs().max()


@pytest.mark.parametrize("method", ["l1", "fpgm"])
def test_pruning_removes_the_asked_share_and_the_net_exports_and_runs(method, faces, tmp_path):
    from footfall_training.evaluate import predict
    from footfall_training.export import export_onnx
    from footfall_training.prune import main

    torch.set_num_threads(1)
    out = tmp_path / f"{method}.pt"
    main([str(SHIPPED), "--method", method, "--amount", "0.25", "--out", str(out)])
    net = load_checkpoint(out)  # rebuilt from the channel counts in the checkpoint
    full, plan = default_channel_plan(0.5), net.channel_plan()
    assert net.config.name == f"footfall-mnv2-w050-{method}p25" and list(net.config.channels) == plan
    # Every layer of more than one block of 8 keeps about 75 % of its channels, in multiples of 8.
    for before, after in zip(full, plan):
        assert after % 8 == 0 and (after == before if before <= 8 else abs(after - 0.75 * before) <= 4)
    assert 0.72 < sum(plan) / sum(full) < 0.78
    assert count_macs(net) < 0.8 * count_macs(load_checkpoint(SHIPPED))
    _, test_faces = faces
    p = predict_torch(net, test_faces[:8], torch.device("cpu"))
    assert p.age.shape == (8,) and p.race.shape == (8, len(RACES)) and p.emotion.shape == (8, len(EMOTIONS))
    onnx_path = export_onnx(net, tmp_path / f"{net.config.file_stem}.onnx", version="test")
    q = predict(onnx_path, test_faces[:8], threads=1)
    np.testing.assert_allclose(q.emotion, p.emotion, atol=1e-4)
    np.testing.assert_allclose(q.age, p.age, atol=0.05)


def test_l1_and_fpgm_rank_channels_differently():
    from footfall_training.prune import prune

    torch.set_num_threads(1)
    kept = {}
    for method in ("l1", "fpgm"):
        net = prune(load_checkpoint(SHIPPED), method, 0.5)
        kept[method] = net.features[-1][0].weight.detach()
    assert kept["l1"].shape == kept["fpgm"].shape  # same counts ...
    assert not torch.equal(kept["l1"], kept["fpgm"])  # ... different channels


def test_pruned_checkpoint_fine_tunes_with_its_channels_also_with_qat(tiny_sets, tmp_path, monkeypatch):
    from footfall_training import train as tr
    from footfall_training.export import export_onnx, quantize_int8
    from footfall_training.prune import main
    from footfall_training.qat import activation_quant_overrides

    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    pruned = tmp_path / "p.pt"
    main([str(SHIPPED), "--method", "l1", "--amount", "0.5", "--out", str(pruned)])
    train_set, val_set = tiny_sets[0].subset(np.arange(32)), tiny_sets[1].subset(np.arange(32))
    cfg = tr.TrainConfig(run="p", width=0.5, epochs=1, batch_size=32, warmup_steps=1, threads=1, init=str(pruned),
                         qat=True)
    net = load_checkpoint(tr.train(cfg, torch.device("cpu"), train_set, val_set))
    assert net.channel_plan() == list(load_checkpoint(pruned).config.channels) != default_channel_plan(0.5)
    assert net.config.tag == "l1p50-qat" and net.config.qat
    # The pruned QAT net exports with its learned ranges like the full one.
    fp32 = export_onnx(net, tmp_path / f"{net.config.file_stem}.onnx", version="test")
    overrides = activation_quant_overrides(net, onnx.load(str(fp32)))
    int8 = quantize_int8(fp32, tmp_path / "p.int8.onnx", train_set.images[:8], activation_overrides=overrides)
    quantize = [n for n in onnx.load(str(int8)).graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == len(overrides) and all(n.input[0] in overrides for n in quantize)


def test_the_benchmark_reads_the_channel_counts_back_from_onnx_files(tmp_path):
    """benchmarks/compression.py rebuilds each committed candidate from its ONNX graph for parameters and MACs."""
    from footfall_training.export import export_onnx, quantize_int8
    from footfall_training.prune import prune

    from ..support import import_file

    bench = import_file(REPO / "benchmarks" / "compression.py")
    net = prune(load_checkpoint(SHIPPED), "fpgm", 0.25)
    fp32 = export_onnx(net, tmp_path / "p.onnx", version="test")
    faces = np.random.default_rng(0).integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)
    int8 = quantize_int8(fp32, tmp_path / "p.int8.onnx", faces)
    for path in (fp32, int8):
        assert bench.channel_plan_from_onnx(onnx.load(str(path))) == net.channel_plan()
        assert bench.count_macs(bench.network_of(path)) == count_macs(net)
    assert bench.channel_plan_from_onnx(onnx.load(str(REPO / "model" / "footfall_w050.int8.onnx"))) == \
        default_channel_plan(0.5)
    # a stride the channel counts do not show comes from the name (an output-stride-16 net for 56 px faces)
    strided = FaceNet(width=0.5, output_stride=16).eval()
    strided.image_size = 56
    fp32 = export_onnx(strided, tmp_path / "os16.onnx", version="test")
    assert bench.count_macs(bench.network_of(fp32)) == count_macs(strided) != count_macs(FaceNet(width=0.5), 56)


def test_the_cascade_benchmark_sends_only_the_unsure_faces_to_the_second_model(faces):
    """benchmarks/cascade.py: the 56 px candidate answers every face it is sure of; the shipped model answers
    exactly the others (both real INT8 files, real test faces), and without escalation it is the fast model."""
    from footfall.inference.backends import load_backend

    from ..support import import_file

    bench = import_file(REPO / "benchmarks" / "cascade.py")
    fast = load_backend("onnxruntime", bench.FAST, threads=1)
    full = load_backend("onnxruntime", bench.FULL, threads=1)
    _, test = faces
    first, second = fast.predict_faces(test), full.predict_faces(test)
    rows = bench.escalated(first, 0.8, 0.7)
    assert 0 < len(rows) < len(test)
    assert set(rows) == set(np.flatnonzero((first.emotion.max(1) < 0.8) | (first.race.max(1) < 0.7)))
    calls = []

    def counted_full(batch):
        calls.append(len(batch))
        return full.predict_faces(batch)

    out = bench.cascade(fast.predict_faces, counted_full, 0.8, 0.7)(test)
    assert calls == [len(rows)]
    kept = np.setdiff1d(np.arange(len(test)), rows)
    np.testing.assert_allclose(out.race[kept], first.race[kept], atol=1e-6)
    np.testing.assert_allclose(out.race[rows], second.race[rows], atol=1e-5)
    np.testing.assert_allclose(out.age[rows], second.age[rows], atol=1e-4)
    assert bench.cascade(fast.predict_faces, counted_full, 0, 0)(test).age.tolist() == first.age.tolist()
    assert calls == [len(rows)]
