"""Training on a tiny real subset: it runs, checkpoints, resumes, and masks missing labels."""

from pathlib import Path

import numpy as np
import pytest
import torch

from footfall_training import train as tr
from footfall_training.data import load_split


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


def test_max_steps_caps_each_epoch_for_equal_budget_runs(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets  # 96 faces: 3 steps of 32 per full epoch
    cfg = tr.TrainConfig(run="s", width=0.25, epochs=2, batch_size=32, max_steps=2, warmup_steps=1, threads=1)
    tr.train(cfg, torch.device("cpu"), train_set, val_set)
    state = torch.load(tmp_path / "s" / "last.pt", weights_only=False)["state"]
    assert state["epoch"] == 2 and state["step"] == 4 and len(state["history"]) == 2


def test_init_starts_from_exported_weights_with_a_fresh_schedule(tiny_sets, tmp_path, monkeypatch):
    from footfall_training.export import save_weights

    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets
    cfg = tr.TrainConfig(run="a", width=0.25, epochs=1, batch_size=32, warmup_steps=2, threads=1)
    first = torch.load(tr.train(cfg, torch.device("cpu"), train_set, val_set), weights_only=False)
    shipped = save_weights(first, tmp_path / "shipped.pt", "test")
    loaded = []  # every state dict a FaceNet is given: random init copied to the EMA, then --init
    original = tr.FaceNet.load_state_dict
    monkeypatch.setattr(tr.FaceNet, "load_state_dict",
                        lambda self, sd, **kw: (loaded.append({k: v.clone() for k, v in sd.items()}),
                                                original(self, sd, **kw))[1])
    cfg2 = tr.TrainConfig(run="b", width=0.25, epochs=1, batch_size=32, warmup_steps=2, threads=1,
                          init=str(shipped))
    tr.train(cfg2, torch.device("cpu"), train_set, val_set)
    from_init = [sd for sd in loaded if all(torch.equal(sd[k], v) for k, v in first["ema"].items())]
    assert len(from_init) == 2  # the trained net and its EMA both start from the shipped weights
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["state"]
    assert state["epoch"] == 1 and state["step"] == 3  # its own schedule, not the first run's
    with pytest.raises(ValueError, match="width"):
        tr.train(tr.TrainConfig(run="c", width=0.5, init=str(shipped)), torch.device("cpu"), train_set, val_set)


def test_distillation_pulls_the_student_towards_the_teacher(tiny_sets, tmp_path, monkeypatch):
    train_set, val_set = tiny_sets
    torch.manual_seed(0)
    teacher, student = tr.FaceNet(width=0.25), tr.FaceNet(width=0.25)
    x = tr.to_batch(train_set, np.arange(32), torch.device("cpu"))["image"]
    with torch.no_grad():
        for net in (teacher, student):
            # Fresh nets answer the same for every face: give them data-driven BatchNorm
            # statistics and larger heads so that their outputs differ.
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None
            net.train()(x)
            for head in (net.emotion_head, net.race_head, net.age_head, net.gender_head):
                torch.nn.init.normal_(head.weight, 0.0, 3.0 / head.in_features ** 0.5)
        t_out, s_out = teacher.eval()(x), student.eval()(x)
    to_itself = tr.distillation_loss(t_out, t_out, 2.0)
    # Only the gender BCE's entropy remains when the student answers as the teacher does.
    p = torch.sigmoid(t_out["gender_logit"])
    entropy = -(p * torch.log(p) + (1 - p) * torch.log(1 - p)).mean()
    assert torch.allclose(to_itself, entropy, atol=1e-4)
    assert tr.distillation_loss(s_out, t_out, 2.0) > to_itself + 0.1

    # In training: the teacher's soft targets add a loss term for every batch.
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    teacher_file = tmp_path / "teacher.pt"
    torch.save({"ema": teacher.state_dict(), "config": {"width": 0.25}}, teacher_file)
    terms = []
    original = tr.distillation_loss
    monkeypatch.setattr(tr, "distillation_loss", lambda *a: terms.append(original(*a)) or terms[-1])
    tr.train(tr.TrainConfig(run="d", width=0.25, epochs=1, batch_size=32, threads=1, teacher=str(teacher_file)),
             torch.device("cpu"), train_set, val_set)
    assert len(terms) == 3 and all(torch.isfinite(t) and t > 0 for t in terms)

    # A low-resolution student learns from a teacher that sees the same faces at its own 112 px; on
    # the CPU the teacher runs in ONNX Runtime (its logits equal the module's: the class's doctest).
    seen, taught = [], []
    embed, teach = tr.FaceNet.embed, tr.OnnxRuntimeTeacher.__call__
    monkeypatch.setattr(tr.FaceNet, "embed", lambda self, x: (seen.append(int(x.shape[-1])), embed(self, x))[1])
    monkeypatch.setattr(tr.OnnxRuntimeTeacher, "__call__",
                        lambda self, x: (taught.append(tuple(x.shape)), teach(self, x))[1])
    tr.train(tr.TrainConfig(run="d64", width=0.25, epochs=1, batch_size=32, threads=1, teacher=str(teacher_file),
                            image_size=64), torch.device("cpu"), train_set, val_set)
    assert taught == [(32, 3, 112, 112)] * 3  # one teacher pass per batch, at 112 px
    assert seen.count(64) >= 3  # the student, per batch and in validation

    # --teacher-flip: the teacher sees each batch with its mirror image (twice the faces per pass).
    taught.clear()
    tr.train(tr.TrainConfig(run="dflip", width=0.25, epochs=1, batch_size=32, threads=1, teacher=str(teacher_file),
                            teacher_flip=True), torch.device("cpu"), train_set, val_set)
    assert taught == [(64, 3, 112, 112)] * 3  # per batch: the faces and their mirrors in one pass


def test_boolean_settings_parse_as_on_off_flags(monkeypatch):
    configs = []
    monkeypatch.setattr(tr, "train", lambda cfg, device=None: configs.append(cfg) or Path("best.pt"))
    tr.main(["--teacher-flip"])
    tr.main(["--no-teacher-flip"])
    tr.main([])
    assert [c.teacher_flip for c in configs] == [True, False, False]


def test_augmentations_switch_off_for_ablations():
    from footfall_training.augment import AugmentConfig, augment

    x = torch.rand(6, 3, 112, 112)
    everything_off = AugmentConfig().without(list(AugmentConfig.GROUPS))
    torch.testing.assert_close(augment(x.clone(), torch.Generator().manual_seed(0), everything_off), x,
                               atol=1e-4, rtol=0)
    only_flip = AugmentConfig().without([g for g in AugmentConfig.GROUPS if g != "flip"])
    y = augment(x.clone(), torch.Generator().manual_seed(0), only_flip)
    flipped = [bool(torch.allclose(y[i], x[i].flip(-1), atol=1e-4)) for i in range(6)]
    unchanged = [bool(torch.allclose(y[i], x[i], atol=1e-4)) for i in range(6)]
    assert all(f != u for f, u in zip(flipped, unchanged)) and any(flipped) and any(unchanged)
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig().without(["sepia"])


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


def test_a_single_task_run_trains_on_its_labelled_faces_and_is_chosen_by_its_head(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets
    batches = []
    original = tr.to_batch
    monkeypatch.setattr(tr, "to_batch", lambda faces, idx, *a, **kw: (batches.append(faces.dataset[idx]),
                                                                       original(faces, idx, *a, **kw))[1])
    cfg = tr.TrainConfig(run="emo", width=0.25, epochs=1, batch_size=16, warmup_steps=2, threads=1, heads="emotion")
    tr.train(cfg, torch.device("cpu"), train_set, val_set)
    fer = int((train_set.dataset == 1).sum())
    assert np.concatenate(batches).tolist() == [1] * (fer // 16 * 16)  # FER faces only, every full batch
    history = torch.load(tmp_path / "emo" / "last.pt", weights_only=False)["state"]["history"]
    assert history[0]["score"] == pytest.approx(history[0]["emotion_acc"], abs=1e-4)  # untrained heads do not count
    assert tr.labelled_for(train_set, ("age", "emotion")).size == len(train_set)
    with pytest.raises(ValueError, match="heads must be among"):
        tr.labelled_for(train_set, ("smile",))


def test_mixed_crops_refuse_a_subset_limit(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    monkeypatch.setattr("footfall_training.pipeline_crops.load_pipeline_split",
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
    monkeypatch.setattr("footfall_training.pipeline_crops.load_pipeline_split",
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
    assert np.array_equal(packed.emotion_original, full.emotion_original)
    diff = np.abs(packed.images.astype(np.int16) - full.images.astype(np.int16)).mean()
    assert diff < 6, f"pack images differ by {diff:.1f} grey levels on average"  # WebP vs JPEG re-encoding


def test_low_resolution_training_runs_and_exports_at_its_size_or_finished_at_112(tiny_sets, tmp_path, monkeypatch):
    """--image-size 64 trains and validates on smaller faces and exports a 64 px graph; finished at 112
    (--init), the export is the 112 px one."""
    import onnx

    from footfall_training.export import export_onnx

    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    seen = []
    original = tr.FaceNet.embed
    monkeypatch.setattr(tr.FaceNet, "embed", lambda self, x: (seen.append(int(x.shape[-1])), original(self, x))[1])
    train_set, val_set = tiny_sets
    best = tr.train(tr.TrainConfig(run="lr", width=0.25, epochs=1, batch_size=32, threads=1, image_size=64),
                    torch.device("cpu"), train_set, val_set)
    assert set(seen) == {64}  # training batches and validation alike
    state = torch.load(tmp_path / "lr" / "last.pt", weights_only=False)["state"]
    assert np.isfinite(state["history"][0]["score"])
    from footfall_training.evaluate import load_predictor

    seen.clear()
    predictor, _ = load_predictor(best, threads=1)
    predictor(val_set.images[:4])
    assert set(seen) == {64}  # a .pt is scored at the resolution it learned at
    low = onnx.load(export_onnx(tr.load_checkpoint(best), tmp_path / "lr64.onnx", "test"))
    assert low.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    finished = tr.train(tr.TrainConfig(run="lr112", width=0.25, epochs=1, batch_size=32, threads=1,
                                       init=str(best)), torch.device("cpu"), train_set, val_set)
    seen.clear()
    net = tr.load_checkpoint(finished)
    onnx_file = export_onnx(net, tmp_path / "lr.onnx", "test")
    ops = {node.op_type for node in onnx.load(onnx_file).graph.node}
    assert set(seen) == {112} and "Resize" not in ops and "GlobalAveragePool" not in ops


@pytest.mark.parametrize("lever", [{"emotion_loss": "la"}, {"emotion_loss": "balanced"}, {"sampling": "balanced"},
                                   {"augment_strong": True}, {"select_emotion": "macro_f1"},
                                   {"emotion_original_mix": 0.5}],
                         ids=lambda lever: "-".join(f"{k}={v}" for k, v in lever.items()))
def test_each_generalisation_lever_trains_a_step(tiny_sets, tmp_path, monkeypatch, lever):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / cfg.run)
    train_set, val_set = tiny_sets
    cfg = tr.TrainConfig(run="lever", width=0.25, epochs=1, batch_size=32, max_steps=1, warmup_steps=1, threads=1,
                         **lever)
    best = tr.train(cfg, torch.device("cpu"), train_set, val_set)
    saved = torch.load(best, weights_only=False)
    assert all(saved["config"][k] == v for k, v in lever.items())
    state = torch.load(tmp_path / "lever" / "last.pt", weights_only=False)["state"]
    assert state["step"] == 1 and np.isfinite(state["history"][0]["score"])
    if "select_emotion" in lever:  # the score counts macro-F1 where it would count accuracy
        m = saved["metrics"]
        assert state["history"][0]["score"] == pytest.approx(
            m["gender_acc"] + m["race_acc"] + m["emotion_macro_f1"] - m["age_mae"] / 10)


def test_emotion_losses_favour_the_rare_classes():
    """The logit-adjusted loss asks a rare class's face for a larger margin, the class-balanced one
    weighs it more: for the same logits both cost more on a rare face than on a frequent one, where
    plain CE costs the same."""
    prior = torch.tensor([0.05, 0.05, 0.05, 0.25, 0.1, 0.1, 0.4])
    out = {"emotion_logits": torch.zeros(1, 7), "age": torch.zeros(1)}

    def loss_of(loss: str, emotion: int) -> float:
        batch = {"age": torch.tensor([float("nan")]), "gender": torch.tensor([-1]), "race": torch.tensor([-1]),
                 "emotion": torch.tensor([emotion]), "emotion_votes": torch.eye(7)[[emotion]]}
        criterion = tr.MultiTaskLoss(tr.TrainConfig(emotion_loss=loss), torch.zeros(3), prior, 1000)
        return criterion(out, batch)[1]["emotion"]

    disgust, neutral = 1, 6
    assert loss_of("ce", disgust) == pytest.approx(loss_of("ce", neutral))
    for loss in ("la", "balanced"):
        assert loss_of(loss, disgust) > loss_of(loss, neutral) + 0.1, loss
    with pytest.raises(ValueError, match="emotion_loss"):
        tr.MultiTaskLoss(tr.TrainConfig(emotion_loss="focal"), torch.zeros(3), prior, 1000)


def test_fer_faces_carry_fer2013s_original_label(shared_data):
    """The data README recovered FER2013's own label of nearly every FER+ face; it agrees with FER+'s
    majority on about two thirds of them, and FER+ moved the rest mostly to neutral."""
    from footfall.labels import EMOTIONS

    val = load_split("val", data_dir=shared_data)
    fer, utk = val.dataset == 1, val.dataset == 0
    assert (val.emotion_original[utk] == -1).all()
    known = fer & (val.emotion_original >= 0)
    assert known.sum() > 0.98 * fer.sum()
    agree = (val.emotion_original[known] == val.emotion[known]).mean()
    assert 0.6 < agree < 0.8, agree
    disagree = known & (val.emotion_original != val.emotion)
    neutral = EMOTIONS.index("neutral")
    assert (val.emotion[disagree] == neutral).mean() > 0.4  # where they differ, FER+ mostly says neutral


def test_the_original_label_mix_moves_the_emotion_target_towards_fer2013s_label():
    """A face FER+'s voters called neutral but FER2013 found as angry: with the mix, predicting angry
    costs less than without it; a face without an original label costs the same."""
    angry, neutral = 0, 6
    logits = torch.full((2, 7), -4.0)
    logits[:, angry] = 4.0
    out = {"emotion_logits": logits, "age": torch.zeros(2)}
    batch = {"age": torch.full((2,), float("nan")), "gender": torch.tensor([-1, -1]), "race": torch.tensor([-1, -1]),
             "emotion": torch.tensor([neutral, neutral]), "emotion_votes": torch.eye(7)[[neutral, neutral]]}

    def loss_of(mix: float, original: int) -> float:
        b = batch | {"emotion_original": torch.tensor([original, original])}
        return tr.MultiTaskLoss(tr.TrainConfig(emotion_original_mix=mix), torch.zeros(3))(out, b)[1]["emotion"]

    assert loss_of(0.5, angry) < loss_of(0.0, angry) - 1.0
    assert loss_of(0.5, -1) == pytest.approx(loss_of(0.0, -1))
    with pytest.raises(ValueError, match="emotion_original_mix"):
        tr.MultiTaskLoss(tr.TrainConfig(emotion_original_mix=1.5), torch.zeros(3))
    with pytest.raises(ValueError, match="emotion_target soft"):
        tr.MultiTaskLoss(tr.TrainConfig(emotion_original_mix=0.5, emotion_target="hard"), torch.zeros(3))


def test_balanced_sampling_draws_rare_age_gender_cells_more_often(tiny_sets, shared_data):
    train = load_split("train", data_dir=shared_data)
    p = tr.sampling_weights(train)
    assert p.sum() == pytest.approx(1.0)
    utk = train.dataset == 0
    assert p[~utk].sum() == pytest.approx((~utk).mean())  # FER's faces keep their share
    infants = utk & (train.age < 3)
    women_over_60 = utk & (train.age >= 65) & (train.gender == 1)
    twenties = utk & (train.age >= 25) & (train.age < 35)
    assert p[infants].mean() > p[twenties].mean() and p[women_over_60].mean() > p[twenties].mean()


def test_strong_augmentation_squeezes_faces_and_keeps_the_default_stream():
    from footfall_training.augment import AugmentConfig, augment

    x = torch.rand(4, 3, 112, 112)
    default = augment(x.clone(), torch.Generator().manual_seed(0), AugmentConfig())
    # A squeeze of 0 draws nothing: the default augmentation is what it was before the lever existed.
    torch.testing.assert_close(augment(x.clone(), torch.Generator().manual_seed(0), AugmentConfig(squeeze=0.0)),
                               default)
    only_squeeze = AugmentConfig(squeeze=0.5).without([g for g in AugmentConfig.GROUPS if g != "squeeze"])
    bar = torch.zeros(1, 3, 112, 112)
    bar[..., 40:72] = 1.0  # a vertical bright band 32 px wide
    squeezed = augment(bar, torch.Generator().manual_seed(0), only_squeeze)
    assert squeezed[0, 0, 56].sum() < 32 - 1  # narrower, as a turned face is
