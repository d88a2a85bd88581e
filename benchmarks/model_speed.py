"""Face-model speed on the CPU: FP32 vs INT8 ONNX through the product's onnxruntime backend,
plus parameters and multiply-adds per width, joined into the Pareto table.

Faces/s at batch 1, 8 and 32 with 2 threads (the inference worker's default), FP32 and INT8
side by side with their ratio, measured in one run. The timed call is ``Backend.predict_faces`` on
112 px uint8 faces, i.e. the shrink to a smaller model's input and normalisation included, exactly
what the inference worker pays per batch.
Accuracy columns of the Pareto table come from ``footfall-evaluate --json`` files.

    # the committed models, with accuracy from an evaluation run
    footfall-evaluate model/footfall_w050.int8.onnx --json /tmp/eval_w050.json
    python benchmarks/model_speed.py model/footfall_w050.onnx model/footfall_w050.int8.onnx \\
        --accuracy /tmp/eval_w050.json
    # speed of untrained nets of several widths (speed does not depend on the weights)
    python benchmarks/model_speed.py --random --widths 0.5,1.0,1.4
    # the trained files also flip-averaged (FOOTFALL_FLIP_AVERAGE: each face and its mirror image)
    python benchmarks/model_speed.py model/footfall_w050.onnx model/footfall_w050.int8.onnx --flip
    # architectures (footfall_training.network.NetConfig names), untrained: size, INT8 speed and
    # (--npu, with the rknn-toolkit2 venv) where rknn places their operators on the RK3588
    python benchmarks/model_speed.py --nets footfall-mnv2-w050,footfall-mnv3-w060-mha --npu
    # input resolution: the same net taking 56 px faces (timed on 112 px crops, the shrink included)
    python benchmarks/model_speed.py --nets footfall-mnv2-w050,footfall-mnv2-w050-56px
    # how the backend spends its threads: one 2-thread session vs two 1-thread sessions splitting
    # each batch (FOOTFALL_SESSION_THREADS), the given files, single pass and flip-averaged
    python benchmarks/model_speed.py model/footfall_w050.int8.onnx --sessions --flip
    # flip averaging of the faces below an emotion confidence (FOOTFALL_FLIP_CONFIDENCE) against single
    # pass and every face, timed on real test faces (the second pass depends on them)
    python benchmarks/model_speed.py model/footfall_w050.int8.onnx --flip-confidence 0.65

It prints figures; it asserts nothing. The 1-minute load average is printed first: timings
taken while other work (e.g. a training run) shares the CPU are lower than on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from footfall.inference.backends import load_backend
from footfall.inference.backends.base import unsure_faces
from footfall_training.evaluate import FLIP_LABEL
from footfall_training.network import NetConfig


def measure_faces_per_s(predict, batch: int, seconds: float = 2.0, min_iters: int = 5, seed: int = 0,
                        faces: np.ndarray | None = None) -> float:
    """Faces per second of ``predict`` at a fixed batch size (after warm-up): on random uint8 faces, or
    on consecutive batches of the given real ``faces`` (when the work depends on the faces)."""
    if faces is None:
        faces = np.random.default_rng(seed).integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8)
    chunks = [faces[i:i + batch] for i in range(0, len(faces) - batch + 1, batch)]
    for chunk in chunks[:3]:
        predict(chunk)
    iters, t0 = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - t0 < seconds:
        predict(chunks[iters % len(chunks)])
        iters += 1
    return batch * iters / (time.perf_counter() - t0)


def onnx_name_precision(path: Path) -> tuple[str, str]:
    """The model name and precision from the ONNX file's own metadata."""
    backend = load_backend("onnxruntime", path, threads=1)
    return backend.metadata.name, backend.metadata.precision


def width_of(name: str) -> float | None:
    """``footfall-mnv2-w050`` -> 0.5."""
    match = re.search(r"-w(\d{3})$", name)
    return int(match.group(1)) / 100 if match else None


def untrained_like_trained(net):
    """``net`` with its attention blocks' output scale (zero at init, so that a new block starts as the
    identity) set to one: a converter may drop a block whose output is constant, and a trained one is not."""
    import torch

    from footfall_training.network import SpatialSelfAttention

    for m in net.modules():
        if isinstance(m, SpatialSelfAttention):
            torch.nn.init.ones_(m.proj[1].weight)
    return net


def export_random(width: float | NetConfig, out_dir: Path, seed: int = 0, stem: str | None = None,
                  image_size: int = 112) -> dict[str, Path]:
    """FP32 and INT8 ONNX files of an untrained FaceNet of ``width`` (or of that config) taking faces of
    ``image_size`` (for speed only)."""
    import torch

    from footfall_training.export import export_onnx, quantize_int8
    from footfall_training.network import FaceNet

    torch.manual_seed(seed)
    config = width if isinstance(width, NetConfig) else NetConfig(width=width)
    net = untrained_like_trained(FaceNet.from_config(config)).eval()
    net.image_size = image_size
    stem = stem or net.export_stem
    fp32 = export_onnx(net, out_dir / f"{stem}.onnx", version="random-init")
    # Calibration data only sets quantization ranges; random faces do for a speed measurement.
    faces = np.random.default_rng(seed).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    int8 = quantize_int8(fp32, out_dir / f"{stem}.int8.onnx", faces)
    return {"fp32": fp32, "int8": int8}


def speed_table(models: dict[str, dict[str, Path]], batches: list[int], threads: int, seconds: float,
                rounds: int = 3) -> list[dict]:
    """One row per (model, batch): FP32 and INT8 faces/s and their ratio; a model named
    ``... + flip`` runs flip-averaged (each face and its mirror image).

    FP32 and INT8 are timed alternately, ``rounds`` times each, and the best round counts:
    other load on the machine only ever slows a round down, so the best is the least disturbed.
    """
    rows = []
    for name, files in models.items():
        flip = name.endswith(FLIP_LABEL)
        backends = {prec: load_backend("onnxruntime", path, threads=threads, flip_average=flip)
                    for prec, path in files.items()}
        for batch in batches:
            row = {"model": name, "batch": batch}
            for _ in range(rounds):
                for prec, backend in backends.items():
                    row[prec] = max(row.get(prec, 0.0), measure_faces_per_s(backend.predict_faces, batch, seconds / rounds))
            if "fp32" in row and "int8" in row:
                row["ratio"] = row["int8"] / row["fp32"]
            rows.append(row)
            print(f"  {name} batch {batch}: " + ", ".join(f"{k} {row[k]:.0f} faces/s" for k in ("fp32", "int8")
                                                          if k in row), flush=True)
    return rows


def sessions_table(files: list[Path], batches: list[int], threads: int, seconds: float, rounds: int,
                   flip: bool) -> tuple[str, list[dict]]:
    """Each file at each batch through the backend laid out two ways, timed alternately (best round
    counts): one session of ``threads`` threads, and ``threads`` sessions of one thread splitting
    each batch (the default since 2026-12-03)."""
    rows = []
    for path in files:
        name, precision = onnx_name_precision(path)
        for flipped in (False, True) if flip else (False,):
            layouts = {per: load_backend("onnxruntime", path, threads=threads, session_threads=per, flip_average=flipped)
                       for per in (threads, 1)}
            for batch in batches:
                best = {per: 0.0 for per in layouts}
                for _ in range(rounds):
                    for per, backend in layouts.items():
                        best[per] = max(best[per], measure_faces_per_s(backend.predict_faces, batch, seconds / rounds))
                label = f"{name} {precision}" + (FLIP_LABEL if flipped else "")
                rows.append({"model": label, "batch": batch, "one_session": best[threads], "split": best[1],
                             "ratio": best[1] / best[threads]})
                print(f"  {label} batch {batch}: one {threads}-thread session {best[threads]:.0f}, "
                      f"{threads} 1-thread sessions {best[1]:.0f} faces/s", flush=True)
            for backend in layouts.values():
                backend.close()
    text = md_table(["model", "batch", f"one {threads}-thread session", f"{threads} 1-thread sessions", "ratio"],
                    [[r["model"], str(r["batch"]), f"{r['one_session']:.0f}", f"{r['split']:.0f}", f"{r['ratio']:.2f}x"]
                     for r in rows])
    return text, rows


def flip_table(files: list[Path], batches: list[int], threads: int, seconds: float, rounds: int,
               confidence: float, per_dataset: int = 1024) -> tuple[str, list[dict]]:
    """Each file served three ways, timed alternately (best round counts) on real test faces as the
    ingest crops them (pipeline crops; the mirror-image pass depends on the faces): single pass, flip
    averaging of the faces below ``confidence`` (FOOTFALL_FLIP_CONFIDENCE) and of every face."""
    from footfall_training.evaluate import load_test_faces

    faces, _ = load_test_faces("pipeline", per_dataset)
    faces = faces.subset(np.random.default_rng(0).permutation(len(faces)))  # both datasets in every batch
    modes = {"single": {}, "below": {"flip_average": True, "flip_confidence": confidence},
             "every": {"flip_average": True}}
    rows = []
    for path in files:
        name, precision = onnx_name_precision(path)
        backends = {mode: load_backend("onnxruntime", path, threads=threads, **kw) for mode, kw in modes.items()}
        mirrored = len(unsure_faces(backends["single"].predict_faces(faces.images), confidence)) / len(faces)
        for batch in batches:
            best = {mode: 0.0 for mode in modes}
            for _ in range(rounds):
                for mode, backend in backends.items():
                    best[mode] = max(best[mode], measure_faces_per_s(backend.predict_faces, batch, seconds / rounds,
                                                                     faces=faces.images))
            rows.append({"model": f"{name} {precision}", "batch": batch, "mirrored": mirrored, **best})
            print(f"  {name} {precision} batch {batch}: single {best['single']:.0f}, flip below {confidence:g} "
                  f"{best['below']:.0f}, flip every face {best['every']:.0f} faces/s", flush=True)
    text = md_table(["model", "batch", "single pass", f"flip averaging below {confidence:g}", "flip every face",
                     "below / every", "below / single"],
                    [[r["model"], str(r["batch"]), f"{r['single']:.0f}", f"{r['below']:.0f}", f"{r['every']:.0f}",
                      f"{r['below'] / r['every']:.2f}x", f"{r['below'] / r['single']:.2f}x"] for r in rows])
    shares = ", ".join(sorted({f"{r['model']} {100 * r['mirrored']:.1f} %" for r in rows}))
    return text + f"\n\nFaces mirrored ({len(faces)} pipeline crops of the test split): {shares}.", rows


def size_table(widths: list[float]) -> list[dict]:
    from footfall_training.network import FaceNet, count_macs, count_parameters

    out = []
    for w in widths:
        net = FaceNet(width=w)
        out.append({"width": w, "name": net.config.name, "params": count_parameters(net), "macs": count_macs(net)})
    return out


def npu_placement(fp32: Path) -> str:
    """Where rknn-toolkit2 places the model's operators for rk3588 (INT8 build, random calibration faces:
    placement does not depend on them), or why it could not tell."""
    from footfall_training.rknn_convert import IO_OPERATORS, RknnToolkitMissing, run_worker

    faces = np.random.default_rng(0).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    try:
        run = run_worker(fp32, faces)
    except RknnToolkitMissing:
        return "- (no rknn-toolkit2 venv: scripts/setup_rknn_venv.sh)"
    except RuntimeError as exc:
        return f"build failed: {str(exc).splitlines()[0][:120]}"
    ops = [op for op in run.report.get("ops", []) if op["op_type"] not in IO_OPERATORS]
    if run.cpu_fallbacks:
        return "CPU fallback: " + ", ".join(f"{op['op_type']} {op['name']}" for op in run.cpu_fallbacks)
    # the operators beyond MobileNetV2's (rknn fuses activations into their convolution: ConvHardSwish)
    kinds = sorted({op["op_type"] for op in ops} & {"exSDPAttention", "ConvHardSwish", "ConvHardSigmoid", "HardSwish",
                                                    "HardSigmoid", "Mul", "GlobalAveragePool", "MatMul"})
    return f"all {len(ops)} on the NPU" + (f" (incl. {', '.join(kinds)})" if kinds else "")


def parse_net_name(name: str) -> tuple[NetConfig, int]:
    """The config and face size of a name like ``footfall-mnv3-w060-mha`` or ``footfall-mnv2-w050-64px``
    (``FaceNet.export_name``; 112 px without the suffix).

    >>> parse_net_name("footfall-mnv2-w050-64px")[1], parse_net_name("footfall-mnv2-w050")[1]
    (64, 112)
    """
    match = re.fullmatch(r"(.+?)(?:-(\d+)px)?", name)
    return NetConfig.from_name(match.group(1)), int(match.group(2) or 112)


def architecture_table(nets: list[str], batches: list[int], threads: int, seconds: float, rounds: int,
                       npu: bool, out_dir: Path) -> tuple[str, list[dict]]:
    """Parameters, multiply-adds, FP32 and INT8 faces/s per batch and (``npu``) operator placement of
    untrained nets named like ``footfall-mnv3-w060-mha`` (``-64px``: taking 64 px faces, timed on the
    112 px crops the worker receives, the resize included)."""
    from footfall_training.network import FaceNet, count_macs, count_parameters

    rows, out = [], []
    for name in nets:
        config, size = parse_net_name(name)
        net = FaceNet.from_config(config)
        files = export_random(config, out_dir, image_size=size)
        speed = {r["batch"]: r for r in speed_table({name: files}, batches, threads, seconds, rounds)}
        placement = npu_placement(files["fp32"]) if npu else "-"
        out.append({"name": name, "params": count_parameters(net), "macs": count_macs(net, size), "placement": placement,
                    "speed": list(speed.values())})
        rows.append([name, f"{out[-1]['params'] / 1e6:.2f} M", f"{out[-1]['macs'] / 1e6:.0f} M",
                     *(f"{speed[b]['int8']:.0f}" for b in batches), *(f"{speed[b]['fp32']:.0f}" for b in batches),
                     placement])
    headers = (["model", "parameters", "multiply-adds", *(f"INT8 b{b}" for b in batches),
                *(f"FP32 b{b}" for b in batches), "RK3588 operator placement (rknn simulator)"])
    return md_table(headers, rows), out


def accuracy_by_name(json_files: list[Path]) -> dict[str, dict]:
    """Head metrics per model name (``+ flip`` for flip-averaged results) from evaluate JSON files
    (INT8 preferred, then FP32, then PyTorch)."""
    rank = {"onnx-int8": 0, "onnx-fp32": 1, "pytorch": 2}
    best: dict[str, dict] = {}
    for path in json_files:
        for r in json.loads(Path(path).read_text())["results"]:
            if r.get("crops", "dataset") != "dataset":
                continue
            name = r["name"] + (FLIP_LABEL if r.get("flip") else "")
            current = best.get(name)
            if current is None or rank.get(r["format"], 9) < rank.get(current["format"], 9):
                best[name] = r
    return best


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (FP32 and/or INT8, any widths)")
    parser.add_argument("--random", action="store_true", help="also time untrained exports of --widths")
    parser.add_argument("--widths", default="0.5,1.0,1.4", help="widths for params/MACs (and --random)")
    parser.add_argument("--accuracy", nargs="*", type=Path, default=[], help="footfall-evaluate --json files")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, batch and precision")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement (best counts)")
    parser.add_argument("--flip", action="store_true", help="also time the given files flip-averaged")
    parser.add_argument("--nets", default="", help="comma-separated net names (footfall-mnv3-w060-mha-sd6...): "
                        "untrained, their own table only")
    parser.add_argument("--npu", action="store_true", help="with --nets: rknn operator placement of each")
    parser.add_argument("--sessions", action="store_true", help="the given files through one --threads-thread "
                        "session vs --threads 1-thread sessions (with --flip: also flip-averaged), their own table only")
    parser.add_argument("--flip-confidence", type=float, help="the given files on real test faces single pass, "
                        "flip-averaged below this emotion confidence and on every face, their own table only")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    widths = [float(w) for w in args.widths.split(",")]

    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads per model")
    def report(heading: str, text: str, key: str, figures: list[dict]) -> None:
        """A mode with its own table: print it under ``heading`` and write its figures to --json."""
        print(f"\n### {heading}\n")
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"loadavg": os.getloadavg()[0], "threads": args.threads, key: figures},
                                            indent=1, default=str))

    if args.nets:
        with tempfile.TemporaryDirectory(prefix="footfall-speed-") as tmp:
            text, figures = architecture_table(args.nets.split(","), batches, args.threads, args.seconds, args.rounds,
                                               args.npu, Path(tmp))
        report(f"Architectures: size, faces/s through the onnxruntime backend ({args.threads} threads, random "
               "weights), operator placement", text, "architectures", figures)
        return
    if args.flip_confidence is not None:
        text, figures = flip_table(args.models, batches, args.threads, args.seconds, args.rounds, args.flip_confidence)
        report(f"Flip averaging below an emotion confidence: faces/s through the onnxruntime backend "
               f"({args.threads} threads, real faces)", text, "flip_confidence", figures)
        return
    if args.sessions:
        text, figures = sessions_table(args.models, batches, args.threads, args.seconds, args.rounds, args.flip)
        report(f"Sessions: faces/s through the onnxruntime backend, {args.threads} threads as one session or as "
               f"{args.threads} sessions splitting each batch", text, "sessions", figures)
        return
    models: dict[str, dict[str, Path]] = {}
    for path in args.models:
        name, precision = onnx_name_precision(path)
        models.setdefault(name, {})[precision] = path
    if args.flip:
        models.update({name + FLIP_LABEL: files for name, files in list(models.items())})
    tmp = tempfile.TemporaryDirectory(prefix="footfall-speed-")
    if args.random or not models:
        for w in widths:
            if NetConfig(width=w).name in models:
                continue  # a trained file of this width is timed already
            files = export_random(w, Path(tmp.name))
            models[f"{NetConfig(width=w).name} (random init)"] = files

    print("\nmeasuring (faces/s):")
    speed = speed_table(models, batches, args.threads, args.seconds, args.rounds)
    print(f"\n### Speed: faces/s through the onnxruntime backend, {args.threads} threads\n")
    print(md_table(["model", "batch", "FP32 faces/s", "INT8 faces/s", "INT8/FP32"],
                   [[r["model"], str(r["batch"]), f"{r['fp32']:.0f}" if "fp32" in r else "-",
                     f"{r['int8']:.0f}" if "int8" in r else "-", f"{r['ratio']:.2f}" if "ratio" in r else "-"]
                    for r in speed]))

    known = sorted(set(widths) | {w for n in models if (w := width_of(n.split(" ")[0])) is not None})
    sizes = size_table(known)
    file_mb = {n.split(" ")[0]: {p: f.stat().st_size / 1e6 for p, f in files.items()}
               for n, files in models.items() if "random" not in n and not n.endswith(FLIP_LABEL)}
    print("\n### Size per width (112x112 input)\n")
    print(md_table(["width", "model", "parameters", "multiply-adds", "FP32 file MB", "INT8 file MB"],
                   [[f"{s['width']:.2f}", s["name"], f"{s['params'] / 1e6:.2f} M", f"{s['macs'] / 1e6:.0f} M",
                     f"{file_mb[s['name']]['fp32']:.1f}" if "fp32" in file_mb.get(s["name"], {}) else "-",
                     f"{file_mb[s['name']]['int8']:.1f}" if "int8" in file_mb.get(s["name"], {}) else "-"]
                    for s in sizes]))

    acc = accuracy_by_name(args.accuracy)
    speed32 = {}
    for r in speed:
        if r["batch"] == max(batches) and "int8" in r:
            key = r["model"] if r["model"].endswith(FLIP_LABEL) else r["model"].split(" ")[0]
            # Trained files take precedence over random-init exports of the same width.
            if key not in speed32 or "random" not in r["model"]:
                speed32[key] = r["int8"]
    rows = []
    for s in sizes:
        # A flip-averaged model runs the same network twice per face.
        for name, passes in ((s["name"], 1), (s["name"] + FLIP_LABEL, 2)):
            if passes == 2 and name not in speed32 and name not in acc:
                continue
            a = acc.get(name, {}).get("metrics", {})
            rows.append([name, f"{s['params'] / 1e6:.2f} M", f"{passes * s['macs'] / 1e6:.0f} M",
                         f"{a['age_mae']:.2f}" if "age_mae" in a else "-",
                         *(f"{100 * a[k]:.1f}" if k in a else "-" for k in ("gender_acc", "race_acc", "emotion_acc")),
                         f"{speed32[name]:.0f}" if name in speed32 else "-"])
    print(f"\n### Pareto: accuracy (test split, dataset crops) vs INT8 speed (batch {max(batches)}, "
          f"{args.threads} threads)\n")
    print(md_table(["model", "parameters", "multiply-adds per face", "age MAE", "gender %", "race %", "emotion %",
                    "INT8 faces/s"], rows))
    missing = [s["name"] for s in sizes if s["name"] not in acc]
    if missing:
        print(f"\n(no accuracy given for {', '.join(missing)}: pass footfall-evaluate --json files with --accuracy)")
    if args.json:
        args.json.write_text(json.dumps({"loadavg": os.getloadavg()[0], "threads": args.threads, "speed": speed,
                                         "sizes": sizes, "accuracy": {k: v["metrics"] for k, v in acc.items()}},
                                        indent=1, default=str))
    tmp.cleanup()


if __name__ == "__main__":
    main()
