"""The network variants of issue 23 on the RK3588 NPU: rknn-toolkit2 builds them for rk3588 (INT8) and places
every operator on the NPU: hard-swish and squeeze-excite (HardSigmoid, Mul, GlobalAveragePool) of MobileNetV3,
the self-attention block (rknn fuses it into exSDPAttention) and the branched late stages.

Untrained weights (benchmarks/model_speed.py's export, the attention's zero-initialised output scale set to
one so that rknn cannot fold the block away); placement does not depend on the weights. About 40 s per net.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from footfall_training.network import NetConfig
from footfall_training.rknn_convert import IO_OPERATORS, run_worker

from ..support import import_file
from .conftest import REPO

speed = import_file(REPO / "benchmarks" / "model_speed.py")


@pytest.mark.parametrize("name", ["footfall-mnv3-w060", "footfall-mnv3-w060-mha-sd6"])
def test_every_operator_of_the_variant_runs_on_the_npu(rknn_venv, tmp_path, name):
    files = speed.export_random(NetConfig.from_name(name), tmp_path)
    faces = np.random.default_rng(0).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    run = run_worker(files["fp32"], faces, fail_on_cpu_ops=True, venv=rknn_venv)
    ops = [op for op in run.report["ops"] if op["op_type"] not in IO_OPERATORS]
    assert len(ops) > 50, "the layer table of the build was not parsed"
    assert [f"{op['op_type']} {op['name']}" for op in ops if op["target"] != "NPU"] == []
    assert run.cpu_fallbacks == []
    kinds = Counter(op["op_type"] for op in ops)
    # rknn fuses each activation into its convolution; squeeze-excite's scaling stays a Mul
    assert kinds["ConvHardSwish"] > 0 and kinds["ConvHardSigmoid"] > 0 and kinds["Mul"] > 0, kinds
    # one attention block per branch, each fused into one NPU operator
    assert kinds["exSDPAttention"] == (2 if "mha" in name else 0), kinds
