"""Emotion logit adjustment (footfall_training.logit_adjust) on the committed model's predictions
for real FER+ validation faces, and the bias file it writes for ``footfall-export --emotion-bias``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from footfall.labels import EMOTIONS
from footfall_training import logit_adjust as la

from .model_files import MODEL_DIR

INT8 = MODEL_DIR / "footfall_w050.int8.onnx"
NEUTRAL = EMOTIONS.index("neutral")


@pytest.fixture(scope="module")
def fer_val(shared_data):
    """The committed INT8 model's predictions on 400 FER+ validation faces and their mirror images."""
    from footfall_training.data import load_split
    from footfall_training.evaluate import load_predictor

    faces = load_split("val")
    fer = np.flatnonzero(faces.emotion >= 0)
    fer = np.sort(np.random.default_rng(0).choice(fer, 400, replace=False))
    predictor, _ = load_predictor(INT8, threads=1)
    images = faces.images[fer]
    return images, predictor, la.EmotionFaces("FER+ val", predictor(images).emotion,
                                              predictor(np.ascontiguousarray(images[:, :, ::-1])).emotion,
                                              faces.emotion[fer].astype(int))


def test_the_prior_is_the_fer_training_labels_share(shared_data):
    prior = la.training_prior()
    assert prior.shape == (len(EMOTIONS),) and prior.sum() == pytest.approx(1.0)
    # FER+'s training labels: neutral and happy most frequent, disgust the rarest.
    assert prior.argmax() == NEUTRAL and prior.argmin() == EMOTIONS.index("disgust")


def test_adjustment_moves_decisions_away_from_the_frequent_class(fer_val):
    images, predictor, faces = fer_val
    prior = la.training_prior()
    carried = la.model_emotion_bias(INT8)
    # tau as shipped reproduces the served model's own decisions (single pass and flip-averaged).
    shipped_tau = next((t for t in np.arange(0, 1.01, 0.05) if np.allclose(la.emotion_bias(prior, t), carried,
                                                                            atol=1e-4)), None)
    assert shipped_tau is not None, f"the committed model's bias {carried} is not -tau*log(prior) for a tau"
    served = predictor(images).emotion.argmax(1)
    assert (faces.decisions(la.emotion_bias(prior, shipped_tau) - carried, flip=False) == served).all()
    results = {r["tau"]: r["sets"]["FER+ val"] for r in la.sweep([faces], prior, [0.0, 0.5, 1.0], True, carried)}
    # Each step of tau calls fewer faces neutral (the most frequent training label) ...
    shares = [results[t]["predicted_neutral"] for t in (0.0, 0.5, 1.0)]
    assert shares[0] > shares[1] > shares[2]
    # ... and finds more of the rare classes' faces.
    rare = [e for e in ("angry", "fear", "sad") if e in results[0.0]["recall"]]
    assert sum(results[1.0]["recall"][e] for e in rare) > sum(results[0.0]["recall"][e] for e in rare)


def test_the_sweep_writes_a_bias_that_footfall_export_reads(shared_data, tmp_path, capsys):
    from footfall_training.export import read_emotion_bias

    out = tmp_path / "bias.json"
    assert la.main(["sweep", str(INT8), "--flip", "--tau", "0,0.25,0.5", "--limit", "150", "--threads", "1",
                    "--pick", "0.25", "--write-bias", str(out), "--json",
                    str(tmp_path / "sweep.json")]) == 0
    written = json.loads(out.read_text())
    assert written["tau"] == 0.25 and set(written["measured"]) == {"FER+ val", "FER+ test"}
    np.testing.assert_allclose(read_emotion_bias(out).numpy(), la.emotion_bias(la.training_prior(), 0.25), atol=1e-6)
    swept = json.loads((tmp_path / "sweep.json").read_text())["results"]
    assert [r["tau"] for r in swept] == [0.0, 0.25, 0.5]
    assert "| 0.25 |" in capsys.readouterr().out
