"""Why INT8 gains only ~1.3x over FP32 on this CPU: where the time goes, and INT8 variants side by side.

Three parts, measured in one run (compare ratios within it, not figures across runs):

1. **Where the time goes**: ONNX Runtime's profiler (``SessionOptions.enable_profiling``) on the FP32
   and INT8 files, kernel time per kind of node (stem 3x3 conv, depthwise 3x3, pointwise 1x1, the
   GDC, the heads, quantize/transpose plumbing; each node's fastest of 20 runs) at the largest
   batch, and the optimized graph's operators (``SessionOptions.optimized_model_filepath``): what ran
   as an integer kernel, how many Q/DQ nodes and layout transposes were left.
2. **Variants**: INT8 exports of the same FP32 weights through ``footfall_training.export.quantize_int8``
   with other ``Int8Layout`` options (per-tensor weights, QOperator, S8S8, full-range 8-bit or UINT8
   weights instead of the 7-bit ones, nodes left in float), the
   shipped file under other session options (graph optimization level, spinning), all timed as
   ``session.run`` on normalised input, rounds alternating between variants.
3. **Preprocessing**: the backend's uint8 -> normalised NCHW float conversion per batch
   (``normalize_nchw``, OpenCV's blob function) and the numpy expression it replaced, against the
   INT8 model's own time, and both as served (normalisation + model, FP32 and INT8).

Speeds are faces per second of the process's CPU time by default (``--clock cpu``; with 1 thread
that is the one core's time), from the fastest call of each variant over its rounds, which other
work on a shared machine disturbs least; ``--clock wall`` times the wall clock instead (an idle
machine only).

    python benchmarks/int8_layout.py model/footfall_w050.onnx model/footfall_w050.int8.onnx --threads 1

Calibration faces are random (quantization ranges do not change the kernels' speed); accuracy of a
chosen layout is measured with ``footfall-evaluate`` on a real export. It prints figures and asserts
nothing; the 1-minute load average is printed first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from footfall.inference.backends.base import normalize_nchw
from footfall.model_file import ModelMetadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import md_table  # noqa: E402


def session(path: Path, threads: int, level: str = "all", spinning: bool = False, profile_prefix: str | None = None,
            optimized_path: Path | None = None):
    """An onnxruntime CPU session with the backend's options (``level`` and ``spinning`` varied here)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def node_kind(op_type: str, attrs: dict) -> str:
    """The kind of a node of the optimized FaceNet graph, for the time table.

    >>> node_kind("QLinearConv", {"group": 160, "kernel_shape": [3, 3]}), node_kind("Conv", {"kernel_shape": [1, 1]})
    ('depthwise 3x3 conv', 'pointwise 1x1 conv')
    """
    if "Conv" in op_type:
        kernel, group = list(attrs.get("kernel_shape", [])), attrs.get("group", 1)
        if group > 1:
            return "depthwise 3x3 conv" if kernel == [3, 3] else "GDC 4x4 conv"
        return "stem 3x3 conv" if kernel == [3, 3] else "pointwise 1x1 conv"
    if op_type in ("Gemm", "QGemm", "MatMul"):
        return "linear heads"
    if op_type in ("Add", "QLinearAdd"):
        return "residual adds"
    if op_type in ("QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"):
        return "quantize / layout"
    return "float tail (softmax, sigmoid, age)"


def profile(path: Path, batch: int, threads: int, workdir: Path, runs: int = 20) -> tuple[dict, collections.Counter]:
    """Kernel milliseconds per node kind per run, and the optimized graph's operator counts."""
    optimized = workdir / f"{path.stem}.optimized.onnx"
    sess = session(path, threads, profile_prefix=str(workdir / path.stem), optimized_path=optimized)
    graph = onnx.load(str(optimized)).graph
    nodes = {n.name: (n.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}) for n in graph.node}
    ops = collections.Counter(n.op_type for n in graph.node)
    x = np.random.default_rng(0).standard_normal((batch, 3, 112, 112)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {sess.get_inputs()[0].name: x})
    trace = Path(sess.end_profiling())
    # Each node's fastest run counts: other work on a shared machine only ever slows a kernel down.
    fastest: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            fastest[event["name"]] = min(fastest.get(event["name"], float("inf")), event["dur"] / 1e3)
    trace.unlink()
    ms: dict[str, float] = collections.defaultdict(float)
    for name, duration in fastest.items():
        op_type, attrs = nodes.get(name.removesuffix("_kernel_time"), ("", {}))
        ms[node_kind(op_type, attrs)] += duration
    return dict(ms), ops


def measure(run, seconds: float, clock=time.process_time) -> float:
    """Calls per second of ``run`` from its fastest call within ``seconds`` (after one warm-up call),
    on ``clock``: the process's CPU time by default. Other work on a shared machine only ever slows
    a call down (it steals the core, evicts caches), so the fastest call is the least disturbed one.
    Calls shorter than 2 ms are timed in groups, and a group read as 0 s is dropped: one face's
    normalisation once read as 0 s of CPU time here (a virtual machine's accounting), 10^9 faces/s."""
    w0 = time.perf_counter()
    run()
    reps = max(1, int(0.002 / max(time.perf_counter() - w0, 1e-7)))
    fastest, w0 = float("inf"), time.perf_counter()
    while time.perf_counter() - w0 < seconds or fastest == float("inf"):
        t0 = clock()
        for _ in range(reps):
            run()
        elapsed = clock() - t0
        if elapsed > 0:  # a group the clock did not see at all is no measurement
            fastest = min(fastest, elapsed / reps)
    return 1.0 / fastest


def normalize_numpy(batch: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """The backend's normalisation before 2026-12-03 (numpy), kept here as the reference it is compared with."""
    x = (batch.astype(np.float32) - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def build_variants(fp32: Path, int8: Path, workdir: Path) -> dict[str, tuple[str, Path, dict]]:
    """Variant label -> (what changes, ONNX file, session options). Each re-export changes one thing
    of the default ``Int8Layout`` (the shipped export's)."""
    from dataclasses import replace

    from footfall_training.export import Int8Layout, quantize_int8

    faces = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    default = Int8Layout()
    variants = {"FP32": ("the FP32 file", fp32, {}),
                "INT8 shipped": (f"the INT8 file (exported as {default.label()})", int8, {})}
    layouts = {
        "stem conv in float": replace(default, float_nodes=("stem",)),
        "heads in float": replace(default, float_nodes=("heads",)),
        "stem + heads in float": replace(default, float_nodes=("stem", "heads")),
        "depthwise convs in float": replace(default, float_nodes=("depthwise",)),
        "per-tensor weights": replace(default, per_channel=False),
        "QOperator format": replace(default, quant_format="QOperator"),
        "S8S8 (int8 activations)": replace(default, activations="int8"),
        "8-bit weights (no reduce range)": replace(default, reduce_range=False),
        "U8U8 (uint8 weights)": replace(default, weights="uint8", reduce_range=False),
    }
    for i, (label, layout) in enumerate(layouts.items()):
        path = quantize_int8(fp32, workdir / f"variant{i}.int8.onnx", faces, layout)
        variants[label] = (f"re-export: {layout.label()}", path, {})
    variants["graph level extended"] = ("the INT8 file, ORT_ENABLE_EXTENDED (no NHWC transform)", int8,
                                        {"level": "extended"})
    variants["spinning on"] = ("the INT8 file, intra-op spinning on", int8, {"spinning": True})
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.3, help="timed seconds per variant, batch and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating between the variants")
    parser.add_argument("--only", help="comma-separated variant labels to time (default: all)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads per session")
    meta = ModelMetadata.from_onnx(onnx.load(str(args.fp32)))

    with tempfile.TemporaryDirectory(prefix="footfall-int8-") as tmp:
        workdir = Path(tmp)
        big = max(batches)
        variants = build_variants(args.fp32, args.int8, workdir)
        if args.only:
            keep = {"FP32", "INT8 shipped", *args.only.split(",")}
            variants = {k: v for k, v in variants.items() if k in keep}
        times, graphs = {}, {}
        for label, (_, path, opts) in variants.items():
            if not opts:  # the graph is the file's; session-option variants share the shipped file's
                times[label], graphs[label] = profile(path, big, args.threads, workdir,
                                                      runs=20 if label in ("FP32", "INT8 shipped") else 1)

        print("\nmeasuring (faces/s, model only):", flush=True)
        sessions = {label: session(path, args.threads, **opts) for label, (_, path, opts) in variants.items()}
        faces = {b: np.random.default_rng(b).integers(0, 256, (b, 112, 112, 3), dtype=np.uint8) for b in batches}
        inputs = {b: normalize_nchw(faces[b], meta) for b in batches}
        speed: dict[str, dict[int, float]] = {label: {} for label in sessions}
        prep: dict[str, dict[int, float]] = {"normalize_nchw (OpenCV)": {}, "numpy (before)": {}}
        served: dict[tuple[str, str], dict[int, float]] = {(p, n): {} for p in ("FP32", "INT8 shipped") for n in prep}
        for b in batches:
            for _ in range(args.rounds):
                for label, sess in sessions.items():
                    name = sess.get_inputs()[0].name
                    rate = b * measure(lambda: sess.run(None, {name: inputs[b]}), args.seconds, clock)
                    speed[label][b] = max(speed[label].get(b, 0.0), rate)
                for label, normalize in zip(prep, (normalize_nchw, normalize_numpy)):
                    rate = b * measure(lambda: normalize(faces[b], meta), args.seconds, clock)
                    prep[label][b] = max(prep[label].get(b, 0.0), rate)
                    for precision in ("FP32", "INT8 shipped"):
                        sess = sessions[precision]
                        name = sess.get_inputs()[0].name
                        rate = b * measure(lambda: sess.run(None, {name: normalize(faces[b], meta)}),
                                           args.seconds, clock)
                        key = (precision, label)
                        served[key][b] = max(served[key].get(b, 0.0), rate)
            print(f"  batch {b}: " + ", ".join(f"{k} {v[b]:.0f}" for k, v in speed.items()), flush=True)

    kinds = sorted(set(times["FP32"]) | set(times["INT8 shipped"]), key=lambda k: -times["FP32"].get(k, 0.0))
    fp, q = times["FP32"], times["INT8 shipped"]
    total = {"FP32": sum(fp.values()), "INT8": sum(q.values())}
    print(f"\n### Where the time goes: kernel ms per batch of {big}, {args.threads} thread(s), onnxruntime profiler\n")
    print(md_table(["node kind", "FP32 ms", "INT8 ms", "INT8 / FP32 time", "share of INT8 time"],
                   [[k, f"{fp.get(k, 0.0):.2f}", f"{q.get(k, 0.0):.2f}",
                     f"{q[k] / fp[k]:.2f}" if fp.get(k) and q.get(k) else "-",
                     f"{100 * q.get(k, 0.0) / total['INT8']:.0f} %"]
                    for k in kinds]
                   + [["all kernels", f"{total['FP32']:.2f}", f"{total['INT8']:.2f}",
                       f"{total['INT8'] / total['FP32']:.2f}", "100 %"]]))
    print("\nOperators of the graphs as ONNX Runtime runs them (ORT_ENABLE_ALL):\n")
    print(md_table(["graph", "operators"], [[label, ", ".join(f"{op} {n}" for op, n in ops.most_common())]
                                            for label, ops in graphs.items()]))

    unit = "faces per CPU second" if args.clock == "cpu" else "faces/s (wall clock)"
    print(f"\n### INT8 variants: {unit}, session.run on normalised input, {args.threads} thread(s)\n")
    base = speed["INT8 shipped"]  # also the preprocessing table's model column
    rows = []
    for label, (what, _, _) in variants.items():
        s = speed[label]
        rows.append([label, what, *(f"{s[b]:.0f}" for b in batches),
                     *(f"{s[b] / speed['FP32'][b]:.2f}" for b in batches),
                     f"{np.mean([s[b] / base[b] for b in batches]):.2f}"])
    print(md_table(["variant", "what changes", *(f"batch {b}" for b in batches), *(f"/ FP32 b{b}" for b in batches),
                    "/ shipped INT8 (mean)"], rows))

    print(f"\n### Preprocessing: the backend's normalisation (uint8 NHWC -> float NCHW), {unit}\n")
    print(md_table(["batch", *prep, "INT8 model", *(f"share of INT8 predict time, {k.split(' ')[0]}" for k in prep)],
                   [[str(b), *(f"{p[b]:.0f}" for p in prep.values()), f"{base[b]:.0f}",
                     *(f"{100 * (1 / p[b]) / (1 / p[b] + 1 / base[b]):.0f} %" for p in prep.values())]
                    for b in batches]))

    print(f"\n### As served: normalisation + model, {unit}, {args.threads} thread(s)\n")
    print(md_table(["normalisation", *(f"FP32 b{b}" for b in batches), *(f"INT8 b{b}" for b in batches),
                    *(f"INT8 / FP32 b{b}" for b in batches)],
                   [[n, *(f"{served[('FP32', n)][b]:.0f}" for b in batches),
                     *(f"{served[('INT8 shipped', n)][b]:.0f}" for b in batches),
                     *(f"{served[('INT8 shipped', n)][b] / served[('FP32', n)][b]:.2f}" for b in batches)]
                    for n in reversed(list(prep))]))


if __name__ == "__main__":
    main()
