"""Pure parts of footfall_training.rknn_convert and its rknn_worker (no rknn venv needed).

``data/rknn_build_excerpt.log`` is real rknn-toolkit2 2.5.0 output: the layer table of a w050
build made *without* ``remove_reshape``, where the output Reshapes ran on the CPU, followed by
the feature-tensor table that must not be mistaken for operators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from footfall_training import rknn_convert
from footfall_training.rknn_convert import RknnRun, RknnToolkitMissing, default_rknn_path, rknn_venv_python
from footfall_training.rknn_worker import cpu_fallbacks, parse_error_analysis, parse_layer_table, write_calibration_set

EXCERPT = Path(__file__).parent / "data" / "rknn_build_excerpt.log"


def test_layer_table_of_a_real_build_log():
    ops = parse_layer_table(EXCERPT.read_text())
    assert [op.index for op in ops] == list(range(72))  # the operator table only, not the tensor table
    gdc = [op for op in ops if "gdc" in op.name]
    assert len(gdc) == 1 and gdc[0].target == "NPU" and gdc[0].op_type == "Conv" and gdc[0].dtype == "INT8"
    fallbacks = cpu_fallbacks(ops)
    assert {op.op_type for op in fallbacks} == {"Reshape"} and len(fallbacks) == 4
    assert {op.name for op in fallbacks} == {"Reshape:emotion-rs", "Reshape:race-rs", "Reshape:age-rs",
                                             "Reshape:gender-rs"}
    summary = RknnRun({"ops": [op.__dict__ for op in ops], "cpu_fallbacks": [op.__dict__ for op in fallbacks]},
                      None, "").placement_summary()
    assert summary.startswith("4 on CPU, 63 on NPU (input/output operators not counted)"), summary
    assert "CPU FALLBACK: Reshape Reshape:emotion-rs" in summary


def test_only_the_last_layer_table_counts():
    text = EXCERPT.read_text()
    assert len(parse_layer_table(text + "\n" + text)) == 72
    assert parse_layer_table("no table here") == []


def test_error_analysis_rows():
    rows = parse_error_analysis("[Conv] /net/features/features.0/features.0.0/Conv_output_0\n"
                                "[Clip] /net/a/Clip_output_0   0.99995 | 1.70636   0.99990 | 1.0\n")
    assert rows == [{"op_type": "Clip", "name": "/net/a/Clip_output_0", "entire_cos": 0.99995, "single_cos": 0.9999}]


def test_calibration_set_is_nchw_uint8_npy(tmp_path):
    faces = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    listing = write_calibration_set(faces, tmp_path)
    files = listing.read_text().split()
    assert len(files) == 2
    first = np.load(files[0])
    assert first.shape == (1, 3, 4, 4) and first.dtype == np.uint8
    np.testing.assert_array_equal(first[0].transpose(1, 2, 0), faces[0])


def test_missing_venv_says_how_to_create_it(tmp_path):
    with pytest.raises(RknnToolkitMissing, match="scripts/setup_rknn_venv.sh"):
        rknn_venv_python(tmp_path / "nowhere")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    with pytest.raises(RknnToolkitMissing, match="incomplete"):  # no marker: a half-made venv
        rknn_venv_python(tmp_path)
    (tmp_path / rknn_convert.VENV_MARKER).write_text("spec")
    assert rknn_venv_python(tmp_path) == tmp_path / "bin" / "python"


def test_default_rknn_path_is_next_to_the_onnx():
    assert default_rknn_path(Path("model/footfall_w050.onnx")) == Path("model/footfall_w050.rknn")


def test_convert_refuses_cpu_fallbacks_and_names_the_operator(monkeypatch, tmp_path):
    ops = parse_layer_table(EXCERPT.read_text())  # a build whose output Reshapes ran on the CPU
    report = {"ops": [op.__dict__ for op in ops], "cpu_fallbacks": [op.__dict__ for op in cpu_fallbacks(ops)]}
    seen = {}

    def fake_worker(onnx_path, calibration, **kwargs):
        seen.update(kwargs)
        return RknnRun(report, None, "")

    monkeypatch.setattr(rknn_convert, "run_worker", fake_worker)
    faces = np.zeros((2, 112, 112, 3), np.uint8)
    with pytest.raises(RuntimeError, match="fall back to the CPU.*Reshape Reshape:age-rs.*change the network"):
        rknn_convert.convert(tmp_path / "m.onnx", calibration=faces)
    assert seen["fail_on_cpu_ops"] is True and seen["out"] == tmp_path / "m.rknn"
    run = rknn_convert.convert(tmp_path / "m.onnx", calibration=faces, allow_cpu_ops=True)
    assert seen["fail_on_cpu_ops"] is False and len(run.cpu_fallbacks) == 4


def test_convert_refuses_an_int8_onnx():
    # rknn quantizes the FP32 graph itself; an INT8 ONNX is refused before the toolkit starts
    int8 = Path(__file__).parents[2] / "model" / "footfall_w050.int8.onnx"
    with pytest.raises(ValueError, match="is int8; convert the FP32 ONNX"):
        rknn_convert.fp32_metadata(int8)
    assert rknn_convert.fp32_metadata(int8.with_name("footfall_w050.onnx")).precision == "fp32"
