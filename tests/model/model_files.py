"""Where the model tests find the committed model files (imported by the tests of this folder)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The committed models; FOOTFALL_TEST_MODEL_DIR points the tests at another export (e.g. /tmp/mc).
MODEL_DIR = Path(os.environ.get("FOOTFALL_TEST_MODEL_DIR", REPO / "model"))
FLOOR_FILE = MODEL_DIR / "accuracy_floor.json"


def committed_onnx() -> list[Path]:
    return sorted(p for p in MODEL_DIR.glob("*.onnx") if not p.name.endswith(".prep.onnx"))


def fp32_int8_pairs() -> list[tuple[Path, Path]]:
    """(FP32, INT8) files of the same model: ``x.onnx`` and ``x.int8.onnx``."""
    pairs = []
    for int8 in MODEL_DIR.glob("*.int8.onnx"):
        fp32 = int8.with_name(int8.name.replace(".int8.onnx", ".onnx"))
        if fp32.exists():
            pairs.append((fp32, int8))
    return sorted(pairs)
