"""Convert the face model to an RKNN INT8 model for the RK3588 NPU, and measure it in the simulator.

rknn-toolkit2 pins old numpy/onnx/protobuf, so it lives in its own venv
(``scripts/setup_rknn_venv.sh``; path ``FOOTFALL_RKNN_VENV``). This file has two halves:

* the commands, run with the project's venv; they pick real training faces for calibration
  and test faces for measuring, then run the worker half in the rknn venv:

      python -m footfall.model.rknn_convert convert model/footfall_w050.onnx
          -> model/footfall_w050.rknn + model/footfall_w050.rknn.json (metadata sidecar, precision int8)
      python -m footfall.model.rknn_convert simulate model/footfall_w050.onnx --int8-onnx model/footfall_w050.int8.onnx
          -> head metrics of ONNX FP32, ONNX INT8 and the RKNN INT8 model in rknn-toolkit2's simulator,
             side by side, plus agreement with FP32 and where each operator runs (NPU/CPU)

* the worker (``_worker``), run *by path* with the rknn venv's python. It imports only numpy,
  onnx and ``rknn.api``, never the footfall package. It builds INT8 for rk3588 with the ONNX
  metadata's mean/std in ``RKNN.config`` (so the NPU takes uint8 NHWC RGB and normalizes
  itself), calibrated on faces written as .npy files into a temporary folder that is deleted
  afterwards; parses the build's layer table for the placement of every operator; exports
  ``.rknn`` + sidecar; and, for ``simulate``, runs faces through the simulator. The simulator
  cannot run a loaded ``.rknn``, so it always runs the model it has just built from the ONNX
  (``simulate --out`` exports that very model).

Quantization: INT8 (w8a8, per-channel weights) everywhere except the last layers of the age
head (``FLOAT16_TAILS``), which hybrid quantization keeps in float16, still on the NPU: age is the
expectation over a softmax of 101 years, and in INT8 that softmax loses its small probabilities
and its range (measured on the test split: age 1.27 years from FP32 on average, some faces 10
years; 0.25 years with the float16 tail, where ONNX Runtime INT8 is 0.31).

Any operator that rknn places on the CPU (other than the input/output plumbing) is a
fallback: ``convert`` refuses it unless ``--allow-cpu-ops``, and the report names it; the fix
is a change of the network, not of this script.

"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run by path in the rknn venv: this folder's modules (data.py, network.py...) must not shadow packages.
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import re
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the rknn venv has no footfall package: imports of it stay inside the command half
    from footfall.model.data import FaceSet
    from footfall.predictions import Predictions

TARGET_PLATFORM = "rk3588"
METADATA_KEY = "footfall"  # == footfall.inference.backends.base.METADATA_KEY (not importable in the rknn venv)
# Marker written by scripts/setup_rknn_venv.sh when the venv is complete.
VENV_MARKER = ".footfall-rknn-ready"
# Pseudo-operators that move the input/output buffers; rknn always lists them on the CPU.
IO_OPERATORS = frozenset({"InputOperator", "OutputOperator"})
ALGORITHMS = ("normal", "mmse", "kl_divergence")
# Outputs whose last layers stay in float16 (still on the NPU). Age is the expectation over a
# softmax of 101 years: in INT8 the many small probabilities are rounded away, which moved the
# age by 1.8 years on average from FP32 on the test split (0.24 years with a float16 tail).
FLOAT16_TAILS = ("age",)


# --- worker half: runs in the rknn-toolkit2 venv ------------------------------------------------

@dataclass(frozen=True)
class OpPlacement:
    """One row of the layer table rknn prints when building: which unit runs the operator."""

    index: int
    op_type: str
    dtype: str
    target: str  # NPU / CPU (/ GPU)
    name: str


_LAYER_ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(NPU|CPU|GPU)\s+.*\s(\S+)\s*$")


def parse_layer_table(log_text: str) -> list[OpPlacement]:
    """Operators of the last "Network Layer Information Table" in a verbose rknn build log.

    >>> row = ("D RKNN: [01:02:03.004] 53   Conv     INT8     NPU    (1,1280,4,4),(1,1280,4,4),(1280)  "
    ...        "(1,1280,1,1)  2219/5120/5120  50  Conv:/net/gdc/gdc.0/Conv")
    >>> parse_layer_table("D RKNN: [x] Network Layer Information Table\\n" + row)
    [OpPlacement(index=53, op_type='Conv', dtype='INT8', target='NPU', name='Conv:/net/gdc/gdc.0/Conv')]
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
            ops.append(OpPlacement(int(index), op_type, dtype, target, name))
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


def read_onnx_model_info(onnx_path: Path):
    """The model's metadata dict (ONNX metadata_props[``footfall``]), its input name and the ONNX model."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{onnx_path} has no '{METADATA_KEY}' metadata: export it with footfall-export")
    meta = json.loads(props[METADATA_KEY])
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"{onnx_path} is {meta['precision']}; convert the FP32 ONNX (rknn quantizes it itself)")
    graph_outputs = [o.name for o in model.graph.output]
    missing = [name for name in meta["outputs"] if name not in graph_outputs]
    if missing:
        raise ValueError(f"{onnx_path}: outputs {missing} named in the metadata are not graph outputs {graph_outputs}")
    return meta, model.graph.input[0].name, model


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


def build_rknn(onnx_path: Path, calibration_faces: np.ndarray, workdir: Path, log_path: Path,
               algorithm: str = "normal", float16_tails: tuple[str, ...] = FLOAT16_TAILS):
    """Build the INT8 model from ONNX in rknn-toolkit2 (with the tails of ``float16_tails`` outputs in
    float16, on the NPU too); returns (RKNN object, metadata, ops, float16 tensor names, seconds)."""
    from rknn.api import RKNN

    meta, input_name, model = read_onnx_model_info(onnx_path)
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
    return rknn, meta, ops, layers, seconds


def export_with_sidecar(rknn, meta: dict, out_path: Path, log_path: Path) -> None:
    """Write the .rknn and its ``.rknn.json`` metadata sidecar (the ONNX metadata, precision int8)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with native_output_to(log_path):
        _check(rknn.export_rknn(str(out_path)), "export_rknn")
    Path(str(out_path) + ".json").write_text(json.dumps({**meta, "precision": "int8"}) + "\n")


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
    parser = argparse.ArgumentParser(prog="rknn_convert.py _worker")
    parser.add_argument("--onnx", type=Path, required=True)
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
        rknn, meta, ops, report["float16_layers"], report["build_seconds"] = build_rknn(
            args.onnx.resolve(), calibration, workdir, log_path, args.algorithm, tails)
        report["float16_tails"] = list(tails)
        report["ops"] = [asdict(op) for op in ops]
        report["cpu_fallbacks"] = [asdict(op) for op in cpu_fallbacks(ops)]
        if report["cpu_fallbacks"] and args.fail_on_cpu_ops:
            _write_report(workdir, report)
            return 3
        if args.out:
            export_with_sidecar(rknn, meta, args.out.resolve(), log_path)
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


# --- command half: runs in the project's venv -----------------------------------------------------

class RknnToolkitMissing(RuntimeError):
    """The rknn-toolkit2 venv has not been created."""


@dataclass
class RknnRun:
    """What one worker run produced: its report, and the simulator's outputs by name (if asked)."""

    report: dict
    outputs: dict[str, np.ndarray] | None
    log_tail: str

    @property
    def cpu_fallbacks(self) -> list[dict]:
        return self.report.get("cpu_fallbacks", [])

    def placement_summary(self) -> str:
        """One line: how many operators run on each unit, and the names of any CPU fallbacks."""
        counts: dict[str, int] = {}
        for op in self.report.get("ops", []):
            if op["op_type"] not in IO_OPERATORS:
                counts[op["target"]] = counts.get(op["target"], 0) + 1
        text = ", ".join(f"{n} on {t}" for t, n in sorted(counts.items())) + " (input/output operators not counted)"
        if self.cpu_fallbacks:
            text += "; CPU FALLBACK: " + ", ".join(f"{op['op_type']} {op['name']}" for op in self.cpu_fallbacks)
        return text


def rknn_venv_python(venv: Path | None = None) -> Path:
    """The rknn venv's python, or RknnToolkitMissing saying how to create it."""
    if venv is None:
        from footfall.config import ModelSettings

        venv = ModelSettings().rknn_venv
    python = Path(venv) / "bin" / "python"
    if not (Path(venv) / VENV_MARKER).exists() or not python.exists():
        raise RknnToolkitMissing(f"the rknn-toolkit2 venv is missing or incomplete at {venv}: create it with "
                                 f"scripts/setup_rknn_venv.sh (its path is FOOTFALL_RKNN_VENV)")
    return python


def run_worker(onnx_path: Path, calibration_faces: np.ndarray, out: Path | None = None,
               faces: np.ndarray | None = None, algorithm: str = "normal", fail_on_cpu_ops: bool = False,
               layer_error_faces: int = 0, float16_tails: tuple[str, ...] = FLOAT16_TAILS,
               venv: Path | None = None, timeout_s: float = 1800) -> RknnRun:
    """Run the worker half in the rknn venv; files are exchanged in a temporary folder deleted afterwards."""
    python = rknn_venv_python(venv)
    with tempfile.TemporaryDirectory(prefix="footfall-rknn-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "calibration.npy", calibration_faces)
        cmd = [str(python), str(Path(__file__).resolve()), "_worker", "--onnx", str(Path(onnx_path).resolve()),
               "--calibration", str(tmp_path / "calibration.npy"), "--workdir", tmp, "--algorithm", algorithm]
        if out is not None:
            cmd += ["--out", str(Path(out).resolve())]
        if faces is not None:
            np.save(tmp_path / "faces.npy", np.ascontiguousarray(faces))
            cmd += ["--faces", str(tmp_path / "faces.npy")]
        if fail_on_cpu_ops:
            cmd.append("--fail-on-cpu-ops")
        if layer_error_faces:
            cmd += ["--layer-error-faces", str(layer_error_faces)]
        for tail in float16_tails or ("none",):
            cmd += ["--float16-tail", tail]
        # The project's venv must not leak into the toolkit's (numpy 2 vs 1.26).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)
        log_file = tmp_path / "build.log"
        log_tail = "\n".join((log_file.read_text(errors="replace") if log_file.exists() else "").splitlines()[-40:])
        report_file = tmp_path / "report.json"
        if not report_file.exists():
            raise RuntimeError(f"the rknn worker crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n{log_tail}")
        report = json.loads(report_file.read_text())
        if "error" in report:
            raise RuntimeError(f"the rknn worker failed: {report['error']}\n--- build log (tail) ---\n{log_tail}")
        outputs = None
        if faces is not None and (tmp_path / "predictions.npz").exists():
            with np.load(tmp_path / "predictions.npz") as npz:
                outputs = {k: npz[k] for k in npz.files}
    return RknnRun(report, outputs, log_tail)


def rknn_predictions(run: RknnRun) -> Predictions:
    """The simulator's outputs as Predictions, mapped exactly as the board backend maps them."""
    from footfall.inference.backends.rknn import outputs_to_predictions

    names = list(run.outputs)
    return outputs_to_predictions(names, [run.outputs[k] for k in names])


def default_rknn_path(onnx_path: Path) -> Path:
    """``model/footfall_w050.onnx`` -> ``model/footfall_w050.rknn``."""
    return Path(onnx_path).with_suffix(".rknn")


def _calibration_set(calibration: int | np.ndarray) -> np.ndarray:
    """``calibration`` uint8 faces as given, or that many random real training faces."""
    if isinstance(calibration, np.ndarray):
        return calibration
    from footfall.model.export import calibration_faces

    return calibration_faces(calibration)


def convert(onnx_path: Path, out: Path | None = None, calibration: int | np.ndarray = 512,
            algorithm: str = "normal", allow_cpu_ops: bool = False,
            float16_tails: tuple[str, ...] = FLOAT16_TAILS, venv: Path | None = None) -> RknnRun:
    """ONNX FP32 in, ``.rknn`` INT8 + ``.rknn.json`` out, calibrated on real faces (a count of training
    faces, or the uint8 faces themselves)."""
    out = out or default_rknn_path(onnx_path)
    run = run_worker(onnx_path, _calibration_set(calibration), out=out, algorithm=algorithm,
                     fail_on_cpu_ops=not allow_cpu_ops, float16_tails=float16_tails, venv=venv)
    if run.cpu_fallbacks and not allow_cpu_ops:
        raise RuntimeError(f"{onnx_path}: operators fall back to the CPU, nothing exported "
                           f"({run.placement_summary()}); change the network, or pass --allow-cpu-ops")
    return run


def simulate(onnx_path: Path, faces: FaceSet, int8_onnx: Path | None = None, calibration: int | np.ndarray = 512,
             algorithm: str = "normal", out: Path | None = None, layer_error_faces: int = 0,
             float16_tails: tuple[str, ...] = FLOAT16_TAILS, venv: Path | None = None,
             threads: int = 2, flip: bool = False) -> tuple[dict, dict[str, Predictions]]:
    """Head metrics of ONNX FP32, ONNX INT8 (if given) and RKNN INT8 (simulator) on ``faces``, plus agreement
    with FP32, operator placement and timings. ``out`` also exports the simulated model. ``flip`` adds
    each format flip-averaged (as the worker's ``FOOTFALL_FLIP_AVERAGE``; the simulator runs the faces
    and their mirror images in one pass), compared with FP32 flip-averaged."""
    from footfall.inference.backends.base import flip_averaged, mirror_mean, with_mirror_images
    from footfall.model.evaluate import FLIP_LABEL, load_predictor
    from footfall.model.metrics import agreement, head_metrics

    labels = dict(age=faces.age, gender=faces.gender, race=faces.race, emotion=faces.emotion)
    n = len(faces)
    sim_faces = with_mirror_images(faces.images) if flip else faces.images
    t0 = time.time()
    run = run_worker(onnx_path, _calibration_set(calibration), out=out, faces=sim_faces, algorithm=algorithm,
                     layer_error_faces=layer_error_faces, float16_tails=float16_tails, venv=venv)
    wall = time.time() - t0
    simulated = rknn_predictions(run)
    predictors = {"onnx-fp32": load_predictor(onnx_path, threads=threads)[0]}
    if int8_onnx:
        predictors["onnx-int8"] = load_predictor(int8_onnx, threads=threads)[0]
    predictions = {name: predict(faces.images) for name, predict in predictors.items()}
    predictions["rknn-int8-sim"] = simulated[:n]
    if flip:
        predictions.update({name + FLIP_LABEL: flip_averaged(predict)(faces.images)
                            for name, predict in predictors.items()})
        predictions["rknn-int8-sim" + FLIP_LABEL] = mirror_mean(simulated)
    reference = {name: predictions["onnx-fp32" + (FLIP_LABEL if name.endswith(FLIP_LABEL) else "")]
                 for name in predictions}
    return {
        "onnx": str(onnx_path),
        "faces": len(faces),
        "rknn": {k: v for k, v in run.report.items() if k not in ("ops", "layer_errors")},
        "ops": run.report["ops"],
        "layer_errors": run.report.get("layer_errors", []),
        "placement": run.placement_summary(),
        "worker_seconds": round(wall, 1),
        "formats": {name: {"metrics": head_metrics(p, **labels), "agreement_with_fp32": agreement(p, reference[name])}
                    for name, p in predictions.items()},
    }, predictions


def render_simulation(result: dict, markdown: bool = False) -> str:
    """The side-by-side table of a ``simulate`` result (accuracies in %, years for age)."""
    from footfall.model.evaluate import HEADLINE, fmt, table

    agree_cols = (("age_abs_diff", "age |diff| vs fp32"), ("gender_agree", "gender agree"),
                  ("race_agree", "race agree"), ("emotion_agree", "emotion agree"))
    rows = [[name] + [fmt(k, r["metrics"].get(k)) for k, _ in HEADLINE]
            + [fmt("mae" if "age" in k else k, r["agreement_with_fp32"][k]) for k, _ in agree_cols]
            for name, r in result["formats"].items()]
    rk = result["rknn"]
    lines = [f"{result['onnx']} on {result['faces']} test faces (accuracies and agreement in %, age in years)", "",
             table(["format"] + [t for _, t in HEADLINE] + [t for _, t in agree_cols], rows, markdown), "",
             f"RKNN {rk.get('rknn_toolkit2')} {rk['target_platform']} INT8 ({rk['algorithm']}, "
             f"{rk['calibration_faces']} calibration faces; float16 tail of {', '.join(rk['float16_tails']) or '-'}: "
             f"{', '.join(rk['float16_layers']) or '-'}): build {rk['build_seconds']:.1f} s, simulator "
             f"{rk.get('simulate_seconds', 0):.1f} s, worker total {result['worker_seconds']} s",
             f"operator placement: {result['placement']}"]
    if result.get("layer_errors"):
        worst = sorted(result["layer_errors"], key=lambda r: r["single_cos"])[:5]
        gdc = [r for r in result["layer_errors"] if "gdc" in r["name"]]
        lines.append(f"per-layer INT8 error (rknn accuracy_analysis, {rk['layer_error_faces']} faces; cosine to float, "
                     f"the layer alone / accumulated): lowest " + ", ".join(
                         f"{r['op_type']} {r['name']} {r['single_cos']:.4f}/{r['entire_cos']:.4f}" for r in worst)
                     + "".join(f"; GDC {r['name']} {r['single_cos']:.4f}/{r['entire_cos']:.4f}" for r in gdc))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        sys.exit(worker_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m footfall.model.rknn_convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("convert", "simulate"):
        p = sub.add_parser(name)
        p.add_argument("onnx", type=Path, help="the FP32 ONNX model (with footfall metadata)")
        p.add_argument("--calibration", type=int, default=512, help="real training faces for INT8 calibration")
        p.add_argument("--algorithm", choices=ALGORITHMS, default="normal", help="rknn quantized_algorithm")
        p.add_argument("--venv", type=Path, help="rknn-toolkit2 venv (default FOOTFALL_RKNN_VENV)")
        p.add_argument("--float16-tail", action="append", metavar="OUTPUT",
                       help=f"output whose last layers stay float16 on the NPU (repeatable; default "
                            f"{','.join(FLOAT16_TAILS)}; 'none': everything INT8)")
    conv = sub.choices["convert"]
    conv.add_argument("--out", type=Path, help="the .rknn to write (default: next to the ONNX)")
    conv.add_argument("--allow-cpu-ops", action="store_true", help="export even if operators fall back to the CPU")
    conv.add_argument("--report", type=Path, help="write the build report (operator placement) as JSON here")
    simu = sub.choices["simulate"]
    simu.add_argument("--int8-onnx", type=Path, help="also score this ONNX Runtime INT8 model")
    simu.add_argument("--limit", type=int, default=0, help="N random test faces of each dataset (0: all)")
    simu.add_argument("--seed", type=int, default=0)
    simu.add_argument("--out", type=Path, help="also export the simulated model as .rknn here")
    simu.add_argument("--layer-error-faces", type=int, default=4,
                      help="faces for rknn's per-layer INT8 error analysis (about 1.5 s each; 0: skip)")
    simu.add_argument("--flip", action="store_true", help="also score every format flip-averaged "
                      "(FOOTFALL_FLIP_AVERAGE; the simulator runs twice the faces)")
    simu.add_argument("--json", type=Path, help="write the results here")
    simu.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if not args.onnx.exists():
        parser.error(f"{args.onnx} not found")
    tails = tuple(t for t in (args.float16_tail or FLOAT16_TAILS) if t != "none")
    try:
        if args.command == "convert":
            t0 = time.time()
            run = convert(args.onnx, args.out, args.calibration, args.algorithm, args.allow_cpu_ops, tails, args.venv)
            if args.report:
                args.report.write_text(json.dumps(run.report, indent=1))
            out = args.out or default_rknn_path(args.onnx)
            print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out}.json in {time.time() - t0:.1f} s "
                  f"(rknn build {run.report['build_seconds']:.1f} s, {run.report['calibration_faces']} "
                  f"calibration faces)\noperator placement: {run.placement_summary()}")
        else:
            from footfall.model.evaluate import load_test_faces

            faces, _ = load_test_faces("dataset", args.limit, args.seed)
            result, _ = simulate(args.onnx, faces, args.int8_onnx, args.calibration, args.algorithm, args.out,
                                 args.layer_error_faces, tails, args.venv, flip=args.flip)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
            print(render_simulation(result, args.markdown))
    except (RknnToolkitMissing, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
