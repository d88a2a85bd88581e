"""What used to stop the counting without crashing anything: a request too large in bytes
retried for ever, a hung (SIGSTOPped) inference worker kept in rotation, the database down
when the aggregator starts. Real Redis, real gRPC workers (in-process and as processes), real
PostgreSQL behind a TCP proxy the test stops and starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import redis
import sqlalchemy as sa

from footfall.aggregator.service import Aggregator
from footfall.config import AggregatorSettings, InferenceSettings
from footfall.embedded_redis import free_port, free_ports
from footfall.inference.client import BadCrop, InferenceClient
from footfall.inference.server import InferenceServer
from footfall.schema import MAX_CROP_BYTES, FaceMessage, StreamKeys, TrackEnd

from ..support import TcpProxy, drain, postgres_schema

pytestmark = pytest.mark.slow


def noise_jpeg(px: int, seed: int) -> bytes:
    """A px x px noise JPEG: large in bytes (it does not compress), still a valid crop."""
    pixels = np.random.default_rng(seed).integers(0, 256, (px, px, 3), np.uint8)
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()




def test_a_request_too_large_in_bytes_is_split_and_never_resent(redis_server_url, stream_prefix, face_model,
                                                                tmp_path):
    """The worker accepts 1 MB messages; the aggregator believes 16 MB: 12 crops of ~300 KB
    (a 3.6 MB request) used to get RESOURCE_EXHAUSTED, retried for ever."""
    server = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model,
                                               max_message_mb=1))
    try:
        jpegs = [noise_jpeg(400, seed) for seed in range(12)]
        assert all(200_000 < len(j) < MAX_CROP_BYTES for j in jpegs) and sum(map(len, jpegs)) > 2 * 2**20
        r = redis.Redis.from_url(redis_server_url)
        keys = StreamKeys(stream_prefix)
        for i, jpeg in enumerate(jpegs):
            r.xadd(keys.faces, FaceMessage("c", 50.0 + i, i, "c:big:1", (0, 0, 400, 400), 0.9, jpeg).encode())
        r.xadd(keys.faces, TrackEnd("c", 62.0, "c:big:1", 12).encode())
        agg = Aggregator(AggregatorSettings(redis_url=redis_server_url, stream_prefix=stream_prefix,
                                            database_url=f"sqlite:///{tmp_path}/big.db", block_ms=50,
                                            inference_targets=f"127.0.0.1:{server.port}", max_message_mb=16))
        records = drain(agg, timeout_s=60)
        assert [(v.track_id, v.faces) for v in records] == [("c:big:1", 12)]
        assert agg.client.max_message_bytes == 2**20, "the worker's limit was learned from its answer"
        assert r.xlen(keys.dead_letter) == 0
        agg.close()
    finally:
        server.stop(grace_s=1)


def test_a_single_crop_over_the_limit_is_refused_without_a_call():
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: any call would be UNAVAILABLE
    with InferenceClient(closed, deadline_s=1, retries=1, max_message_mb=1) as client:
        with pytest.raises(BadCrop) as err:
            client.predict([b"x" * (2**20 + 1)])
    assert err.value.index == 0 and "over the request limit" in str(err.value)


def test_readiness_fails_when_entries_wait_and_nothing_is_acknowledged(redis_server_url, stream_prefix, tmp_path):
    agg = Aggregator(AggregatorSettings(redis_url=redis_server_url, stream_prefix=stream_prefix,
                                        database_url=f"sqlite:///{tmp_path}/s.db", block_ms=10,
                                        inference_targets=f"127.0.0.1:{free_port()}", inference_deadline_s=0.2,
                                        inference_retries=1, stall_after_s=1.0))
    try:
        time.sleep(1.2)
        assert agg.ready(), "an idle aggregator (empty stream) is ready"
        r = redis.Redis.from_url(redis_server_url)
        r.xadd(agg.keys.faces, FaceMessage("c", 1.0, 1, "c:s:1", (0, 0, 9, 9), 0.9, b"\xff\xd8").encode())
        agg.step()  # the inference worker is unreachable: nothing can be acknowledged
        assert agg.ready(), "not yet: the stall has just begun"
        deadline = time.monotonic() + 5
        while agg.ready() and time.monotonic() < deadline:
            agg.step()
        assert not agg.ready(), "entries pending, nothing acknowledged for stall_after_s"
    finally:
        agg.close()


def start_worker(face_model, grpc_port: int, metrics_port: int) -> subprocess.Popen:
    env = {**os.environ, "FOOTFALL_GRPC_PORT": str(grpc_port), "FOOTFALL_GRPC_HOST": "127.0.0.1",
           "FOOTFALL_METRICS_PORT": str(metrics_port), "FOOTFALL_FACE_MODEL": str(face_model),
           "FOOTFALL_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "footfall.inference.server"], env=env,
                            stderr=subprocess.DEVNULL)


def requests_served(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('footfall_inference_requests_total{code="OK"}'))


def test_a_hung_worker_leaves_the_rotation_and_is_probed_back(face_model, caplog):
    """Two worker processes; one is SIGSTOPped. Without ejection every other call waited out the
    deadline (86 faces/s against 200 in the issue); with it, only the probes do."""
    grpc_a, grpc_b, metrics_a, metrics_b = free_ports(4)
    workers = [start_worker(face_model, grpc_a, metrics_a), start_worker(face_model, grpc_b, metrics_b)]
    jpeg = noise_jpeg(112, 0)
    try:
        client = InferenceClient(f"127.0.0.1:{grpc_a},127.0.0.1:{grpc_b}", deadline_s=2.0, retries=3,
                                 backoff_s=0.01, eject_s=1.0, max_eject_s=4.0)
        deadline = time.monotonic() + 60
        while True:  # both workers up
            try:
                client.predict([jpeg] * 4)
                client.predict([jpeg] * 4)
                if requests_served(metrics_a) and requests_served(metrics_b):
                    break
            except Exception:  # noqa: BLE001 - still loading the model
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

        def run(seconds: float) -> int:
            calls = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                assert len(client.predict([jpeg] * 8)) == 8
                calls += 1
            return calls

        healthy_calls = run(3.0)
        caplog.clear()
        os.kill(workers[1].pid, signal.SIGSTOP)
        hung_calls = run(6.0)
        messages = [r.getMessage() for r in caplog.records]
        waited = [m for m in messages if f"call to 127.0.0.1:{grpc_b} failed (DEADLINE_EXCEEDED" in m]
        probes = [m for m in messages if f"127.0.0.1:{grpc_b} out of rotation" in m]
        print(f"hung worker: {healthy_calls / 3.0 * 8:.0f} faces/s with both workers, "
              f"{hung_calls / 6.0 * 8:.0f} faces/s with one SIGSTOPped ({len(waited)} of {hung_calls} calls "
              f"waited the deadline on it, {len(probes) - len(waited)} short probes failed)")
        # Only the first call sent to it waits the deadline; after that, short health probes do.
        assert len(waited) == 1 and len(probes) >= 2, messages
        os.kill(workers[1].pid, signal.SIGCONT)
        before = requests_served(metrics_b)
        deadline = time.monotonic() + 15
        while requests_served(metrics_b) == before and time.monotonic() < deadline:
            client.predict([jpeg])
            time.sleep(0.05)
        assert requests_served(metrics_b) > before, "the recovered worker was probed back into the rotation"
        client.close()
    finally:
        for w in workers:
            os.kill(w.pid, signal.SIGCONT)
            w.terminate()
            w.wait(20)


def http_status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_aggregator_waits_for_the_database_at_start_instead_of_exiting(redis_server_url, stream_prefix):
    with postgres_schema() as url:
        base = sa.engine.make_url(url)
        proxy = TcpProxy((base.host or "127.0.0.1", base.port or 5432))  # not started: the database is down
        via_proxy = base.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        metrics = free_port()
        env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url, "FOOTFALL_STREAM_PREFIX": stream_prefix,
               "FOOTFALL_DATABASE_URL": via_proxy, "FOOTFALL_METRICS_PORT": str(metrics),
               "FOOTFALL_INFERENCE_TARGETS": f"127.0.0.1:{free_port()}", "FOOTFALL_LOG_FORMAT": "text"}
        proc = subprocess.Popen([sys.executable, "-m", "footfall.aggregator.service"], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while http_status(metrics, "/healthz") != 200 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                time.sleep(0.2)
            time.sleep(2.0)
            assert proc.poll() is None, f"exited while the database was down:\n{proc.stderr.read()[-2000:]}"
            assert http_status(metrics, "/healthz") == 200 and http_status(metrics, "/readyz") == 503
            proxy.start()  # the database comes back
            deadline = time.monotonic() + 30
            while http_status(metrics, "/readyz") != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert http_status(metrics, "/readyz") == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            log = proc.stderr.read()
            assert "cannot start: database unavailable" in log and "Traceback" not in log, log[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proxy.stop()
