"""Fixtures of the NPU tests: the rknn-toolkit2 venv and the committed FP32 model.

Both skip with a clear reason when missing, except under ``CI=true`` where a missing
requirement fails (CI creates the venv with scripts/setup_rknn_venv.sh).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..support import missing_requirement

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("FOOTFALL_TEST_MODEL_DIR", REPO / "model"))


@pytest.fixture(scope="session")
def rknn_venv() -> Path:
    """The rknn-toolkit2 venv (FOOTFALL_RKNN_VENV), complete per its setup marker."""
    from footfall_training.rknn_convert import RknnToolkitMissing, rknn_venv_python

    try:
        return rknn_venv_python().parents[1]
    except RknnToolkitMissing as exc:
        missing_requirement(str(exc))


@pytest.fixture(scope="session")
def fp32_model() -> Path:
    """The committed FP32 ONNX model (the one the committed .rknn is converted from)."""
    candidates = sorted(p for p in MODEL_DIR.glob("*.onnx") if not p.name.endswith((".int8.onnx", ".prep.onnx")))
    if not candidates:
        missing_requirement(f"no FP32 ONNX model in {MODEL_DIR} (footfall_w050.onnx is committed there)")
    return candidates[0]


@pytest.fixture(scope="session")
def int8_model(fp32_model) -> Path:
    """The committed ONNX Runtime INT8 model next to the FP32 one."""
    path = fp32_model.with_name(fp32_model.name.replace(".onnx", ".int8.onnx"))
    if not path.exists():
        missing_requirement(f"{path} not found (the INT8 ONNX is committed next to the FP32 one)")
    return path
