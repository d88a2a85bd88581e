"""Convert the face model to an RKNN INT8 model for the RK3588 NPU, and measure it in the simulator.

rknn-toolkit2 pins old numpy/onnx/protobuf, so it lives in its own venv
(``scripts/setup_rknn_venv.sh``; path ``FOOTFALL_RKNN_VENV``). This file holds the commands, run
with the project's venv; they read the model's metadata, pick real training faces for calibration
and test faces for measuring, then run the worker (``footfall_training.rknn_worker``, by path) in
the rknn venv:

      footfall-rknn convert model/footfall_w050.onnx
          -> model/footfall_w050.rknn + model/footfall_w050.rknn.json (metadata sidecar, precision int8)
      footfall-rknn simulate model/footfall_w050.onnx --int8-onnx model/footfall_w050.int8.onnx
          -> head metrics of ONNX FP32, ONNX INT8 and the RKNN INT8 model in rknn-toolkit2's simulator,
             side by side, plus agreement with FP32 and where each operator runs (NPU/CPU)

The worker builds INT8 for rk3588 with the metadata's mean/std (the NPU normalizes uint8 NHWC RGB
itself), reports where each operator runs, exports the ``.rknn`` and, for ``simulate``, runs faces
through the simulator (which runs the model it has just built; ``simulate --out`` exports that very
model). This side writes the ``.rknn.json`` metadata sidecar.

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

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from footfall.model_file import ModelMetadata
from footfall.predictions import Predictions
from footfall_training import rknn_worker
from footfall_training.rknn_worker import ALGORITHMS, FLOAT16_TAILS, IO_OPERATORS

if TYPE_CHECKING:
    from footfall_training.data import FaceSet

# Marker written by scripts/setup_rknn_venv.sh when the venv is complete.
VENV_MARKER = ".footfall-rknn-ready"


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


def fp32_metadata(onnx_path: Path) -> ModelMetadata:
    """The FP32 ONNX model's metadata; rknn quantizes the model itself, so INT8 ONNX is refused."""
    meta = ModelMetadata.from_onnx_file(onnx_path)
    if meta.precision != "fp32":
        raise ValueError(f"{onnx_path} is {meta.precision}; convert the FP32 ONNX (rknn quantizes it itself)")
    return meta


def run_worker(onnx_path: Path, calibration_faces: np.ndarray, out: Path | None = None,
               faces: np.ndarray | None = None, algorithm: str = "normal", fail_on_cpu_ops: bool = False,
               layer_error_faces: int = 0, float16_tails: tuple[str, ...] = FLOAT16_TAILS,
               venv: Path | None = None, timeout_s: float = 1800) -> RknnRun:
    """Run the worker in the rknn venv; files are exchanged in a temporary folder deleted afterwards.
    With ``out``, the exported ``.rknn`` gets its metadata sidecar (the ONNX metadata, precision int8)."""
    from footfall.inference.backends.base import prepare_crops

    python = rknn_venv_python(venv)
    meta = fp32_metadata(onnx_path)
    # Faces of any size (the ingest's 112 px crops) at the model's input, as the worker feeds it.
    calibration_faces = prepare_crops(list(calibration_faces), meta.input_size)
    if faces is not None:
        faces = prepare_crops(list(faces), meta.input_size)
    with tempfile.TemporaryDirectory(prefix="footfall-rknn-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "calibration.npy", calibration_faces)
        (tmp_path / "metadata.json").write_text(meta.to_json())
        # -I: the toolkit's python sees neither PYTHON* variables of the project's venv (numpy 2 vs 1.26)
        # nor the worker's folder, whose modules (data.py, datasets.py...) would shadow packages.
        cmd = [str(python), "-I", str(Path(rknn_worker.__file__).resolve()), "--onnx", str(Path(onnx_path).resolve()),
               "--metadata", str(tmp_path / "metadata.json"), "--calibration", str(tmp_path / "calibration.npy"),
               "--workdir", tmp, "--algorithm", algorithm]
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
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        log_file = tmp_path / "build.log"
        log_tail = "\n".join((log_file.read_text(errors="replace") if log_file.exists() else "").splitlines()[-40:])
        report_file = tmp_path / "report.json"
        if not report_file.exists():
            raise RuntimeError(f"the rknn worker crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n{log_tail}")
        report = json.loads(report_file.read_text())
        if "error" in report:
            raise RuntimeError(f"the rknn worker failed: {report['error']}\n--- build log (tail) ---\n{log_tail}")
        if out is not None and "rknn" in report:
            replace(meta, precision="int8").write_sidecar(Path(out))
        outputs = None
        if faces is not None and (tmp_path / "predictions.npz").exists():
            with np.load(tmp_path / "predictions.npz") as npz:
                outputs = {k: npz[k] for k in npz.files}
    return RknnRun(report, outputs, log_tail)


def rknn_predictions(run: RknnRun) -> Predictions:
    """The simulator's outputs as Predictions, mapped exactly as the board backend maps them."""
    names = list(run.outputs)
    return Predictions.from_outputs(names, [run.outputs[k] for k in names])


def default_rknn_path(onnx_path: Path) -> Path:
    """``model/footfall_w050.onnx`` -> ``model/footfall_w050.rknn``."""
    return Path(onnx_path).with_suffix(".rknn")


def _calibration_set(calibration: int | np.ndarray) -> np.ndarray:
    """``calibration`` uint8 faces as given, or that many random real training faces."""
    if isinstance(calibration, np.ndarray):
        return calibration
    from footfall_training.export import calibration_faces

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
             threads: int = 2, flip: bool = False, flip_confidence: float = 1.0) -> tuple[dict, dict[str, Predictions]]:
    """Head metrics of ONNX FP32, ONNX INT8 (if given) and RKNN INT8 (simulator) on ``faces``, plus agreement
    with FP32, operator placement and timings. ``out`` also exports the simulated model. ``flip`` adds
    each format flip-averaged (as the worker's ``FOOTFALL_FLIP_AVERAGE``; the simulator runs the faces
    and their mirror images in one pass), compared with FP32 flip-averaged; ``flip_confidence`` below 1
    averages only the faces below that top emotion probability, as the worker's ``FOOTFALL_FLIP_CONFIDENCE``
    (the simulator's mirror images of the others go unused)."""
    from footfall.inference.backends.base import averaged_with_mirror, flip_averaged, unsure_faces, with_mirror_images
    from footfall_training.evaluate import flip_label, load_predictor
    from footfall_training.metrics import agreement, head_metrics

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
    mark = flip_label(flip_confidence)
    if flip:
        predictions.update({name + mark: flip_averaged(predict, flip_confidence)(faces.images)
                            for name, predict in predictors.items()})
        unsure = unsure_faces(predictions["rknn-int8-sim"], flip_confidence)
        predictions["rknn-int8-sim" + mark] = averaged_with_mirror(predictions["rknn-int8-sim"], unsure,
                                                                   simulated[n:][unsure])
    reference = {name: predictions["onnx-fp32" + (mark if name.endswith(mark) else "")]
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
    from footfall_training.evaluate import HEADLINE, fmt, table

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
    parser = argparse.ArgumentParser(prog="footfall-rknn", description=__doc__,
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
    simu.add_argument("--flip-confidence", type=float, default=1.0,
                      help="with --flip: average only faces below this top emotion probability "
                           "(FOOTFALL_FLIP_CONFIDENCE; 1: every face)")
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
            from footfall_training.evaluate import load_test_faces

            faces, _ = load_test_faces("dataset", args.limit, args.seed)
            result, _ = simulate(args.onnx, faces, args.int8_onnx, args.calibration, args.algorithm, args.out,
                                 args.layer_error_faces, tails, args.venv, flip=args.flip,
                                 flip_confidence=args.flip_confidence)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
            print(render_simulation(result, args.markdown))
    except (RknnToolkitMissing, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
