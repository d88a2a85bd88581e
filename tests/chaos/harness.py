"""The chaos suite's pipeline: real service processes (inference workers, aggregator), a real
Redis and a real database, fed a fixed input, with the faults the tests inject (kill -9,
SIGSTOP, Redis restart, database behind a proxy that drops).

The fixed input is ``VISITORS`` visitors as the ingest worker publishes them (face crops, then
a track end), from a seeded set of drawn faces, published at a steady pace by a thread so that
faults land while entries flow. The result of a run is its aggregate table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import redis
import sqlalchemy as sa

from footfall.db.store import make_engine
from footfall.embedded_redis import free_ports
from footfall.schema import FaceMessage, StreamKeys, TrackEnd

from ..support import peak_rss

VISITORS = 30
CROPS_PER_VISITOR = 3
T0 = 1_700_000_000.0


def drawn_face(rng: np.random.Generator) -> bytes:
    """A 112x112 JPEG of a drawn face (skin tone, eyes, mouth vary): crops whose predictions
    differ, so the aggregate table has several cells."""
    img = np.full((112, 112, 3), rng.integers(40, 200, 3), np.uint8)
    skin = tuple(int(v) for v in rng.integers(60, 240, 3))
    cv2.ellipse(img, (56, 60), (int(rng.integers(30, 40)), int(rng.integers(40, 50))), 0, 0, 360, skin, -1)
    for x in (40, 72):
        cv2.circle(img, (x, 50), int(rng.integers(3, 7)), (20, 20, 20), -1)
    cv2.ellipse(img, (56, 82), (int(rng.integers(8, 18)), int(rng.integers(2, 9))), 0, 0, 180, (40, 20, 120), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def fixed_input(seed: int = 7) -> list[list]:
    """Per visitor, its entries: CROPS_PER_VISITOR faces and a track end."""
    rng = np.random.default_rng(seed)
    visitors = []
    for v in range(VISITORS):
        camera, track, t = f"cam{v % 2}", f"cam{v % 2}:chaos:{v}", T0 + 11.0 * v
        faces = [FaceMessage(camera, t + 0.4 * i, i, track, (10, 10, 80, 80), 0.9, drawn_face(rng))
                 for i in range(CROPS_PER_VISITOR)]
        visitors.append(faces + [TrackEnd(camera, t + 1.5, track, CROPS_PER_VISITOR)])
    return visitors


def counts(db_url: str) -> list[tuple]:
    """The aggregate table, sorted: (camera, bucket, age band, gender, emotion, visitors, age sum)."""
    from footfall.db.models import VisitorCount as V

    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(V.camera_id, V.bucket_start, V.age_band, V.gender, V.emotion, V.visitors,
                                       V.age_sum))
            return sorted((*r[:6], round(float(r[6]), 1)) for r in rows)
    finally:
        engine.dispose()


def total(db_url: str) -> int:
    return sum(row[5] for row in counts(db_url))


class Service:
    """One service as a child process (``python -m module``) with its log in a file."""

    def __init__(self, module: str, env: dict, log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.proc: subprocess.Popen | None = None
        self.peak = 0

    def start(self) -> Service:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def note_peak(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.peak = max(self.peak, peak_rss(self.proc.pid))
            except (OSError, ValueError):
                pass

    def kill9(self) -> None:
        self.note_peak()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.note_peak()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Pipeline:
    """Inference workers and an aggregator as processes, around a given Redis and database."""

    def __init__(self, redis_url: str, prefix: str, db_url: str, face_model: Path, logs: Path,
                 workers: int = 1, **aggregator_env: str) -> None:
        self.redis_url, self.prefix, self.db_url = redis_url, prefix, db_url
        self.keys = StreamKeys(prefix)
        ports = free_ports(workers + 1)
        base = {**os.environ, "FOOTFALL_REDIS_URL": redis_url, "FOOTFALL_STREAM_PREFIX": prefix,
                "FOOTFALL_DATABASE_URL": db_url, "FOOTFALL_LOG_FORMAT": "text", "FOOTFALL_METRICS_PORT": "0"}
        self.grpc_ports = ports[:workers]
        self.workers = [Service("footfall.inference.server",
                                {**base, "FOOTFALL_GRPC_PORT": str(p), "FOOTFALL_GRPC_HOST": "127.0.0.1",
                                 "FOOTFALL_FACE_MODEL": str(face_model), "FOOTFALL_THREADS": "1",
                                 "FOOTFALL_METRICS_PORT": str(free_ports(1)[0])},
                                logs / f"inference-{i}.log") for i, p in enumerate(self.grpc_ports)]
        self.aggregator = Service("footfall.aggregator.service",
                                  {**base, "FOOTFALL_INFERENCE_TARGETS": ",".join(f"127.0.0.1:{p}"
                                                                                  for p in self.grpc_ports),
                                   "FOOTFALL_CONSUMER_NAME": "chaos", "FOOTFALL_BLOCK_MS": "100",
                                   "FOOTFALL_INFERENCE_DEADLINE_S": "2", "FOOTFALL_METRICS_PORT": str(ports[-1]),
                                   **aggregator_env},
                                  logs / "aggregator.log")
        self._stop_sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop_sampling.wait(0.2):
            for service in (*self.workers, self.aggregator):
                service.note_peak()

    def start(self) -> Pipeline:
        for w in self.workers:
            w.start()
        self.aggregator.start()
        self._sampler.start()
        return self

    def stop(self) -> None:
        self._stop_sampling.set()
        for service in (self.aggregator, *self.workers):
            service.stop()

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {s.log.name}\n{s.log.read_text()[-chars:]}"
                         for s in (self.aggregator, *self.workers) if s.log.exists())

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every inference worker serves (model loaded) and the aggregator is ready, so
        that fault moments, drawn from here on, land while entries flow."""
        import urllib.request

        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        pending = [f"127.0.0.1:{p}" for p in self.grpc_ports]
        while pending:
            with grpc.insecure_channel(pending[0]) as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if health.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.pop(0)
                        continue
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not serving after {timeout_s} s\n{self.log_tail()}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{self.aggregator.env['FOOTFALL_METRICS_PORT']}/readyz"
        while True:
            try:
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"aggregator not ready after {timeout_s} s\n{self.log_tail()}")
            time.sleep(0.2)

    def wait_counted(self, expected: int, timeout_s: float = 90.0) -> None:
        """Until ``expected`` visitors are counted and the stream is empty (a bounded wait)."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if total(self.db_url) >= expected and client.xlen(self.keys.faces) == 0:
                    return
            except (redis.RedisError, sa.exc.OperationalError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"{total(self.db_url)} of {expected} visitors counted after {timeout_s} s\n"
                             f"{self.log_tail()}")


class Publisher(threading.Thread):
    """Publishes the fixed input at a steady pace, as an ingest worker would; entries it cannot
    publish (Redis down) are retried, as the ingest worker's next publish would reconnect."""

    def __init__(self, redis_url: str, keys: StreamKeys, visitors: list[list], per_s: float = 40.0,
                 poison: list[dict] | None = None) -> None:
        super().__init__(daemon=True)
        self.redis_url, self.keys, self.visitors, self.interval = redis_url, keys, visitors, 1.0 / per_s
        self.poison = list(poison or [])
        self.published = 0
        self.resume = threading.Event()
        self.resume.set()

    def run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=1)
        entries = [e.encode() for v in self.visitors for e in v]
        step = max(1, len(entries) // (len(self.poison) + 1))
        for i, fields in enumerate(entries):
            if self.poison and i % step == step - 1:
                entries_now = [self.poison.pop(), fields]
            else:
                entries_now = [fields]
            for entry in entries_now:
                deadline = time.monotonic() + 30
                while True:
                    self.resume.wait(30)
                    try:
                        client.xadd(self.keys.faces, entry)
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
            self.published += 1
            time.sleep(self.interval)
