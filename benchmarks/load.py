"""Load benchmark: how fast the aggregator path drains a full stream, next to the model alone.

A producer pre-fills the face stream(s) with N cameras' worth of visitors in the ingest schema:
real aligned test faces (112x112 JPEG, the ingest's quality), ``--crops`` crops per track
0.4 s apart (the ingest's sampling interval) and a track end, cameras interleaved in time order
and each published to its shard. Then real processes drain it: inference workers
(``footfall.inference.server``) and aggregators (``footfall.aggregator.service``), through the
running Redis into a database (SQLite file, or PostgreSQL in a schema of its own with
``--postgres URL``). For each setup it prints, in one run:

- drain faces/s end to end (first aggregator ready -> last visitor committed) and its ratio to
  the in-process model faces/s (the same backend, threads and flip averaging as the workers);
- where the time goes per face: the aggregators' own stage timers (Redis reads, entry decoding,
  waiting on gRPC inference, folding, database commits, acks, leases) and the workers' (JPEG
  decode, model runs);
- CPU seconds per 1000 faces of the aggregators and of the workers (from /proc), so scaling on
  a machine with few cores can be read as cost per face;
- that the database holds exactly one visitor per published track.

    .venv/bin/python benchmarks/load.py                     # ~2 minutes
    .venv/bin/python benchmarks/load.py --visitors 2000 --setups 1x1
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import redis
import sqlalchemy as sa

from footfall.config import InferenceSettings, IngestSettings, ModelSettings
from footfall.db.store import make_engine, total_visitors
from footfall.embedded_redis import free_ports
from footfall.inference.backends import load_backend
from footfall.demo import sample_faces
from footfall.schema import FaceMessage, StreamKeys, TrackEnd

REPO = Path(__file__).resolve().parents[1]
AGGREGATOR_STAGES = ("read", "decode", "inference", "fold", "commit", "ack", "lease")


@dataclass(frozen=True)
class Setup:
    workers: int
    aggregators: int
    shards: int

    @staticmethod
    def parse(text: str) -> Setup:
        """``WxA`` (shards = aggregators) or ``WxAxS``."""
        parts = [int(p) for p in text.lower().split("x")]
        return Setup(parts[0], parts[1], parts[2] if len(parts) > 2 else parts[1])

    def __str__(self) -> str:
        return f"{self.workers}w {self.aggregators}a {self.shards}s"


def face_crops(count: int, quality: int) -> list[bytes]:
    """Real test-split faces as the ingest publishes them: 112x112 JPEG."""
    faces = sample_faces(ModelSettings().data_dir, count, seed=11)
    return [cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(f, (112, 112)), cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for f in faces]


def visitors_entries(crops: list[bytes], visitors: int, per_track: int, cameras: int, interval_s: float,
                     t0: float) -> list[FaceMessage | TrackEnd]:
    """``visitors`` tracks spread over ``cameras``; on each camera a visitor every 2 s, in time order."""
    entries = []
    for v in range(visitors):
        camera = f"cam{v % cameras:03d}"
        start = t0 + (v // cameras) * 2.0
        track = f"{camera}:load:{v}"
        face = crops[v % len(crops)]
        for k in range(per_track):
            entries.append(FaceMessage(camera, start + k * interval_s, k, track, (100, 80, 96, 96), 0.9, face))
        entries.append(TrackEnd(camera, start + per_track * interval_s, track, per_track))
    return sorted(entries, key=lambda e: e.ts)


def prefill(client: redis.Redis, keys: StreamKeys, entries) -> None:
    pipe = client.pipeline(transaction=False)
    for i, entry in enumerate(entries):
        pipe.xadd(keys.faces_for(entry.camera_id), entry.encode())
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text of a service's /metrics as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+\d.eE]+|NaN)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200
    except OSError:
        return False


class InProcessModel:
    """The workers' backend called directly (same threads and flip averaging; decoded faces)."""

    def __init__(self, face_model: Path, crops: list[bytes], batch: int) -> None:
        s = InferenceSettings()
        self.backend = load_backend(s.backend, face_model, settings=s)
        rgb = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                        for c in crops])
        self.batch = rgb[np.arange(batch) % len(rgb)]
        self.backend.predict_faces(self.batch)

    def rate(self, seconds: float) -> tuple[float, float]:
        """Faces/s over ``seconds``, and CPU seconds per 1000 faces."""
        t0, cpu0, n = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < seconds:
            self.backend.predict_faces(self.batch)
            n += len(self.batch)
        return n / (time.perf_counter() - t0), 1000 * (time.process_time() - cpu0) / n


class Database:
    """SQLite in a temporary file, or a PostgreSQL schema of our own (dropped afterwards)."""

    def __init__(self, postgres: str | None, workdir: Path, name: str) -> None:
        from footfall.db.migrate import upgrade

        self.postgres, self.schema = postgres, None
        if postgres:
            self.schema = f"bench_{secrets.token_hex(4)}"
            with sa.create_engine(postgres).begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            self.url = f"{postgres}{'&' if '?' in postgres else '?'}options=-csearch_path%3D{self.schema}"
        else:
            self.url = f"sqlite:///{workdir / f'{name}.db'}"
        upgrade(self.url)
        self.engine = make_engine(self.url)

    def close(self) -> None:
        self.engine.dispose()
        if self.schema:
            with sa.create_engine(self.postgres).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))


def run_setup(setup: Setup, args, entries, visitors: int, faces: int, workdir: Path) -> dict:
    prefix = f"bench-load-{secrets.token_hex(3)}"
    keys = StreamKeys(prefix, setup.shards)
    client = redis.Redis.from_url(args.redis_url)
    db = Database(args.postgres, workdir, prefix)
    memory_before = client.info("memory")["used_memory"]
    prefill(client, keys, entries)
    redis_bytes = (client.info("memory")["used_memory"] - memory_before) / len(entries)
    ports = free_ports(2 * setup.workers + setup.aggregators)
    grpc_ports, worker_metrics, agg_metrics = (ports[:setup.workers], ports[setup.workers:2 * setup.workers],
                                               ports[2 * setup.workers:])
    threads = max(1, (os.cpu_count() or 2) // setup.workers)  # the workers share this machine's cores
    env = {**os.environ, "FOOTFALL_REDIS_URL": args.redis_url, "FOOTFALL_STREAM_PREFIX": prefix,
           "FOOTFALL_STREAM_SHARDS": str(setup.shards), "FOOTFALL_LOG_LEVEL": "WARNING",
           "FOOTFALL_DATABASE_URL": db.url, "FOOTFALL_FACE_MODEL": str(args.face_model)}
    workers = [subprocess.Popen([sys.executable, "-m", "footfall.inference.server"],
                                env={**env, "FOOTFALL_GRPC_PORT": str(p), "FOOTFALL_GRPC_HOST": "127.0.0.1",
                                     "FOOTFALL_THREADS": str(threads), "FOOTFALL_METRICS_PORT": str(m)})
               for p, m in zip(grpc_ports, worker_metrics)]
    aggregators: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while not all(ready(m) for m in worker_metrics):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "workers did not start"
            time.sleep(0.05)
        targets = ",".join(f"127.0.0.1:{p}" for p in grpc_ports)
        aggregators = [subprocess.Popen([sys.executable, "-m", "footfall.aggregator.service"],
                                        env={**env, "FOOTFALL_INFERENCE_TARGETS": targets,
                                             "FOOTFALL_CONSUMER_NAME": f"agg{i}", "FOOTFALL_METRICS_PORT": str(m),
                                             "FOOTFALL_BLOCK_MS": "50"})
                       for i, m in enumerate(agg_metrics)]
        while not any(ready(m) for m in agg_metrics):
            assert time.monotonic() < deadline and all(a.poll() is None for a in aggregators), \
                "aggregators did not start"
            time.sleep(0.01)
        t0 = time.perf_counter()
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in workers + aggregators}
        counted, deadline = 0, time.monotonic() + args.timeout
        while counted < visitors and time.monotonic() < deadline:
            time.sleep(0.05)
            counted = total_visitors(db.engine)
        elapsed = time.perf_counter() - t0
        cpu = {p.pid: cpu_seconds(p.pid) - cpu0[p.pid] for p in workers + aggregators}
        agg_stats = [scrape(m) for m in agg_metrics]
        worker_stats = [scrape(m) for m in worker_metrics]
        with db.engine.connect() as conn:
            tracks = conn.execute(sa.text("select count(*) from counted_tracks")).scalar_one()
    finally:
        for proc in aggregators + workers:
            proc.send_signal(signal.SIGTERM)
        for proc in aggregators + workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        stale = list(client.scan_iter(f"{prefix}:*"))
        if stale:
            client.delete(*stale)
        db.close()

    def total(stats: list[dict], name: str) -> float:
        return sum(v for s in stats for k, v in s.items() if k == name)

    stages = {st: total(agg_stats, f'footfall_aggregator_stage_seconds_total{{stage="{st}"}}')
              for st in AGGREGATOR_STAGES}
    stages["worker decode"] = total(worker_stats, "footfall_inference_decode_seconds_total")
    stages["worker model"] = total(worker_stats, "footfall_inference_latency_seconds_sum")
    commits = total(agg_stats, 'footfall_db_writes_total{kind="visitors"}')
    return {"setup": setup, "elapsed": elapsed, "redis_bytes": redis_bytes, "commits": commits, "faces_per_s": faces / elapsed, "counted": counted,
            "tracks": tracks, "visitors": visitors, "stages": stages,
            "cpu_agg": sum(cpu[p.pid] for p in aggregators), "cpu_workers": sum(cpu[p.pid] for p in workers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=600, help="tracks published (one visitor each)")
    parser.add_argument("--crops", type=int, default=10, help="crops per track")
    parser.add_argument("--cameras", type=int, default=24)
    parser.add_argument("--setups", default="1x1,2x1,1x2,2x2",
                        help="comma-separated WxA or WxAxS: inference workers x aggregators (x shards, "
                             "default = aggregators)")
    parser.add_argument("--redis-url", default=os.environ.get("FOOTFALL_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--postgres", default=os.environ.get("FOOTFALL_TEST_POSTGRES_URL"),
                        help="PostgreSQL URL (an own schema is made there); default SQLite")
    parser.add_argument("--face-model", type=Path, default=InferenceSettings().face_model)
    parser.add_argument("--model-seconds", type=float, default=4.0,
                        help="in-process model measurement before and after each drain")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one drain may take")
    args = parser.parse_args()
    setups = [Setup.parse(s) for s in args.setups.split(",")]
    settings = InferenceSettings()
    crops = face_crops(200, IngestSettings().jpeg_quality)
    entries = visitors_entries(crops, args.visitors, args.crops, args.cameras,
                               IngestSettings().track_sample_interval_s, t0=time.time() - 3600)
    faces = args.visitors * args.crops
    model = InProcessModel(args.face_model, crops, settings.max_batch)
    # the backend's name says how it flip-averages (e.g. onnxruntime+flip<0.65: faces below that confidence)
    print(f"machine: {os.cpu_count()} CPUs; model {args.face_model.name} ({settings.threads} threads, "
          f"{model.backend.name}); {args.visitors} visitors x {args.crops} crops on "
          f"{args.cameras} cameras = {faces} faces; database "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="footfall-load-"))
    results = []
    print("in-process model faces/s (batch {}) measured for {:.0f} s just before and after each drain; the ratio "
          "uses their mean (this machine's load varies)\n".format(settings.max_batch, args.model_seconds))
    print("CPU s/1000 faces: the aggregators', the workers' and the in-process model's own; 'CPU ratio' = model "
          "CPU / (aggregators + workers) CPU per face, the share of the pipeline's CPU that runs the model\n")
    print(f"{'setup':>12} {'drain faces/s':>14} {'model before/after':>19} {'ratio':>6} {'seconds':>8} "
          f"{'counted':>8} {'CPU: aggregators':>17} {'workers':>8} {'model':>6} {'CPU ratio':>10}")
    for setup in setups:
        before, cpu_before = model.rate(args.model_seconds)
        r = run_setup(setup, args, entries, args.visitors, faces, workdir)
        after, cpu_after = model.rate(args.model_seconds)
        r["model_rate"], model_cpu = (before + after) / 2, (cpu_before + cpu_after) / 2
        results.append(r)
        exact = "exact" if r["counted"] == r["tracks"] == r["visitors"] else f"{r['counted']}/{r['visitors']} !"
        agg_cpu, worker_cpu = 1000 * r["cpu_agg"] / faces, 1000 * r["cpu_workers"] / faces
        print(f"{str(setup):>12} {r['faces_per_s']:>14.0f} {before:>9.0f}/{after:<9.0f} "
              f"{r['faces_per_s'] / r['model_rate']:>6.2f} {r['elapsed']:>8.1f} {exact:>8} "
              f"{agg_cpu:>17.2f} {worker_cpu:>8.2f} {model_cpu:>6.2f} {model_cpu / (agg_cpu + worker_cpu):>10.2f}",
              flush=True)
    print("\nwhere the time goes: milliseconds per face, summed over processes (aggregators' stages are wall "
          "time in their main loop; 'inference' is waiting on the workers)")
    names = list(results[0]["stages"])
    print(f"{'setup':>12} " + " ".join(f"{n:>13}" for n in names))
    for r in results:
        print(f"{str(r['setup']):>12} " + " ".join(f"{1000 * r['stages'][n] / faces:>13.3f}" for n in names))
    print("\nRedis bytes per stream entry (used_memory growth while pre-filling / entries), database commits "
          "(one transaction each, 2 statements) and visitors per commit")
    for r in results:
        print(f"{str(r['setup']):>12} {r['redis_bytes']:>8.0f} B/entry {r['commits']:>6.0f} commits "
              f"{r['visitors'] / max(r['commits'], 1):>6.1f} visitors/commit "
              f"{r['commits'] / r['elapsed']:>6.1f} commits/s")
    base = results[0]["faces_per_s"]
    if len(results) > 1:
        print("\nscaling vs " + str(results[0]["setup"]) + ": " +
              ", ".join(f"{r['setup']} {r['faces_per_s'] / base:.2f}x" for r in results[1:]))


if __name__ == "__main__":
    main()
