"""The network variants of issue 23 (MobileNetV3, attention, branching): they build within the budget,
learn, export, reload; and the default is still exactly the shipped network."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from footfall.inference.backends import load_backend
from footfall.inference.backends.base import normalize_nchw
from footfall_training import train as tr
from footfall_training.export import export_onnx
from footfall_training.network import (ExportWrapper, FaceNet, NetConfig, SpatialSelfAttention, SqueezeExcite,
                                       branched_state_dict, count_macs, count_parameters)
from footfall_training.preprocess import INPUT_SIZE

from .conftest import with_varied_outputs
from .model_files import REPO

# Issue 23's budget for the board: parameters and multiply-adds per 112x112 face.
MAX_PARAMS, MAX_MACS = 5_000_000, 300_000_000
VARIANTS = [
    NetConfig(width=0.6, arch="mnv3"),
    NetConfig(width=0.6, arch="mnv3", attention="mha"),
    NetConfig(width=0.6, arch="mnv3", shared_depth=6),
    NetConfig(width=0.6, arch="mnv3", attention="mha", shared_depth=6),
    NetConfig(width=0.5, attention="mha", shared_depth=8),
    NetConfig(width=0.5, stem_stride=4),
]
IDS = [c.name for c in VARIANTS]


def build(config: NetConfig, seed: int = 0) -> FaceNet:
    torch.manual_seed(seed)
    return FaceNet.from_config(config)


def test_the_default_is_the_shipped_network(tmp_path):
    shipped = torch.load(REPO / "model" / "footfall_w050.pt", map_location="cpu", weights_only=False)
    net = FaceNet(width=0.5)
    assert net.config == NetConfig(width=0.5) and net.config.file_stem == "footfall_w050"
    assert net.config.name == "footfall-mnv2-w050"
    net.load_state_dict(shipped["ema"])  # strict: the same modules under the same names
    assert not hasattr(net, "branches") and not hasattr(net, "attention")
    # its checkpoint, written before the net config had more than a width, loads as such ...
    assert tr.load_checkpoint(REPO / "model" / "footfall_w050.pt").config == NetConfig(width=0.5)
    # ... and exports to a graph that answers as the committed ONNX model does
    ours = load_backend("onnxruntime", export_onnx(net.eval(), tmp_path / "w050.onnx", version="test"), threads=1)
    committed = load_backend("onnxruntime", REPO / "model" / "footfall_w050.onnx", threads=1)
    faces = np.random.default_rng(0).integers(0, 256, (4, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    a, b = ours.predict(faces), committed.predict(faces)
    np.testing.assert_allclose(a.emotion, b.emotion, atol=1e-5)
    np.testing.assert_allclose(a.age, b.age, atol=1e-3)


@pytest.mark.parametrize("config", VARIANTS, ids=IDS)
def test_variants_build_within_the_budget_at_both_training_sizes(config):
    net = build(config).eval()
    assert count_parameters(net) < MAX_PARAMS and count_macs(net) < MAX_MACS
    # the count sees the whole net
    assert count_macs(net) > count_macs(FaceNet(width=0.25, stem_stride=config.stem_stride))
    for size in (INPUT_SIZE, 64):
        out = net(torch.rand(3, 3, size, size))
        assert out["age"].shape == (3,) and out["race"].shape == (3, 5) and out["emotion"].shape == (3, 7)
        assert torch.isfinite(out["age_logits"]).all()
    kinds = {type(m) for m in net.modules()}
    assert (SqueezeExcite in kinds and torch.nn.Hardswish in kinds) == (config.arch == "mnv3")
    assert (SpatialSelfAttention in kinds) == (config.attention == "mha")


def test_names_and_file_stems_tell_the_variants_apart():
    names = {c.name for c in VARIANTS} | {NetConfig(width=0.5).name}
    stems = {c.file_stem for c in VARIANTS} | {NetConfig(width=0.5).file_stem}
    assert len(names) == len(stems) == len(VARIANTS) + 1
    assert NetConfig(width=0.6, arch="mnv3", attention="mha", shared_depth=6).file_stem == "footfall_mnv3_w060_mha_sd6"


def test_output_stride_16_takes_the_shipped_weights_and_ends_56_px_faces_on_the_4x4_map():
    shipped = torch.load(REPO / "model" / "footfall_w050.pt", map_location="cpu", weights_only=False)
    net = FaceNet(width=0.5, output_stride=16).eval()
    net.load_state_dict(shipped["ema"])  # strict: a stride has no weights
    assert net.config.name == "footfall-mnv2-w050-os16" and NetConfig.from_name(net.config.name) == net.config
    plain = FaceNet(width=0.5).eval()
    plain.load_state_dict(shipped["ema"])
    with torch.no_grad():
        small = torch.rand(2, 3, 56, 56)
        assert net.features(small).shape[-2:] == plain.features(torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)).shape[-2:] \
            == net.gdc[0].kernel_size == (4, 4)
        assert plain.features(small).shape[-2:] == (2, 2)
        # up to the block that keeps its stride both nets compute the same
        torch.testing.assert_close(net.features[:14](small), plain.features[:14](small))
    # one stride-2 convolution fewer: 13 M multiply-adds at 56 px, between the 56 px (7 M) and 112 px (26 M) nets
    assert count_macs(plain, 56) < count_macs(net, 56) < count_macs(plain, INPUT_SIZE) / 1.9


def test_a_stride_4_stem_takes_the_shipped_weights_as_the_shipped_net_on_faces_shrunk_to_56_px():
    """At the start the stride-4 stem's net is exactly the 56 px net the shipped weights make (each 3x3 tap
    spread over the 2x2 pixels the shrink averaged); training then lets the 6x6 kernel use every pixel."""
    shipped = torch.load(REPO / "model" / "footfall_w050.pt", map_location="cpu", weights_only=False)
    net = FaceNet(width=0.5, stem_stride=4).eval()
    net.load_state_dict(shipped["ema"])  # strict: every weight placed, the stem's spread
    assert net.config.name == "footfall-mnv2-w050-s4" and NetConfig.from_name(net.config.name) == net.config
    assert net.features[0][0].kernel_size == (6, 6) and net.features[0][0].stride == (4, 4)
    plain = FaceNet(width=0.5).eval()
    plain.load_state_dict(shipped["ema"])
    faces = torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        got, want = net(faces), plain(torch.nn.functional.avg_pool2d(faces, 2))
        assert net.features(faces).shape[-2:] == plain.features(faces[..., ::2, ::2]).shape[-2:] == (2, 2)
    for key in ("age", "gender", "race", "emotion"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=0)
    assert float(want["emotion"].std(0).max()) > 1e-3  # the faces differ, so the comparison means something
    # the 56 px net's cost plus a wider stem: 8 M multiply-adds against 7 M at 56 px and 26 M at 112 px
    assert count_macs(plain, 56) < count_macs(net, INPUT_SIZE) < 1.2 * count_macs(plain, 56)


@pytest.mark.parametrize("config", [NetConfig(width=0.5, shared_depth=7), NetConfig(width=0.6, arch="mnv3", attention="mha",
                                                                                   shared_depth=6)], ids=lambda c: c.name)
def test_a_one_trunk_nets_weights_start_a_branched_net_that_computes_the_same(config):
    trunk = with_varied_outputs(build(replace(config, shared_depth=0), seed=1))
    branched = FaceNet.from_config(config).eval()
    branched.load_state_dict(branched_state_dict(trunk.state_dict(), config))  # strict: every weight placed
    x = torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        want, got = trunk(x), branched(x)
        for key in ("age_logits", "gender_logit", "race_logits", "emotion_logits"):
            torch.testing.assert_close(got[key], want[key])
        assert float(want["emotion"].std(0).max()) > 1e-3  # the outputs vary with the face
        # the copies are the trunk's values, not shared tensors: training one branch leaves the other alone
        for p in branched.branches[1].parameters():
            p.add_(0.1)
        moved = branched(x)
    torch.testing.assert_close(moved["age_logits"], want["age_logits"])
    assert not torch.allclose(moved["emotion_logits"], want["emotion_logits"])
    with pytest.raises(ValueError, match="does not branch"):
        branched_state_dict(trunk.state_dict(), replace(config, shared_depth=0))


def test_impossible_configurations_are_refused():
    for bad in (dict(arch="mnv4"), dict(attention="transformer"), dict(shared_depth=9), dict(arch="mnv3", shared_depth=8),
                dict(shared_depth=-1), dict(output_stride=8), dict(stem_stride=3)):
        with pytest.raises(ValueError):
            FaceNet(width=0.5, **bad)


def test_after_the_branching_point_emotion_has_its_own_stages():
    net = with_varied_outputs(build(NetConfig(width=0.6, arch="mnv3", shared_depth=6)))
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        before = net(x)
        for p in net.branches[0].parameters():  # the face attributes' copy of the late stages
            p.add_(torch.randn_like(p) * 0.1)
        after = net(x)
    assert not torch.allclose(before["age_logits"], after["age_logits"])
    torch.testing.assert_close(before["emotion_logits"], after["emotion_logits"])
    # and the shared stages feed both
    with torch.no_grad():
        net.features[-1][0].block[0][0].weight.mul_(1.5)
        shared = net(x)
    assert not torch.allclose(after["emotion_logits"], shared["emotion_logits"])


def test_a_new_attention_block_starts_as_the_identity_and_mixes_tokens_once_trained():
    block = SpatialSelfAttention(32, dim=16, heads=4).eval()
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(block(x), x)
    with torch.no_grad():
        torch.nn.init.ones_(block.proj[1].weight)
        y = block(x)
        x2 = x.clone()
        x2[:, :, 0, 0] += 1.0  # one token changes ...
        y2 = block(x2)
    assert not torch.allclose(y[:, :, 3, 3], y2[:, :, 3, 3])  # ... and another token's output follows


@pytest.mark.parametrize("config", VARIANTS, ids=IDS)
def test_a_training_step_reaches_every_parameter(config):
    net = build(config).train()
    criterion = tr.MultiTaskLoss(tr.TrainConfig(), net.age_bins.clone())
    n = 8
    batch = {"age": torch.tensor([20.0, 35.0, 60.0, 5.0] + [float("nan")] * 4),
             "gender": torch.tensor([0, 1, 1, 0, -1, -1, -1, -1]), "race": torch.tensor([0, 1, 2, 3, -1, -1, -1, -1]),
             "emotion": torch.tensor([-1] * 4 + [0, 3, 6, 4]),
             "emotion_votes": torch.eye(7)[[0, 0, 0, 0, 0, 3, 6, 4]].float()}
    loss, parts = criterion(net(torch.rand(n, 3, 64, 64)), batch)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"age", "gender", "race", "emotion"}
    unreached = [name for name, p in net.named_parameters() if p.grad is None]
    assert unreached == []
    # all but the attention's inner weights, which see gradients once its zero-initialised output scale moved
    dead = [name for name, p in net.named_parameters()
            if not p.grad.any() and ".qkv." not in name and ".proj.0." not in name]
    assert dead == []


@pytest.mark.parametrize("config", VARIANTS, ids=IDS)
def test_onnx_export_matches_pytorch_and_checkpoints_reload(config, tmp_path):
    net = with_varied_outputs(build(config))
    path = export_onnx(net, tmp_path / f"{config.file_stem}.onnx", version="test")
    backend = load_backend("onnxruntime", path, threads=1)
    assert backend.metadata.name == config.name
    faces = np.random.default_rng(0).integers(0, 256, (4, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    x = normalize_nchw(faces, backend.metadata)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        want = ExportWrapper(net)(torch.from_numpy(x))
    for name, a, b in zip(ExportWrapper.OUTPUT_NAMES, got, want):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-2 if name == "age" else 1e-4, err_msg=name)
    assert np.ptp(got[0]) > 0.5  # the outputs vary with the face, so the comparison means something
    # a training checkpoint carries the net config: load_checkpoint rebuilds the same net
    ckpt = tmp_path / "best.pt"
    cfg = tr.TrainConfig(**{k: v for k, v in asdict(config).items() if k in tr.TrainConfig.__dataclass_fields__})
    torch.save({"ema": net.state_dict(), "config": asdict(cfg)}, ckpt)
    loaded = tr.load_checkpoint(ckpt)
    assert loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(x))["emotion"], want[3])


def test_training_runs_resume_and_init_with_their_architecture(shared_data, tmp_path, monkeypatch):
    from footfall_training.data import load_split

    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    rng = np.random.default_rng(0)
    train = load_split("train", data_dir=shared_data)
    val = load_split("val", data_dir=shared_data)
    train_set, val_set = train.subset(rng.permutation(len(train))[:64]), val.subset(rng.permutation(len(val))[:64])
    cfg = tr.TrainConfig(run="m", arch="mnv3", width=0.6, attention="mha", shared_depth=6, dropout=0.1, epochs=1,
                         batch_size=32, warmup_steps=1, threads=1, image_size=64)
    best = tr.train(cfg, torch.device("cpu"), train_set, val_set)
    net = tr.load_checkpoint(best)
    assert net.config == NetConfig(width=0.6, dropout=0.1, arch="mnv3", attention="mha", shared_depth=6)
    assert net.image_size == 64
    # --init from a checkpoint of another architecture is refused
    other = tr.TrainConfig(**{**asdict(cfg), "run": "n", "arch": "mnv2", "init": str(best)})
    with pytest.raises(ValueError, match="footfall-mnv3-w060-mha-sd6"):
        tr.train(other, torch.device("cpu"), train_set, val_set)
    # --init of the shipped one-trunk weights into a net branched late: each branch starts from the trunk
    branched = tr.TrainConfig(run="b", width=0.5, shared_depth=7, init=str(REPO / "model" / "footfall_w050.pt"),
                              epochs=1, max_steps=1, batch_size=32, warmup_steps=1, threads=1)
    net = tr.load_checkpoint(tr.train(branched, torch.device("cpu"), train_set, val_set))
    assert net.config == NetConfig(width=0.5, shared_depth=7)
    # ... and into a net with a stride-4 stem: the 3x3 stem's kernel spread to 6x6
    strided = tr.TrainConfig(**{**asdict(branched), "run": "s", "shared_depth": 0, "stem_stride": 4})
    net = tr.load_checkpoint(tr.train(strided, torch.device("cpu"), train_set, val_set))
    assert net.config == NetConfig(width=0.5, stem_stride=4) and net.features[0][0].kernel_size == (6, 6)
