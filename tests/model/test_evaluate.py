"""Unit tests of footfall_training.evaluate: predict dispatch, groups, robustness transforms, reports."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from footfall_training import evaluate as ev
from footfall_training.data import FaceSet
from footfall_training.metrics import original_label_metrics
from footfall.predictions import Predictions

from .model_files import REPO


def make_faces(n: int, seed: int = 0) -> FaceSet:
    """Random faces: the first half UTKFace-like (age/gender/race), the rest FER-like (emotion)."""
    rng = np.random.default_rng(seed)
    utk = np.arange(n) < n // 2
    return FaceSet(
        images=rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8),
        age=np.where(utk, rng.integers(1, 90, n), np.nan).astype(np.float32),
        gender=np.where(utk, rng.integers(0, 2, n), -1).astype(np.int8),
        race=np.where(utk, rng.integers(0, 5, n), -1).astype(np.int8),
        emotion=np.where(utk, -1, rng.integers(0, 7, n)).astype(np.int8),
        emotion_votes=np.zeros((n, 7), np.float32),
        dataset=np.where(utk, 0, 1).astype(np.int8),
        emotion_original=np.where(utk, -1, rng.integers(0, 7, n)).astype(np.int8),
    )


# --- predict dispatch ----------------------------------------------------------------------

def test_predict_dispatches_every_format_to_the_same_answers(random_model):
    net, pt, onnx_path = random_model
    faces = make_faces(6).images
    from_pt = ev.predict(pt, faces, threads=1)
    from_onnx = ev.predict(onnx_path, faces, threads=1)
    assert isinstance(from_pt, Predictions) and len(from_pt) == 6
    for key in ("age", "gender", "race", "emotion"):
        np.testing.assert_allclose(getattr(from_onnx, key), getattr(from_pt, key), atol=1e-4, rtol=1e-4)
    assert ev.model_format(pt) == "pytorch"
    assert ev.model_format(onnx_path) == "onnx-fp32"


def test_a_checkpoint_names_the_run_that_wrote_it_and_an_export_names_none():
    """Result rows of checkpoints (which share a model name across runs) carry the training run."""
    import torch

    shipped = REPO / "model" / "footfall_w050.pt"
    assert ev.checkpoint_run(shipped) == torch.load(shipped, weights_only=False)["config"]["run"] != ""
    assert ev.checkpoint_run(REPO / "model" / "footfall_w050.int8.onnx") == ""


def test_model_format_reads_int8_precision_from_metadata(random_model, tmp_path):
    import onnx

    from footfall.model_file import METADATA_KEY, ModelMetadata
    from footfall_training.export import _set_metadata

    _, _, onnx_path = random_model
    model = onnx.load(str(onnx_path))
    meta = ModelMetadata.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    _set_metadata(model, ModelMetadata(**{**meta.__dict__, "precision": "int8"}))
    onnx.save(model, str(tmp_path / "m.int8.onnx"))
    assert ev.model_format(tmp_path / "m.int8.onnx") == "onnx-int8"


def test_unknown_model_format_is_refused(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown model format"):
        ev.predict(tmp_path / "model.tflite", make_faces(2).images)


def test_batches_are_stitched_in_order(random_model):
    _, _, onnx_path = random_model
    faces = make_faces(5).images
    predictor, name = ev.load_predictor(onnx_path, threads=1, batch_size=2)  # batches 2 + 2 + 1
    whole, _ = ev.load_predictor(onnx_path, threads=1, batch_size=64)
    np.testing.assert_allclose(predictor(faces).emotion, whole(faces).emotion, atol=1e-5)
    assert name == "footfall-mnv2-w025"


# --- subsets and groups ----------------------------------------------------------------------

def test_sample_per_dataset_is_fixed_and_balanced():
    dataset = np.array([0] * 50 + [1] * 30)
    a = ev.sample_per_dataset(dataset, 10, seed=3)
    assert np.array_equal(a, ev.sample_per_dataset(dataset, 10, seed=3))
    assert (dataset[a] == 0).sum() == 10 and (dataset[a] == 1).sum() == 10
    assert np.all(np.diff(a) > 0)
    assert len(ev.sample_per_dataset(dataset, 0)) == 80
    assert (dataset[ev.sample_per_dataset(dataset, 40)] == 1).sum() == 30  # capped by the dataset size


def test_fairness_groups_hold_the_right_samples():
    faces = make_faces(40)
    faces.race[:20] = np.repeat([0, 1], 10)
    faces.gender[:20] = np.tile([0, 1], 10)
    faces.age[:20] = np.r_[np.full(10, 30.0), np.full(10, 70.0)]
    # Predictions: perfect on race 0, wrong gender and 10 years off on race 1; FER rows are noise.
    p = Predictions(age=np.r_[faces.age[:10], faces.age[10:20] + 10, np.full(20, 99.0)],
                    gender=np.r_[faces.gender[:10], 1 - faces.gender[10:20], np.full(20, 0.9)].astype(float),
                    race=np.zeros((40, 5)), emotion=np.zeros((40, 7)))
    f = ev.fairness(p, faces)
    assert f["race"]["white"] == {"n": 10, "gender_acc": 1.0, "age_mae": 0.0}
    assert f["race"]["black"] == {"n": 10, "gender_acc": 0.0, "age_mae": 10.0}
    assert set(f["race"]) == {"white", "black"}  # groups without samples are left out
    assert f["gender"]["male"]["n"] == 10 and f["gender"]["male"]["gender_acc"] == 0.5
    assert f["age_band"]["25-34"] == {"n": 10, "gender_acc": 1.0, "age_mae": 0.0}
    assert f["age_band"]["65+"]["age_mae"] == 10.0
    assert sum(g["n"] for g in f["age_band"].values()) == 20  # FER faces (no age) are in no band


# --- robustness transforms -------------------------------------------------------------------

def checkerboard(period: int = 2) -> np.ndarray:
    y, x = np.mgrid[:112, :112]
    img = (((x // period + y // period) % 2) * 255).astype(np.uint8)
    return np.repeat(img[None, :, :, None], 3, axis=3)


def stripes(axis: int) -> np.ndarray:
    coord = np.mgrid[:112, :112][axis]
    img = ((coord // 2) % 2 * 255).astype(np.uint8)  # 2-px stripes varying along ``axis``
    return np.repeat(img[None, :, :, None], 3, axis=3)


def smooth_ramp() -> np.ndarray:
    y, x = np.mgrid[:112, :112]
    img = (x + y).astype(np.float32) / 222 * 255
    return np.repeat(img.astype(np.uint8)[None, :, :, None], 3, axis=3)


@pytest.mark.parametrize("px", [32, 48, 64])
def test_downscale_removes_fine_detail_but_keeps_coarse_content(px):
    fine = ev.downscale(checkerboard(1), px)
    assert fine.shape == (1, 112, 112, 3) and fine.dtype == np.uint8
    assert fine.std() < 20  # a 1-px checkerboard averages out to grey
    ramp = smooth_ramp()
    assert np.abs(ev.downscale(ramp, px).astype(int) - ramp).max() <= 6


def test_smaller_faces_lose_more():
    board = checkerboard(2)
    err = [np.abs(ev.downscale(board, px).astype(int) - board).mean() for px in (32, 48, 64)]
    assert err[0] > err[1] > err[2] > 10


def test_motion_blur_is_horizontal():
    across = stripes(axis=1)  # varies along x: smeared by horizontal motion
    along = stripes(axis=0)  # varies along y: untouched
    assert ev.motion_blur(across).std() < 0.3 * across.std()
    assert np.array_equal(ev.motion_blur(along), along)


def test_jpeg_30_adds_artefacts_that_quality_95_does_not():
    faces = make_faces(4).images
    faces = np.stack([cv2.GaussianBlur(f, (5, 5), 0) for f in faces])  # image-like, not pure noise
    q30 = np.abs(ev.jpeg(faces, 30).astype(int) - faces).mean()
    q95 = np.abs(ev.jpeg(faces, 95).astype(int) - faces).mean()
    assert q30 > 1.5 * q95 > 0
    assert abs(float(ev.jpeg(faces, 30).mean()) - float(faces.mean())) < 3


def test_jpeg_keeps_rgb_order():
    red = np.zeros((1, 112, 112, 3), np.uint8)
    red[..., 0] = 200
    out = ev.jpeg(red, 30)[0].mean(axis=(0, 1))
    assert out[0] > 180 and out[2] < 20


def test_brightness_scales_and_clips():
    faces = np.full((2, 112, 112, 3), 100, np.uint8)
    faces[1] = 200
    up, down = ev.brightness(faces, 1.4), ev.brightness(faces, 0.6)
    assert up[0].max() == up[0].min() == 140 and up[1].min() == 255
    assert down[0].min() == 60 and down[1].min() == 120


@pytest.mark.parametrize("name", sorted(ev.ROBUSTNESS))
def test_every_condition_changes_the_image_and_not_the_input(name):
    faces = make_faces(3).images
    before = faces.copy()
    out = ev.ROBUSTNESS[name](faces)
    assert out.shape == faces.shape and out.dtype == np.uint8
    assert np.array_equal(faces, before)
    assert np.abs(out.astype(int) - faces).mean() > 2


# --- whole report -------------------------------------------------------------------------

def test_evaluate_model_reports_every_section(random_model, tmp_path):
    _, _, onnx_path = random_model
    faces = make_faces(16)
    detected = np.arange(16) % 4 != 0
    r = ev.evaluate_model(onnx_path, faces, detected, robustness=True, threads=1, crops="pipeline")
    assert r["faces"] == {"utkface": 8, "ferplus": 8}
    assert {"age_mae", "gender_acc", "race_acc", "race_macro_f1", "emotion_acc", "emotion_macro_f1",
            "valence_acc", "emotion_confusion", "age_mae_by_band"} <= set(r["metrics"])
    assert set(r["robustness"]) == {"clean", *ev.ROBUSTNESS}
    assert r["robustness"]["clean"]["gender_acc"] == r["metrics"]["gender_acc"]
    assert r["detection_rate"] == {"utkface": 0.75, "ferplus": 0.75}
    assert set(r["fairness"]) == {"race", "gender", "age_band"}
    assert r["fer2013_labels"]["faces"] == 8 and 0 <= r["fer2013_labels"]["acc"] <= 1
    json.dumps(r)  # JSON-ready
    text = ev.render([r], markdown=True)
    for title in ("Head metrics", "Age MAE per age band", "Emotion confusion", "Valence", "Fairness", "Robustness",
                  "detection rate", "FER2013's own labels"):
        assert title in text
    assert "|---|" in text
    assert "age MAE" in ev.render([r], markdown=False)
    # against FER2013's labels each class shows the share called neutral, neutral its recall alone
    made = {**r, "fer2013_labels": original_label_metrics(np.eye(7)[[6, 6, 0]], np.array([6, 0, 0]))}
    row = next(line for line in ev.render([made], markdown=True).splitlines()
               if line.startswith("| ") and "(50.0)" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "50.0 (50.0)" and cells[-1] == "100.0"


def test_cli_writes_json(random_model, tmp_path, monkeypatch, capsys):
    _, _, onnx_path = random_model
    faces = make_faces(8)
    monkeypatch.setattr(ev, "load_test_faces", lambda crops, limit, seed, split: (faces, None))
    ev.main([str(onnx_path), "--no-robustness", "--json", str(tmp_path / "e.json"), "--threads", "1"])
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["results"][0]["format"] == "onnx-fp32" and "robustness" not in data["results"][0]
    assert "Head metrics" in capsys.readouterr().out


def test_flip_sweep_runs_the_served_flip_averaging_per_threshold(test_subset):
    """``footfall-evaluate --flip-sweep``: threshold 0 is the single pass, 1 mirrors every face, and in
    between the faces below the threshold are mirrored, exactly as the worker's backend does it."""
    from footfall.config import InferenceSettings
    from footfall.inference.backends import load_backend
    from footfall_training.metrics import head_metrics

    served = InferenceSettings()
    faces = test_subset.subset(np.arange(0, len(test_subset), 5))  # 120 faces of both datasets
    threshold = load_backend(served.backend, served.face_model, settings=served).confidence  # the file's
    rows = ev.flip_confidence_sweep(served.face_model, faces, [0.0, threshold, 1.0])
    labels = dict(age=faces.age, gender=faces.gender, race=faces.race, emotion=faces.emotion)

    def metrics(**flip):
        backend = load_backend("onnxruntime", served.face_model, **flip)
        return ev.scalars(head_metrics(backend.predict(faces.images), **labels))

    single = load_backend("onnxruntime", served.face_model).predict(faces.images)
    unsure = float((single.emotion.max(axis=1) < threshold).mean())
    assert 0 < unsure < 1
    assert [r["mirrored"] for r in rows] == [0.0, unsure, 1.0]
    assert rows[0]["emotion_acc"] == metrics()["emotion_acc"] and rows[0]["age_mae"] == pytest.approx(metrics()["age_mae"])
    every, below = metrics(flip_average=True), metrics(flip_average=True, flip_confidence=threshold)
    for key in ("gender_acc", "race_acc", "emotion_acc"):
        assert rows[2][key] == every[key] and rows[1][key] == below[key], key
    assert rows[1]["age_mae"] == pytest.approx(below["age_mae"], abs=1e-4)
    assert f"| {threshold:g} | {100 * unsure:.1f} |" in ev.render_flip_sweep("m", rows, "test", "dataset", markdown=True)
