"""The committed model converted to RKNN INT8 for rk3588, run in rknn-toolkit2's simulator.

One worker run in the rknn venv (``footfall_training.rknn_convert.simulate``) builds the INT8
model from the committed FP32 ONNX, exports it with its sidecar, and simulates real test
faces; the test then checks real numbers against ONNX Runtime FP32 on the same uint8 faces:
preprocessing on the NPU (mean/std from the metadata, RGB, NHWC uint8 in) must match the ONNX
path, INT8 must follow FP32, and every operator (the global depthwise convolution included)
must run on the NPU.

Calibration uses test faces outside the scored subset (the real ``convert`` command uses
training faces; calibration needs no labels, and this keeps the test from decoding the
1.6 GB training split).

Thresholds: absolute floors with margins below what was measured on these 200 faces, plus a
relative check against the committed ONNX Runtime INT8 model that holds for any checkpoint.
Measured (RKNN vs FP32: age mean |diff| / max, agreement gender, race, emotion; ONNX Runtime
INT8 in brackets):
- interim w050 (epoch 1): 0.47 / 4.5 y, 95.5 %, 98.5 %, 92.5 % (0.58 / 4.0 y, 95.0, 96.5, 93.0 %)
- w050 epoch 2: 0.22 / 1.6 y, 99.5 %, 99.0 %, 99.5 % (0.31 / 1.8 y, 99.0, 98.0, 96.5 %)
- w050 epoch 2 with an all-INT8 age tail: 0.49 / 10.7 y -> fails the relative check.
``pytest tests/npu -s`` prints the figures, to re-tighten the floors after a model update.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from footfall.model_file import ModelMetadata
from footfall_training.rknn_convert import IO_OPERATORS, simulate

REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FACES_PER_DATASET = 100
CALIBRATION_FACES = 128


@pytest.fixture(scope="module")
def simulated(rknn_venv, fp32_model, shared_data, tmp_path_factory):
    from footfall_training.evaluate import load_test_faces, sample_per_dataset

    faces, _ = load_test_faces("dataset", limit=FACES_PER_DATASET, seed=1)
    everything, _ = load_test_faces("dataset")
    # calibration: other test faces than the scored ones (a different seed, scored rows removed)
    scored = set(sample_per_dataset(everything.dataset, FACES_PER_DATASET, seed=1).tolist())
    rest = np.array([i for i in range(len(everything)) if i not in scored])
    calibration = everything.images[np.random.default_rng(2).choice(rest, CALIBRATION_FACES, replace=False)]
    out = tmp_path_factory.mktemp("rknn") / "model.rknn"
    t0 = time.time()
    int8 = fp32_model.with_name(fp32_model.name.replace(".onnx", ".int8.onnx"))
    result, predictions = simulate(fp32_model, faces, int8_onnx=int8 if int8.exists() else None,
                                   calibration=calibration, out=out, venv=rknn_venv, flip=True)
    print(json.dumps({k: v["agreement_with_fp32"] for k, v in result["formats"].items()}, indent=1))
    print(json.dumps({k: {m: v["metrics"][m] for m in ("age_mae", "gender_acc", "race_acc", "emotion_acc")}
                      for k, v in result["formats"].items()}, indent=1))
    result["test_seconds"] = time.time() - t0
    return result, predictions, faces, out


def test_every_operator_runs_on_the_npu(simulated):
    result, *_ = simulated
    ops = result["ops"]
    assert len(ops) > 20, "the layer table of the build was not parsed"
    fallbacks = [f"{op['op_type']} {op['name']}" for op in ops
                 if op["target"] != "NPU" and op["op_type"] not in IO_OPERATORS]
    assert fallbacks == [], f"operators fall back to the CPU: {fallbacks} -> change the network"
    assert result["rknn"]["cpu_fallbacks"] == []
    # the global depthwise conv replacing average pooling is an INT8 convolution on the NPU
    gdc = [op for op in ops if op["name"].startswith("Conv:/net/gdc/")]
    assert len(gdc) == 1 and gdc[0]["target"] == "NPU" and gdc[0]["dtype"] == "INT8", gdc


def test_only_the_age_tail_is_float16(simulated):
    """Age = expectation over a softmax of 101 years: its last layers stay float16 (on the NPU),
    every other convolution is INT8."""
    result, *_ = simulated
    assert result["rknn"]["float16_tails"] == ["age"]
    assert "/net/Softmax_output_0-rs" in result["rknn"]["float16_layers"]
    convs = {op["name"]: op["dtype"] for op in result["ops"] if op["op_type"].startswith("Conv")}
    float16 = sorted(name for name, dtype in convs.items() if dtype != "INT8")
    assert float16 == ["Conv:/net/ReduceSum_2conv", "Conv:/net/age_head/Gemm#2"], float16
    assert len(convs) > 50


def test_exported_model_and_sidecar(simulated, fp32_model):
    _, _, _, out = simulated
    assert out.exists() and out.stat().st_size > 100_000
    assert b'"target_platform":["rk3588"]' in out.read_bytes().replace(b" ", b"")
    sidecar = ModelMetadata.from_sidecar(out)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(fp32_model), load_external_data=False).metadata_props}
    onnx_meta = ModelMetadata.from_json(props["footfall"])
    assert sidecar.precision == "int8"
    # everything the preprocessing and the label mapping depend on is the ONNX model's own
    assert {**sidecar.__dict__, "precision": "fp32"} == onnx_meta.__dict__


def test_simulated_outputs_are_well_formed(simulated):
    _, predictions, faces, _ = simulated
    p = predictions["rknn-int8-sim"]
    n = len(faces)
    assert p.age.shape == (n,) and p.gender.shape == (n,) and p.race.shape == (n, 5) and p.emotion.shape == (n, 7)
    np.testing.assert_allclose(p.race.sum(1), 1, atol=0.02)
    np.testing.assert_allclose(p.emotion.sum(1), 1, atol=0.02)
    assert p.age.std() > 1.0 and len(np.unique(p.emotion.argmax(1))) > 1, "outputs do not depend on the face"


def test_rknn_int8_follows_onnx_fp32_on_the_same_faces(simulated):
    result, predictions, _, _ = simulated
    agree = result["formats"]["rknn-int8-sim"]["agreement_with_fp32"]
    # floors: see the module docstring for the measured figures
    assert agree["age_abs_diff"] <= 1.0, agree
    assert agree["gender_agree"] >= 0.93, agree
    assert agree["race_agree"] >= 0.92, agree
    assert agree["emotion_agree"] >= 0.90, agree
    # correlation of the continuous outputs (a wrong mean/std or channel order breaks it)
    fp32, sim = predictions["onnx-fp32"], predictions["rknn-int8-sim"]
    assert np.corrcoef(fp32.age, sim.age)[0, 1] > 0.97
    assert np.corrcoef(fp32.gender, sim.gender)[0, 1] > 0.95


def test_rknn_int8_follows_fp32_about_as_closely_as_onnx_runtime_int8(simulated, int8_model):
    """Relative to the CPU INT8 model on the same faces, so it holds for any checkpoint."""
    result, *_ = simulated
    rknn = result["formats"]["rknn-int8-sim"]["agreement_with_fp32"]
    ort = result["formats"]["onnx-int8"]["agreement_with_fp32"]
    assert rknn["age_abs_diff"] <= ort["age_abs_diff"] + 0.3, (rknn, ort)
    # no face far off: an all-INT8 age tail clipped some faces by 10 years (measured)
    assert rknn["age_abs_diff_max"] <= ort["age_abs_diff_max"] + 2.0, (rknn, ort)
    for key in ("gender_agree", "race_agree", "emotion_agree"):
        assert rknn[key] >= ort[key] - 0.03, (key, rknn, ort)


def test_rknn_int8_accuracy_close_to_fp32(simulated):
    result, *_ = simulated
    fp32 = result["formats"]["onnx-fp32"]["metrics"]
    sim = result["formats"]["rknn-int8-sim"]["metrics"]
    assert sim["age_mae"] <= fp32["age_mae"] + 0.5, (sim, fp32)
    for head in ("gender_acc", "race_acc", "emotion_acc"):
        assert sim[head] >= fp32[head] - 0.04, (head, sim[head], fp32[head])  # 100 faces: 1 face = 1 point


def test_flip_averaged_rknn_follows_flip_averaged_fp32(simulated):
    """Every face flip-averaged on the NPU (FOOTFALL_FLIP_CONFIDENCE=1): the simulator's faces and mirror images."""
    result, predictions, faces, _ = simulated
    sim, fp32 = predictions["rknn-int8-sim + flip"], predictions["onnx-fp32 + flip"]
    assert len(sim) == len(faces) == len(predictions["rknn-int8-sim"])
    # the mean of two different answers: not the single pass's
    assert not np.allclose(sim.emotion, predictions["rknn-int8-sim"].emotion, atol=1e-3)
    agree = result["formats"]["rknn-int8-sim + flip"]["agreement_with_fp32"]  # against FP32 flip-averaged
    assert agree["age_abs_diff"] <= 1.0 and agree["gender_agree"] >= 0.93, agree
    assert agree["race_agree"] >= 0.92 and agree["emotion_agree"] >= 0.90, agree
    assert np.corrcoef(fp32.age, sim.age)[0, 1] > 0.97
    for head in ("gender_acc", "race_acc", "emotion_acc"):
        got, want = (result["formats"][k]["metrics"][head] for k in ("rknn-int8-sim + flip", "onnx-fp32 + flip"))
        assert got >= want - 0.04, (head, got, want)


def test_setup_script_is_idempotent_and_fast(rknn_venv):
    env = {**os.environ, "FOOTFALL_RKNN_VENV": str(rknn_venv)}
    t0 = time.time()
    proc = subprocess.run([str(REPO_SCRIPTS / "setup_rknn_venv.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(rknn_venv)
    assert "up to date" in proc.stderr
    assert time.time() - t0 < 5


def test_report_is_json_serialisable(simulated):
    result, *_ = simulated
    json.dumps(result)
    assert result["rknn"]["target_platform"] == "rk3588" and result["rknn"]["calibration_faces"] == CALIBRATION_FACES


def test_an_emotion_bias_reaches_the_npu_model(rknn_venv, fp32_model, shared_data, tmp_path):
    """``footfall-export --emotion-bias``: the RKNN model converted from the biased ONNX adds the
    bias as the ONNX models do (logit adjustment, footfall_training.logit_adjust), and its sidecar
    records it."""
    import torch

    from footfall.labels import EMOTIONS
    from footfall_training.evaluate import load_predictor, load_test_faces
    from footfall_training.export import export_onnx, set_emotion_bias
    from footfall_training.logit_adjust import emotion_bias, model_emotion_bias, training_prior
    from footfall_training.train import load_checkpoint

    checkpoint = fp32_model.with_suffix(".pt")
    net = load_checkpoint(checkpoint)
    # a strong bias (tau 1 from the model's raw logits), so that many decisions move
    bias = torch.from_numpy(emotion_bias(training_prior(), 1.0)).float()
    set_emotion_bias(net, torch.load(checkpoint, weights_only=False), bias)
    biased = export_onnx(net, tmp_path / "biased.onnx", version="biased")
    faces, _ = load_test_faces("dataset", limit=60, seed=3)
    faces = faces.subset(np.flatnonzero(faces.emotion >= 0))  # the FER+ faces
    result, predictions = simulate(biased, faces, calibration=faces.images, out=tmp_path / "biased.rknn",
                                   venv=rknn_venv)
    assert ModelMetadata.from_sidecar(tmp_path / "biased.rknn").emotion_bias == pytest.approx(bias.tolist())
    raw = load_predictor(fp32_model)[0](faces.images).emotion
    shifted = raw * np.exp(bias.numpy() - model_emotion_bias(fp32_model))
    want = shifted / shifted.sum(1, keepdims=True)
    np.testing.assert_allclose(predictions["onnx-fp32"].emotion, want, atol=1e-4)  # ONNX FP32 carries it
    moved = want.argmax(1) != raw.argmax(1)
    assert moved.sum() >= 3, "the bias should move some decisions"
    sim = predictions["rknn-int8-sim"].emotion.argmax(1)
    assert (sim == want.argmax(1)).mean() >= 0.85  # the NPU follows the biased model ...
    assert (sim[moved] == want.argmax(1)[moved]).mean() >= 0.7  # ... where the bias changed the answer
    assert (sim == EMOTIONS.index("neutral")).mean() < (raw.argmax(1) == EMOTIONS.index("neutral")).mean()
