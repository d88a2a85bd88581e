"""Fixtures of the model tests: the accuracy floors, a fixed subset of real test faces and tiny training sets."""

from __future__ import annotations

import json

import pytest
from .model_files import FLOOR_FILE


@pytest.fixture(scope="session")
def accuracy_floor() -> dict:
    assert FLOOR_FILE.exists(), f"{FLOOR_FILE} missing: it holds the accuracy thresholds of the committed model"
    return json.loads(FLOOR_FILE.read_text())


@pytest.fixture(scope="module")
def tiny_sets(shared_data):
    """96 training and 64 validation faces (fixed seed) for runs of a few steps."""
    import numpy as np

    from footfall_training.data import load_split

    rng = np.random.default_rng(0)
    train = load_split("train", data_dir=shared_data)
    val = load_split("val", data_dir=shared_data)
    return train.subset(rng.permutation(len(train))[:96]), val.subset(rng.permutation(len(val))[:64])


@pytest.fixture(scope="session")
def test_subset(shared_data, accuracy_floor):
    """The fixed-seed subset of test faces (both datasets) the floors were measured on."""
    from footfall_training.evaluate import load_test_faces

    faces, _ = load_test_faces("dataset", limit=accuracy_floor["faces_per_dataset"], seed=accuracy_floor["seed"])
    return faces


def with_varied_outputs(net):
    """``net`` (random init) in eval mode, made to answer differently for different faces.

    A freshly initialised net answers the same for every input (BatchNorm statistics 0/1, tiny head
    weights, zero-initialised residual branches); give it data-driven statistics, non-zero BatchNorm
    scales and larger heads so that the outputs vary with the face and comparisons between formats
    mean something.
    """
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the batches below
                if not m.weight.any():  # e.g. the attention block's output, zero at init
                    torch.nn.init.uniform_(m.weight, 0.5, 1.0)
        net.train()
        for _ in range(3):
            net(torch.randn(16, 3, 112, 112))
        for head in (net.age_head, net.gender_head, net.race_head, net.emotion_head):
            torch.nn.init.normal_(head.weight, 0.0, 3.0 / head.in_features ** 0.5)
    return net.eval()


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A random-init FaceNet (width 0.25, fast), saved as a training checkpoint and exported to ONNX FP32."""
    import torch

    from footfall_training.export import export_onnx
    from footfall_training.network import FaceNet

    torch.manual_seed(0)
    net = with_varied_outputs(FaceNet(width=0.25))
    root = tmp_path_factory.mktemp("random_model")
    pt = root / "random.pt"
    torch.save({"ema": net.state_dict(), "config": {"width": 0.25}, "epoch": 0}, pt)
    onnx_path = export_onnx(net, root / "random.onnx", version="test")
    return net, pt, onnx_path


@pytest.fixture(scope="session")
def yunet_detector(models_dir):
    """YuNet configured like the ingest worker (``models_dir``: the shared fixture of tests/conftest.py)."""
    from footfall_training.pipeline_crops import make_detector

    return make_detector()
