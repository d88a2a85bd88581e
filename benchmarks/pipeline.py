"""Pipeline benchmark: prints figures measured on this machine, in one run (no asserts).

1. Ingest: frames/s per camera at 720p 25 fps (decode every frame + detect/track/align/publish
   at the frame-rate cap), unpaced, with 1 and with 4 cameras in one worker.
2. Inference through gRPC at batch sizes 1, 8, 32 (with 4 concurrent clients), next to the
   same backend called directly in-process.
3. End to end with 1 and 4 cameras playing in real time: faces/s counted, and latency from a
   visitor's last frame to its database commit (p50/p95). The clip's visitors walk out of view,
   so their tracks close at once; a face lost mid-frame waits ``FOOTFALL_TRACK_MAX_AGE_S`` more.

    ./footfall.sh bench            # or: .venv/bin/python benchmarks/pipeline.py --seconds 20
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import redis

from footfall.aggregator.service import Aggregator
from footfall.config import AggregatorSettings, IngestSettings, InferenceSettings, ModelSettings
from footfall.demo import compose_clip
from footfall.embedded_redis import EmbeddedRedis, free_ports
from footfall.inference.backends import load_backend
from footfall.inference.client import InferenceClient
from footfall.ingest.service import IngestWorker
from footfall.demo import sample_faces


def make_clip(directory: Path, seconds: float) -> Path:
    path = directory / "bench_720p.mp4"
    visitors = max(2, int(seconds / 2))
    faces = sample_faces(ModelSettings().data_dir, visitors, seed=7)
    compose_clip(path, faces, fps=25, size=(1280, 720), walk_s=3.0, gap_s=1.0, concurrent=2, face_px=160)
    return path


def bench_ingest(redis_url: str, clip: Path, cameras: int) -> tuple[float, float]:
    """Unpaced: (input frames/s per camera, processed frames/s per camera)."""
    prefix = f"bench-{secrets.token_hex(3)}"
    spec = ",".join(f"cam{i}={clip}" for i in range(cameras))
    settings = IngestSettings(redis_url=redis_url, stream_prefix=prefix, cameras=spec, realtime=False)
    worker = IngestWorker(settings)
    t0 = time.perf_counter()
    worker.start()
    worker.join()
    elapsed = time.perf_counter() - t0
    read = sum(w.frames_processed for w in worker.workers)
    total_frames = int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT)) * cameras
    _cleanup(redis_url, prefix)
    return total_frames / elapsed / cameras, read / elapsed / cameras


def bench_inference(face_model: Path, crops: list[bytes], batches=(1, 8, 32), seconds: float = 3.0) -> list[tuple]:
    from footfall.inference.server import InferenceServer

    settings = InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model)
    server = InferenceServer(settings)
    # the in-process backend as the server runs it (flip averaging included), so the ratio is gRPC's cost
    backend = load_backend("onnxruntime", face_model, settings=settings)
    rgb = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                    for c in crops])
    rows = []
    for b in batches:
        batch = [crops[i % len(crops)] for i in range(b)]
        x = rgb[np.arange(b) % len(rgb)]
        direct = _rate(lambda: backend.predict_faces(x), b, seconds)
        client = InferenceClient(f"127.0.0.1:{server.port}")
        client.predict(batch)
        single = _rate(lambda: client.predict(batch), b, seconds)
        with ThreadPoolExecutor(4) as pool:
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                list(pool.map(lambda _: client.predict(batch), range(4)))
                n += 4 * b
            concurrent = n / (time.perf_counter() - t0)
        client.close()
        rows.append((b, direct, single, concurrent))
    server.stop(grace_s=1)
    return rows


def _rate(fn, per_call: int, seconds: float) -> float:
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += per_call
    return n / (time.perf_counter() - t0)


def bench_end_to_end(redis_url: str, clip: Path, cameras: int, face_model: Path, workdir: Path) -> dict:
    """Real-time playback through separate ingest and inference processes, aggregator here."""
    prefix = f"bench-{secrets.token_hex(3)}"
    db = f"sqlite:///{workdir / f'e2e_{cameras}.db'}"
    grpc_port, inference_metrics, ingest_metrics = free_ports(3)
    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_url, "FOOTFALL_STREAM_PREFIX": prefix,
           "FOOTFALL_LOG_LEVEL": "WARNING"}
    inference = subprocess.Popen([sys.executable, "-m", "footfall.inference.server"],
                                 env={**env, "FOOTFALL_GRPC_PORT": str(grpc_port), "FOOTFALL_GRPC_HOST": "127.0.0.1",
                                      "FOOTFALL_FACE_MODEL": str(face_model), "FOOTFALL_METRICS_PORT": str(inference_metrics)})
    time.sleep(2.0)
    agg = Aggregator(AggregatorSettings(redis_url=redis_url, stream_prefix=prefix, database_url=db,
                                        inference_targets=f"127.0.0.1:{grpc_port}", block_ms=20))
    spec = ",".join(f"cam{i}={clip}" for i in range(cameras))
    ingest = subprocess.Popen([sys.executable, "-m", "footfall.ingest.service"],
                              env={**env, "FOOTFALL_CAMERAS": spec, "FOOTFALL_REALTIME": "true",
                                   "FOOTFALL_METRICS_PORT": str(ingest_metrics)})
    latencies, faces = [], 0
    t0 = time.perf_counter()
    while True:
        for record in agg.step():
            latencies.append(time.time() - record.last_ts)
            faces += record.faces
        if ingest.poll() is not None and agg.redis.xlen(agg.keys.faces) == 0 and not agg.open:
            break
    elapsed = time.perf_counter() - t0
    inference.terminate()
    inference.wait(10)
    agg.close()
    _cleanup(redis_url, prefix)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"cameras": cameras, "visitors": len(latencies), "faces_per_s": faces / elapsed,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))}


def _cleanup(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the 720p test clip")
    parser.add_argument("--face-model", type=Path, default=InferenceSettings().face_model)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="footfall-bench-"))
    embedded = None
    redis_url = os.environ.get("FOOTFALL_REDIS_URL")
    if not redis_url:
        embedded = EmbeddedRedis().start()
        redis_url = embedded.url
    try:
        print(f"machine: {os.cpu_count()} CPUs; model {args.face_model.name}; clip 1280x720 25 fps, "
              f"{args.seconds:.0f} s; frame-rate cap {IngestSettings().max_fps} fps", flush=True)
        clip = make_clip(work, args.seconds)

        print("\n1. ingest, unpaced (decode all frames, detect+track+align+publish at the cap)")
        print(f"{'cameras':>8} {'input frames/s per camera':>27} {'x real time (25 fps)':>21} {'detected frames/s':>18}")
        for cams in (1, 4):
            read, processed = bench_ingest(redis_url, clip, cams)
            print(f"{cams:>8} {read:>27.1f} {read / 25:>21.2f} {processed:>18.1f}", flush=True)

        print("\n2. inference faces/s (2 ORT threads): in-process backend vs through gRPC")
        crops = []
        for face in sample_faces(ModelSettings().data_dir, 64, seed=3):
            crops.append(cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(face, (112, 112)), cv2.COLOR_RGB2BGR))[1].tobytes())
        print(f"{'batch':>6} {'direct':>10} {'gRPC 1 client':>14} {'ratio':>6} {'gRPC 4 clients':>15} {'ratio':>6}")
        for b, direct, single, conc in bench_inference(args.face_model, crops):
            print(f"{b:>6} {direct:>10.0f} {single:>14.0f} {single / direct:>6.2f} {conc:>15.0f} {conc / direct:>6.2f}",
                  flush=True)

        print("\n3. end to end, cameras playing in real time (ingest + inference processes, aggregator)")
        print(f"{'cameras':>8} {'visitors':>9} {'faces/s':>8} {'last-frame->DB p50':>19} {'p95':>6}")
        for cams in (1, 4):
            r = bench_end_to_end(redis_url, clip, cams, args.face_model, work)
            print(f"{r['cameras']:>8} {r['visitors']:>9} {r['faces_per_s']:>8.1f} {r['p50']:>18.2f}s "
                  f"{r['p95']:>5.2f}s", flush=True)
    finally:
        if embedded:
            embedded.stop()


if __name__ == "__main__":
    main()
