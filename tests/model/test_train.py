"""Training on a tiny real subset: it runs, checkpoints, resumes, and masks missing labels."""

import numpy as np
import pytest
import torch

from footfall.model import train as tr
from footfall.model.data import load_split


@pytest.fixture(scope="module")
def tiny_sets(shared_data):
    rng = np.random.default_rng(0)
    train = load_split("train", data_dir=shared_data)
    val = load_split("val", data_dir=shared_data)
    return train.subset(rng.permutation(len(train))[:96]), val.subset(rng.permutation(len(val))[:64])


def test_training_checkpoints_and_resumes(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets
    cfg = tr.TrainConfig(run="t", width=0.25, epochs=1, batch_size=32, warmup_steps=2, threads=1)
    best = tr.train(cfg, torch.device("cpu"), train_set, val_set)
    state = torch.load(tmp_path / "t" / "last.pt", weights_only=False)["state"]
    assert best.exists() and state["epoch"] == 1 and state["step"] == 3
    assert np.isfinite(state["history"][0]["score"])
    cfg.epochs = 2  # the same command with more epochs resumes instead of starting over
    tr.train(cfg, torch.device("cpu"), train_set, val_set)
    state = torch.load(tmp_path / "t" / "last.pt", weights_only=False)["state"]
    assert state["epoch"] == 2 and state["step"] == 6 and len(state["history"]) == 2
    net = tr.load_checkpoint(best)
    assert net.config.width == 0.25 and not net.training


def test_loss_ignores_heads_without_labels(tiny_sets):
    train_set, _ = tiny_sets
    fer = np.flatnonzero(train_set.dataset == 1)[:8]
    utk = np.flatnonzero(train_set.dataset == 0)[:8]
    net = tr.FaceNet(width=0.25)
    criterion = tr.MultiTaskLoss(tr.TrainConfig(), net.age_bins.clone())
    for index, heads in ((fer, {"emotion"}), (utk, {"age", "gender", "race"})):
        batch = tr.to_batch(train_set, index, torch.device("cpu"))
        total, parts = criterion(net(batch["image"]), batch)
        assert set(parts) == heads and torch.isfinite(total)


def test_mixed_crops_refuse_a_subset_limit(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    monkeypatch.setattr("footfall.model.pipeline_crops.load_pipeline_split",
                        lambda split: type("P", (), {"faces": tiny_sets[0] if split == "train" else tiny_sets[1]}))
    with pytest.raises(ValueError, match="--limit"):
        tr.train(tr.TrainConfig(run="m", crops="mixed", limit=10), torch.device("cpu"), *tiny_sets)
    with pytest.raises(ValueError, match="crops must be"):
        tr.train(tr.TrainConfig(run="m", crops="camera"), torch.device("cpu"), *tiny_sets)


def test_mixed_crops_train_on_both_kinds(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets
    pipeline_train = train_set.subset(np.arange(len(train_set)))
    pipeline_train.images = 255 - pipeline_train.images  # tell the two kinds apart
    monkeypatch.setattr("footfall.model.pipeline_crops.load_pipeline_split",
                        lambda split: type("P", (), {"faces": pipeline_train if split == "train" else val_set}))
    seen = []
    original = tr.to_batch
    monkeypatch.setattr(tr, "to_batch", lambda faces, index, device, images=None: (
        seen.append(np.mean([(images[i] == pipeline_train.images[j]).all() for i, j in enumerate(index)])),
        original(faces, index, device, images))[1])
    tr.train(tr.TrainConfig(run="mx", width=0.25, epochs=1, batch_size=32, threads=1, crops="mixed"),
             torch.device("cpu"), train_set, val_set)
    assert len(seen) == 3 and 0.2 < np.mean(seen) < 0.8, seen


def test_the_gpu_pack_loads_the_same_faces_and_labels(shared_data, tmp_path):
    """The small WebP pack (../shared/data/device) is what travels to a GPU machine."""
    pack = shared_data / "device"
    if not (pack / "utkface_112.tar.gz").exists():
        from ..support import missing_requirement

        missing_requirement(f"GPU training pack not found in {pack}")
    full = load_split("val", data_dir=shared_data)
    packed = load_split("val", data_dir=pack, cache_dir=tmp_path)
    assert len(packed) == len(full) == 5529
    for key in ("gender", "race", "emotion", "dataset"):
        assert np.array_equal(getattr(packed, key), getattr(full, key)), key
    assert np.allclose(packed.emotion_votes, full.emotion_votes) and np.array_equal(packed.age, full.age, equal_nan=True)
    diff = np.abs(packed.images.astype(np.int16) - full.images.astype(np.int16)).mean()
    assert diff < 6, f"pack images differ by {diff:.1f} grey levels on average"  # WebP vs JPEG re-encoding
