"""The half of the RKNN conversion that runs inside the rknn-toolkit2 venv (``footfall_training.rknn_convert``
runs this file by path with that venv's python, ``python -I``, so neither the project's packages nor this
folder's modules are on its path).

It imports only numpy, onnx and ``rknn.api``, never the footfall packages: rknn-toolkit2 pins old
numpy/onnx/protobuf. It builds INT8 for rk3588 with the ONNX metadata's mean/std in ``RKNN.config``
(so the NPU takes uint8 NHWC RGB and normalizes itself), calibrated on faces written as .npy files
into a temporary folder that is deleted afterwards; parses the build's layer table for the placement
of every operator; exports the ``.rknn``; and, for ``simulate``, runs faces through the simulator. The
simulator cannot run a loaded ``.rknn``, so it always runs the model it has just built from the ONNX.
Its inputs (ONNX path, metadata JSON, calibration .npy, faces .npy) and outputs (report.json,
predictions.npz, build.log) are files in the work folder the command half gives it.

The pure parts (log parsers, calibration files) are imported by the command half and the tests too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TARGET_PLATFORM = "rk3588"
# Pseudo-operators that move the input/output buffers; rknn always lists them on the CPU.
IO_OPERATORS = frozenset({"InputOperator", "OutputOperator"})
ALGORITHMS = ("normal", "mmse", "kl_divergence")
# Outputs whose last layers stay in float16 (still on the NPU). Age is the expectation over a
# softmax of 101 years: in INT8 the many small probabilities are rounded away, which moved the
# age by 1.8 years on average from FP32 on the test split (0.24 years with a float16 tail).
FLOAT16_TAILS = ("age",)


@dataclass(frozen=True)
class OpPlacement:
    """One row of the layer table rknn prints when building: which unit runs the operator, and the
    compiler's own cost estimate for it (clock cycles of memory traffic, of the NPU's compute, and
    their maximum, the layer's estimated time; kilobytes read and written)."""

    index: int
    op_type: str
    dtype: str
    target: str  # NPU / CPU (/ GPU)
    name: str
    inputs: str = ""  # shapes as rknn prints them: "(1,16,56,56),(8,16,1,1),(8)"
    output: str = ""
    cycles_ddr: int = 0
    cycles_npu: int = 0
    cycles: int = 0
    rw_kb: int = 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of a convolution (the NPU runs the linear heads as 1x1 convolutions
        too), from its weight and output shapes; 0 for other operators.

        >>> OpPlacement(5, "ConvClip", "INT8", "NPU", "c", "(1,48,56,56),(1,48,3,3),(48)", "(1,48,28,28)").macs
        338688
        """
        shapes = re.findall(r"\(([\d,]+)\)", self.inputs)
        out = re.findall(r"\(([\d,]+)\)", self.output)
        if not self.op_type.startswith("Conv") or len(shapes) < 2 or not out:
            return 0
        data, weight, output = ([int(v) for v in shape.split(",")] for shape in (shapes[0], shapes[1], out[0]))
        if len(weight) != 4 or len(output) != 4:
            return 0
        # rknn prints depthwise weights as (1, C, kh, kw): one kh x kw filter per output channel.
        depthwise = weight[0] == 1 and weight[1] == output[1] == data[1] > 1
        return int(np.prod(output)) * (weight[2] * weight[3] if depthwise else int(np.prod(weight[1:])))


_LAYER_ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(NPU|CPU|GPU)\s+.*\s(\S+)\s*$")
_LAYER_COST = re.compile(r"\s(\S+)\s+(\S+)\s+(\d+)/(\d+)/(\d+)\s+(\d+)\s+\S+\s*$")


def parse_layer_table(log_text: str) -> list[OpPlacement]:
    """Operators of the last "Network Layer Information Table" in a verbose rknn build log.

    >>> row = ("D RKNN: [01:02:03.004] 53   Conv     INT8     NPU    (1,1280,4,4),(1,1280,4,4),(1280)  "
    ...        "(1,1280,1,1)  2219/5120/5120  50  Conv:/net/gdc/gdc.0/Conv")
    >>> op, = parse_layer_table("D RKNN: [x] Network Layer Information Table\\n" + row)
    >>> op.index, op.op_type, op.dtype, op.target, op.name
    (53, 'Conv', 'INT8', 'NPU', 'Conv:/net/gdc/gdc.0/Conv')
    >>> op.cycles_ddr, op.cycles_npu, op.cycles, op.rw_kb, op.macs
    (2219, 5120, 5120, 50, 20480)
    """
    ops: list[OpPlacement] = []
    in_table = False
    for line in log_text.splitlines():
        if "Network Layer Information Table" in line:
            ops, in_table = [], True  # keep only the last table (rknn may print one per compile pass)
            continue
        if not in_table:
            continue
        match = _LAYER_ROW.match(line.strip())
        if match:
            index, op_type, dtype, target, name = match.groups()
            cost = _LAYER_COST.search(line)
            extra = {} if cost is None else dict(
                inputs=cost[1], output=cost[2], cycles_ddr=int(cost[3]), cycles_npu=int(cost[4]),
                cycles=int(cost[5]), rw_kb=int(cost[6]))
            ops.append(OpPlacement(int(index), op_type, dtype, target, name, **extra))
        elif ops and line.rstrip().endswith("---"):
            in_table = False  # the table's closing rule; memory tables follow
    return ops


def cpu_fallbacks(ops: list[OpPlacement]) -> list[OpPlacement]:
    """Operators placed anywhere but the NPU, apart from the input/output plumbing."""
    return [op for op in ops if op.target != "NPU" and op.op_type not in IO_OPERATORS]


@contextmanager
def native_output_to(path: Path):
    """Send file descriptors 1 and 2 to ``path``: rknn's compiler (C++) logs there, bypassing sys.stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def load_onnx_graph(onnx_path: Path, outputs: list[str]):
    """The ONNX model (weights included) and its input name; ``outputs`` (the metadata's) must be graph outputs."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph_outputs = [o.name for o in model.graph.output]
    missing = [name for name in outputs if name not in graph_outputs]
    if missing:
        raise ValueError(f"{onnx_path}: outputs {missing} named in the metadata are not graph outputs {graph_outputs}")
    return model, model.graph.input[0].name


def tail_tensors(model, output: str) -> list[str]:
    """ONNX tensors from a graph output back to (and including) the linear layer that feeds it.

    For ``age`` that is Gemm (age head) -> Softmax over 101 years -> Mul by the years -> ReduceSum.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    tensors, pending = [], [output]
    while pending:
        tensor = pending.pop()
        node = producers.get(tensor)
        if node is None or node.op_type == "Constant" or tensor in tensors:
            continue  # a graph input, a weight or a constant (e.g. the years 0..100)
        tensors.append(tensor)
        if node.op_type not in ("Gemm", "MatMul", "Conv"):
            pending.extend(i for i in node.input if i)
    return tensors


_CFG_ENTRY = re.compile(r"^    (\S+):\n(?:        .*\n)*?        dtype: (\S+)$", re.M)


def float16_layers(cfg_text: str, tensors: list[str]) -> list[str]:
    r"""The INT8 tensors of rknn's hybrid quantization config that stem from ``tensors`` (rknn renames
    them with suffixes such as ``_mm``, ``-rs``, ``_int8`` when it fuses operators).

    >>> cfg = ("quantize_parameters:\n    /net/Softmax_output_0-rs:\n        qtype: asym\n        dtype: int8\n"
    ...        "    age:\n        qtype: asym\n        dtype: float32\n    age_int8:\n        dtype: int8\n"
    ...        "    /net/gdc/Conv_output_0:\n        dtype: int8\n")
    >>> float16_layers(cfg, ["age", "/net/Softmax_output_0"])
    ['/net/Softmax_output_0-rs', 'age_int8']
    """
    return [name for name, dtype in _CFG_ENTRY.findall(cfg_text) if dtype == "int8"
            and any(name == t or name.startswith((t + "_", t + "-")) for t in tensors)]


def write_calibration_set(faces: np.ndarray, folder: Path) -> Path:
    """uint8 NHWC faces as one NCHW .npy per face + the dataset.txt listing them (rknn's input format).

    rknn applies the config mean/std to .npy calibration data as it does to images; NCHW is
    the layout it expects for .npy (measured: quantization identical to PNG files of the faces).
    """
    lines = []
    for i, face in enumerate(faces):
        path = folder / f"face_{i:05d}.npy"
        np.save(path, np.ascontiguousarray(face.transpose(2, 0, 1)[None]))
        lines.append(str(path))
    listing = folder / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


_ERROR_ROW = re.compile(r"^\[(\w+)\]\s+(\S+)\s+([\d.]+)\s*\|\s*([\d.]+)\s+([\d.]+)\s*\|\s*([\d.]+)")


def parse_error_analysis(text: str) -> list[dict]:
    """Per-layer cosine similarity INT8 simulator vs float ("entire": accumulated up to the layer,
    "single": the layer alone on float inputs) from rknn's ``error_analysis.txt``.

    >>> parse_error_analysis("[Conv] /net/gdc/gdc.0/Conv_output_0   0.98983 | 2.03277   0.99964 | 0.38206")
    [{'op_type': 'Conv', 'name': '/net/gdc/gdc.0/Conv_output_0', 'entire_cos': 0.98983, 'single_cos': 0.99964}]
    """
    rows = []
    for line in text.splitlines():
        match = _ERROR_ROW.match(line.strip())
        if match:
            op_type, name, entire_cos, _, single_cos, _ = match.groups()
            rows.append({"op_type": op_type, "name": name, "entire_cos": float(entire_cos),
                         "single_cos": float(single_cos)})
    return rows


def layer_errors(rknn, faces: np.ndarray, workdir: Path, log_path: Path) -> list[dict]:
    """rknn.accuracy_analysis over ``faces`` (one call each), cosine similarities averaged per layer.

    The snapshots (every layer's tensors of the face) are deleted right after parsing."""
    import shutil

    sums: dict[str, dict] = {}
    for i, face in enumerate(faces):
        npy, snapshot = workdir / f"analyse_{i}.npy", workdir / f"snapshot_{i}"
        np.save(npy, np.ascontiguousarray(face.transpose(2, 0, 1)[None]))
        try:
            with native_output_to(log_path):
                _check(rknn.accuracy_analysis(inputs=[str(npy)], output_dir=str(snapshot)), "accuracy_analysis")
            for row in parse_error_analysis((snapshot / "error_analysis.txt").read_text()):
                acc = sums.setdefault(row["name"], {**row, "entire_cos": 0.0, "single_cos": 0.0})
                acc["entire_cos"] += row["entire_cos"] / len(faces)
                acc["single_cos"] += row["single_cos"] / len(faces)
        finally:
            npy.unlink(missing_ok=True)
            shutil.rmtree(snapshot, ignore_errors=True)
    return [{**r, "entire_cos": round(r["entire_cos"], 5), "single_cos": round(r["single_cos"], 5)}
            for r in sums.values()]


def _check(ret: int, step: str) -> None:
    if ret != 0:
        raise RuntimeError(f"rknn {step} failed (returned {ret}); see the build log")


def build_rknn(onnx_path: Path, meta: dict, calibration_faces: np.ndarray, workdir: Path, log_path: Path,
               algorithm: str = "normal", float16_tails: tuple[str, ...] = FLOAT16_TAILS):
    """Build the INT8 model from ONNX (whose metadata ``meta`` the command half read) in rknn-toolkit2
    (with the tails of ``float16_tails`` outputs in float16, on the NPU too); returns
    (RKNN object, ops, float16 tensor names, seconds)."""
    from rknn.api import RKNN

    model, input_name = load_onnx_graph(onnx_path, list(meta["outputs"]))
    size = int(meta["input_size"])
    if calibration_faces.shape[1:] != (size, size, 3) or calibration_faces.dtype != np.uint8:
        raise ValueError(f"calibration faces must be (N, {size}, {size}, 3) uint8, got "
                         f"{calibration_faces.shape} {calibration_faces.dtype}")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="calib-", dir=workdir) as calib_dir, native_output_to(log_path):
        dataset = write_calibration_set(calibration_faces, Path(calib_dir))
        rknn = RKNN(verbose=True)  # verbose: the layer table with each operator's NPU/CPU placement
        _check(rknn.config(mean_values=[list(meta["mean"])], std_values=[list(meta["std"])],
                           target_platform=TARGET_PLATFORM, quantized_dtype="w8a8", quantized_algorithm=algorithm,
                           quantized_method="channel",
                           # Drops the output Reshapes that would otherwise run on the CPU; the backend
                           # flattens each output itself.
                           remove_reshape=True), "config")
        # Batch 1: the exported graph has a dynamic batch axis, rknn needs a fixed shape. ``outputs``
        # fixes the output order to the metadata's, which the board backend relies on.
        _check(rknn.load_onnx(str(onnx_path), inputs=[input_name], input_size_list=[[1, 3, size, size]],
                              outputs=list(meta["outputs"])), "load_onnx")
        layers: list[str] = []
        if not float16_tails:
            _check(rknn.build(do_quantization=True, dataset=str(dataset)), "build")
        else:
            # Hybrid quantization: step 1 calibrates and writes <model>.quantization.cfg into the cwd
            # (workdir); the tails listed there as float16 are compiled in float16 by step 2.
            _check(rknn.hybrid_quantization_step1(dataset=str(dataset)), "hybrid_quantization_step1")
            rknn.release()
            cfg = next(workdir.glob("*.quantization.cfg"))
            text = cfg.read_text()
            tensors = [t for output in float16_tails for t in tail_tensors(model, output)]
            layers = float16_layers(text, tensors)
            if not layers or "custom_quantize_layers: {}" not in text:
                raise RuntimeError(f"no INT8 tensors of the {float16_tails} tail(s) {tensors} found in {cfg.name}")
            cfg.write_text(text.replace("custom_quantize_layers: {}", "custom_quantize_layers:\n" + "".join(
                f"    {name}: float16\n" for name in layers), 1))
            stem = str(cfg).removesuffix(".quantization.cfg")  # step 1 also wrote <stem>.model and <stem>.data
            rknn = RKNN(verbose=True)
            _check(rknn.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                                  model_quantization_cfg=str(cfg)), "hybrid_quantization_step2")
    seconds = time.time() - t0
    ops = parse_layer_table(log_path.read_text(errors="replace"))
    if not ops:
        raise RuntimeError(f"no layer table found in the build log {log_path}")
    return rknn, ops, layers, seconds


def export_rknn(rknn, out_path: Path, log_path: Path) -> None:
    """Write the .rknn (the command half writes its metadata sidecar)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with native_output_to(log_path):
        _check(rknn.export_rknn(str(out_path)), "export_rknn")


def simulate_rknn(rknn, faces: np.ndarray, log_path: Path) -> tuple[list[np.ndarray], float]:
    """Outputs (batch first, metadata order) of uint8 NHWC faces in the simulator, one face at a time."""
    with native_output_to(log_path):
        _check(rknn.init_runtime(), "init_runtime (simulator)")
        t0 = time.time()
        per_face = []
        for i in range(len(faces)):
            outputs = rknn.inference(inputs=[faces[i:i + 1]], data_format="nhwc")
            if outputs is None:
                raise RuntimeError(f"simulator inference failed on face {i}")
            per_face.append(outputs)
        seconds = time.time() - t0
    n_out = len(per_face[0]) if per_face else 0
    return [np.concatenate([f[k].reshape(1, -1) for f in per_face]).astype(np.float32) for k in range(n_out)], seconds


def worker_main(argv: list[str]) -> int:
    """The rknn venv side: build, optionally export and simulate; write report.json (+ predictions.npz)."""
    parser = argparse.ArgumentParser(prog="rknn_worker.py")
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True, help="the ONNX model's metadata as JSON")
    parser.add_argument("--calibration", type=Path, required=True, help=".npy of uint8 NHWC training faces")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (rknn writes debug files to cwd)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="normal")
    parser.add_argument("--out", type=Path, help="export the .rknn (+ .rknn.json) here")
    parser.add_argument("--faces", type=Path, help=".npy of uint8 NHWC faces to run in the simulator")
    parser.add_argument("--fail-on-cpu-ops", action="store_true", help="exit 3 without exporting on CPU fallbacks")
    parser.add_argument("--layer-error-faces", type=int, default=0,
                        help="run rknn.accuracy_analysis (per-layer INT8 error) on this many of --faces")
    parser.add_argument("--float16-tail", action="append", help="output whose tail stays float16 (repeatable; "
                        f"default {','.join(FLOAT16_TAILS)}; 'none' for all INT8)")
    args = parser.parse_args(argv)
    tails = tuple(t for t in (args.float16_tail or FLOAT16_TAILS) if t != "none")
    workdir = args.workdir.resolve()
    os.chdir(workdir)
    log_path = workdir / "build.log"
    report: dict = {"onnx": str(args.onnx), "target_platform": TARGET_PLATFORM, "algorithm": args.algorithm}
    try:
        from importlib.metadata import version

        report["rknn_toolkit2"] = version("rknn-toolkit2")
        calibration = np.load(args.calibration)
        report["calibration_faces"] = len(calibration)
        meta = json.loads(args.metadata.read_text())
        rknn, ops, report["float16_layers"], report["build_seconds"] = build_rknn(
            args.onnx.resolve(), meta, calibration, workdir, log_path, args.algorithm, tails)
        report["float16_tails"] = list(tails)
        report["ops"] = [asdict(op) for op in ops]
        report["cpu_fallbacks"] = [asdict(op) for op in cpu_fallbacks(ops)]
        if report["cpu_fallbacks"] and args.fail_on_cpu_ops:
            _write_report(workdir, report)
            return 3
        if args.out:
            export_rknn(rknn, args.out.resolve(), log_path)
            report["rknn"] = str(args.out)
        faces = np.load(args.faces) if args.faces else None
        if faces is not None and args.layer_error_faces:
            t0 = time.time()
            report["layer_errors"] = layer_errors(rknn, faces[:args.layer_error_faces], workdir, log_path)
            report["layer_error_faces"] = len(faces[:args.layer_error_faces])
            report["layer_error_seconds"] = time.time() - t0
        if faces is not None:
            outputs, report["simulate_seconds"] = simulate_rknn(rknn, faces, log_path)
            np.savez(workdir / "predictions.npz", **dict(zip(meta["outputs"], outputs)))
        rknn.release()
    except Exception as exc:  # noqa: BLE001 - reported to the caller with the log's tail
        report["error"] = f"{type(exc).__name__}: {exc}"
        _write_report(workdir, report)
        return 2
    _write_report(workdir, report)
    return 0


def _write_report(workdir: Path, report: dict) -> None:
    (workdir / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
