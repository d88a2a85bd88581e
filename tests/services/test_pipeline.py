"""The pipeline through real Redis, a real gRPC server and a real database (SQLite and
PostgreSQL), including what happens when parts crash or receive garbage."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import cv2
import numpy as np
import pytest
import redis
import sqlalchemy as sa

from footfall.aggregator.service import Aggregator
from footfall.config import AggregatorSettings, IngestSettings
from footfall.db.store import make_engine
from footfall.ingest.service import IngestWorker
from footfall.schema import FaceMessage, StreamKeys, TrackEnd

from ..support import drain

pytestmark = pytest.mark.slow


def run_ingest(redis_url, prefix, models_dir, cameras, **kw):
    settings = IngestSettings(redis_url=redis_url, stream_prefix=prefix, cameras=cameras, models_dir=models_dir,
                              realtime=False, **kw)
    worker = IngestWorker(settings)
    worker.start()
    worker.join(timeout=120)
    assert not worker.alive(), "ingest did not finish its file sources"
    return worker




def table(db_url):
    from footfall.db.models import VisitorCount as V

    with make_engine(db_url).connect() as c:
        rows = c.execute(sa.select(V.camera_id, V.bucket_start, V.age_band, V.gender, V.race, V.emotion, V.visitors,
                                   V.age_sum))
        return sorted((*r[:7], round(r[7], 2)) for r in rows)


@pytest.fixture(scope="module")
def face_jpeg(shared_data) -> bytes:
    """One real test-split face as a 112x112 JPEG crop."""
    from footfall.demo import sample_faces

    return cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(sample_faces(shared_data, 1)[0], (112, 112)),
                                             cv2.COLOR_RGB2BGR))[1].tobytes()


def visitor_entries(jpeg: bytes, track: str = "c:s:1", crops: int = 3, t0: float = 5.0) -> list:
    """One visitor as the ingest worker publishes it: ``crops`` face entries, then its track end."""
    return [FaceMessage("c", t0 + i, i, track, (0, 0, 60, 60), 0.9, jpeg) for i in range(crops)] + \
        [TrackEnd("c", t0 + crops, track, crops)]


def publish(client: redis.Redis, keys: StreamKeys, entries: list) -> None:
    for entry in entries:
        client.xadd(keys.faces, entry.encode())


def aggregator(redis_url, prefix, db_url, port, **kw):
    s = AggregatorSettings(redis_url=redis_url, stream_prefix=prefix, database_url=db_url, block_ms=50,
                           inference_targets=port if isinstance(port, str) else f"127.0.0.1:{port}", **kw)
    return Aggregator(s)


def test_ingest_publishes_schema_entries_and_camera_state(redis_server_url, stream_prefix, models_dir,
                                                          synthetic_clip):
    path, truth = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"entrance={path}")
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    entries = r.xrange(keys.faces)
    faces = [FaceMessage.decode(f) for _, f in entries if f[b"kind"] == b"face"]
    ends = [TrackEnd.decode(f) for _, f in entries if f[b"kind"] == b"track_end"]
    assert {e.track_id for e in ends} == {f.track_id for f in faces}, "every track with crops is closed once"
    assert abs(len(ends) - len(truth)) <= 1, (len(ends), len(truth))
    crop = cv2.imdecode(np.frombuffer(faces[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (112, 112, 3) and all(f.camera_id == "entrance" for f in faces)
    state = {k.decode(): v.decode() for k, v in r.hgetall(keys.camera("entrance")).items()}
    assert state["state"] == "ended" and float(state["last_frame_ts"]) > 0


def test_stream_is_bounded_when_nobody_consumes(redis_server_url, stream_prefix, models_dir, synthetic_clip):
    path, _ = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"a={path}", stream_maxlen=10,
               track_sample_interval_s=0.0)
    length = redis.Redis.from_url(redis_server_url).xlen(StreamKeys(stream_prefix).faces)
    assert length <= 10 + 100, f"MAXLEN ~10 not applied: {length} entries"  # '~' trims whole nodes (100)


def test_end_to_end_counts_and_rows_match_visitors(redis_server_url, stream_prefix, models_dir, synthetic_clip,
                                                   db_url, inference_server):
    path, truth = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"entrance={path}")
    agg = aggregator(redis_server_url, stream_prefix, db_url, inference_server.port)
    records = drain(agg)
    assert abs(len(records) - len(truth)) <= 0.1 * len(truth), f"{len(records)} visitors, truth {len(truth)}"
    # Every stored row is exactly the fold of the finalized visitors.
    expected = Counter()
    age_sums = Counter()
    for v in records:
        key = (v.camera_id, v.bucket_start, v.age_band, v.gender, v.race, v.emotion)
        expected[key] += 1
        age_sums[key] += v.age
    stored = table(db_url)
    want = sorted((k[0], k[1], *k[2:6], n, round(age_sums[k], 2)) for k, n in expected.items())
    assert [row[:6] for row in stored] == [row[:6] for row in want]
    assert [row[6] for row in stored] == [row[6] for row in want]
    assert np.allclose([row[7] for row in stored], [row[7] for row in want], atol=0.02)
    assert sum(row[6] for row in stored) == len(records)
    assert {row[4] for row in stored} == {""}, "race is off by default: never stored"
    assert all(row[5] for row in stored), "emotion is on by default"
    assert redis.Redis.from_url(redis_server_url).xlen(StreamKeys(stream_prefix).faces) == 0, \
        "crops are deleted once counted"
    agg.close()


def test_aggregator_killed_mid_run_counts_the_same_as_uninterrupted(redis_server_url, stream_prefix, models_dir,
                                                                   synthetic_clip, inference_server, tmp_path):
    path, _ = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"entrance={path}")
    r = redis.Redis.from_url(redis_server_url)
    twin = f"{stream_prefix}:twin"  # the same entries, for the interrupted run
    for _, fields in r.xrange(StreamKeys(stream_prefix).faces):
        r.xadd(StreamKeys(twin).faces, fields)
    db_a, db_b = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    drain(aggregator(redis_server_url, stream_prefix, db_a, inference_server.port))
    uninterrupted = table(db_a)

    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url, "FOOTFALL_STREAM_PREFIX": twin,
           "FOOTFALL_DATABASE_URL": db_b, "FOOTFALL_INFERENCE_TARGETS": f"127.0.0.1:{inference_server.port}",
           "FOOTFALL_READ_COUNT": "4", "FOOTFALL_METRICS_PORT": "0", "FOOTFALL_CONSUMER_NAME": "first",
           "FOOTFALL_CLAIM_IDLE_MS": "500"}
    from footfall.db.migrate import upgrade

    upgrade(db_b)
    proc = subprocess.Popen([sys.executable, "-m", "footfall.aggregator.service"], env=env,
                            stderr=subprocess.DEVNULL)
    engine = make_engine(db_b)
    deadline, counted = time.monotonic() + 60, 0
    while time.monotonic() < deadline and counted < 3:
        with engine.connect() as c:
            counted = c.execute(sa.text("select coalesce(sum(visitors), 0) from visitor_counts")).scalar()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, entries left pending
    proc.wait()
    assert 0 < counted < sum(row[6] for row in uninterrupted), "the kill did not land mid-run"
    time.sleep(0.6)
    # A new consumer (another name) claims what the dead one left pending.
    restarted = aggregator(redis_server_url, twin, db_b, inference_server.port, consumer_name="second",
                           claim_idle_ms=500)
    drain(restarted)
    assert table(db_b) == uninterrupted


def test_a_message_processed_twice_is_counted_once(redis_server_url, stream_prefix, db_url, inference_server,
                                                  face_jpeg):
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    entries = visitor_entries(face_jpeg, t0=1000.0)
    publish(r, keys, entries)
    agg = aggregator(redis_server_url, stream_prefix, db_url, inference_server.port)
    records = drain(agg)
    assert len(records) == 1 and agg.counted == 1
    publish(r, keys, entries)  # replay: as if the commit happened but the acknowledgement was lost in a crash
    drain(agg)
    assert agg.counted == 1 and sum(row[6] for row in table(db_url)) == 1


def test_malformed_and_corrupt_entries_go_to_the_dead_letter_stream(redis_server_url, stream_prefix, db_url,
                                                                   inference_server, face_jpeg):
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    jpeg = face_jpeg
    good = [FaceMessage("c", 10.0 + i, i, "c:s:1", (0, 0, 50, 50), 0.9, jpeg) for i in range(3)]
    r.xadd(keys.faces, good[0].encode())
    r.xadd(keys.faces, {"kind": "face", "camera": "c"})  # missing fields
    r.xadd(keys.faces, {"garbage": "1"})  # not ours at all
    bad_jpeg = FaceMessage("c", 11.5, 9, "c:s:1", (0, 0, 50, 50), 0.9, b"\xff\xd8 truncated")
    r.xadd(keys.faces, bad_jpeg.encode())
    for m in good[1:]:
        r.xadd(keys.faces, m.encode())
    r.xadd(keys.faces, TrackEnd("c", 12.0, "c:s:1", 4).encode())
    agg = aggregator(redis_server_url, stream_prefix, db_url, inference_server.port)
    drain(agg)
    dead = r.xrange(keys.dead_letter)
    reasons = [f[b"reason"].decode() for _, f in dead]
    assert len(dead) == 3, reasons
    assert any("missing field 'ts'" in x for x in reasons) and any("missing field 'kind'" in x for x in reasons)
    assert any("rejected by inference" in x and "undecodable" in x for x in reasons)
    assert all(b"jpeg" not in f for _, f in dead), "dead letters never keep face images"
    assert sum(row[6] for row in table(db_url)) == 1, "the visitor of the good crops is still counted"


def test_processing_continues_when_one_inference_worker_stops(redis_server_url, stream_prefix, models_dir,
                                                             synthetic_clip, inference_server, face_model, tmp_path):
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    path, truth = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"entrance={path}")
    second = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model))
    agg = aggregator(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/x.db",
                     f"127.0.0.1:{inference_server.port},127.0.0.1:{second.port}", read_count=8,
                     inference_deadline_s=2)
    agg.step()
    inference_server.stop(grace_s=0.5)
    records = drain(agg)
    second.stop(grace_s=0.5)
    assert abs(agg.counted - len(truth)) <= 0.1 * len(truth) and len(records) > 0


def test_workers_reconnect_after_redis_restarts(models_dir, inference_server, tmp_path, face_jpeg):
    from footfall.embedded_redis import EmbeddedRedis, free_port
    from footfall.ingest.service import Publisher

    port = free_port()
    server = EmbeddedRedis(port).start()
    url = server.url
    agg = aggregator(url, "rr", f"sqlite:///{tmp_path}/r.db", inference_server.port, visit_timeout_s=0.5)
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    publisher = Publisher(client, StreamKeys("rr"), 1000)

    def visitor(track):
        return visitor_entries(face_jpeg, track, crops=2)

    stop = threading.Event()
    thread = threading.Thread(target=agg.run, args=(stop,), daemon=True)
    thread.start()
    publisher.publish(visitor("c:s:1"))
    deadline = time.monotonic() + 20
    while agg.counted < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agg.counted == 1
    server.stop()  # Redis goes away (no persistence: the stream and the group are gone too)
    with pytest.raises(redis.ConnectionError):
        publisher.publish(visitor("c:s:2"))
    time.sleep(1.0)
    server = EmbeddedRedis(port).start()
    try:
        deadline = time.monotonic() + 10
        while True:  # the ingest side reconnects on its next call
            try:
                publisher.publish(visitor("c:s:3"))
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        deadline = time.monotonic() + 30
        while agg.counted < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agg.counted == 2, "the aggregator recreated its group and counted the visitor after the restart"
    finally:
        stop.set()
        thread.join(10)
        server.stop()


def test_dead_camera_reconnects_with_backoff_and_missing_file_fails(redis_server_url, stream_prefix, models_dir,
                                                                   tmp_path):
    from footfall.embedded_redis import free_port
    from footfall.observability import CAMERA_RECONNECTS

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(5000))
    settings = IngestSettings(redis_url=redis_server_url, stream_prefix=stream_prefix, models_dir=models_dir,
                              cameras=f"dead=http://127.0.0.1:{free_port()}/live.mjpg,gone={tmp_path}/none.mp4,"
                                      f"bad={corrupt}", reconnect_initial_s=0.1, reconnect_max_s=0.4)
    worker = IngestWorker(settings)
    before = CAMERA_RECONNECTS.labels(camera="dead")._value.get()
    worker.start()
    time.sleep(2.0)
    states = {w.cam.camera_id: w.state for w in worker.workers}
    assert states == {"dead": "reconnecting", "gone": "failed", "bad": "failed"}, states
    assert CAMERA_RECONNECTS.labels(camera="dead")._value.get() - before >= 3
    r = redis.Redis.from_url(redis_server_url)
    assert r.hget(StreamKeys(stream_prefix).camera("dead"), "state") == b"reconnecting"
    worker.stop.set()
    worker.join(timeout=5)
    assert not worker.alive()


def test_footfall_local_runs_the_sample_clip(redis_server_url, stream_prefix, shared_data, tmp_path):
    """The README's run command end to end as processes; the clip is edited into 4 shots with
    1, 3, 1 and 6 faces of at least 24 px (annotated by hand): 11 visitor tracks."""
    clip = shared_data / "video" / "short_hamilton_clip.mp4"
    db = f"sqlite:///{tmp_path}/local.db"
    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url}
    out = subprocess.run([sys.executable, "-m", "footfall.local", "--source", f"stage={clip}", "--no-dashboard",
                          "--fast", "--exit-when-done", "--prefix", stream_prefix, "--database-url", db],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    counted = sum(row[6] for row in table(db))
    assert 10 <= counted <= 12, f"{counted} visitors, truth 11\n{out.stdout[-1500:]}"
    assert "done." in out.stdout


def test_services_serve_health_and_metrics_and_stop_on_sigterm(redis_server_url, stream_prefix, face_model,
                                                              tmp_path):
    import urllib.request

    from footfall.embedded_redis import free_ports

    grpc_port, m_inf, m_agg = free_ports(3)
    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url, "FOOTFALL_STREAM_PREFIX": stream_prefix,
           "FOOTFALL_DATABASE_URL": f"sqlite:///{tmp_path}/s.db", "FOOTFALL_FACE_MODEL": str(face_model)}
    procs = {
        m_inf: subprocess.Popen([sys.executable, "-m", "footfall.inference.server"], stderr=subprocess.PIPE,
                                env={**env, "FOOTFALL_GRPC_PORT": str(grpc_port), "FOOTFALL_METRICS_PORT": str(m_inf)}),
        m_agg: subprocess.Popen([sys.executable, "-m", "footfall.aggregator.service"], stderr=subprocess.PIPE,
                                env={**env, "FOOTFALL_INFERENCE_TARGETS": f"127.0.0.1:{grpc_port}",
                                     "FOOTFALL_METRICS_PORT": str(m_agg)}),
    }
    try:
        for port in procs:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"service on metrics port {port} never became ready"
                    time.sleep(0.2)
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            assert "footfall_inference_latency_seconds" in metrics and "footfall_stream_lag" in metrics
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            assert proc.wait(20) == 0, proc.stderr.read().decode()[-1500:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


class _RecordingEvent(threading.Event):
    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if len(self.waits) >= 5:
            self.set()
        return super().wait(0)


def test_a_flapping_stream_backs_off_and_a_reader_crash_reconnects(redis_server_url, stream_prefix, models_dir,
                                                                  monkeypatch):
    """A source that opens but delivers nothing must not reset the backoff; an exception in the
    reader reconnects the camera instead of ending its thread."""
    from footfall.ingest import service as ingest

    class OpensButNoFrames:
        def isOpened(self):
            return True

        def grab(self):
            return False

        def get(self, _):
            return 25.0

        def release(self):
            pass

    monkeypatch.setattr(ingest.CameraSource, "reachable", lambda self: True)
    monkeypatch.setattr(ingest.CameraSource, "open", lambda self: OpensButNoFrames())
    settings = IngestSettings(redis_url=redis_server_url, stream_prefix=stream_prefix, models_dir=models_dir,
                              cameras="cam=rtsp://127.0.0.1:1/x", reconnect_initial_s=0.5, reconnect_max_s=4)
    stop = _RecordingEvent()
    worker = IngestWorker(settings, stop)
    worker.workers[0].run()
    assert [w for w in stop.waits if w] == [0.5, 1.0, 2.0, 4.0, 4.0]

    class BrokenReader(OpensButNoFrames):
        def grab(self):
            raise RuntimeError("decoder exploded")

    monkeypatch.setattr(ingest.CameraSource, "open", lambda self: BrokenReader())
    stop = _RecordingEvent()
    worker = IngestWorker(settings, stop)
    worker.workers[0].run()  # returns when stopped, having reconnected instead of dying
    assert len(stop.waits) >= 5 and worker.workers[0].state == "ended"


def test_requests_over_the_workers_limit_are_split(redis_server_url, stream_prefix, models_dir, synthetic_clip,
                                                   face_model, tmp_path):
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    path, truth = synthetic_clip
    run_ingest(redis_server_url, stream_prefix, models_dir, f"entrance={path}")
    small = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model,
                                              max_request_faces=3))
    try:
        agg = aggregator(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/s.db", small.port)
        drain(agg)
        assert abs(agg.counted - len(truth)) <= 0.1 * len(truth)
        assert redis.Redis.from_url(redis_server_url).xlen(StreamKeys(stream_prefix).dead_letter) == 0
    finally:
        small.stop(grace_s=0.5)


def test_database_outage_is_retried_and_a_foreign_model_is_refused(redis_server_url, stream_prefix,
                                                                    inference_server, face_jpeg, tmp_path,
                                                                    monkeypatch):
    from sqlalchemy.exc import OperationalError

    from footfall.aggregator import service as agg_service

    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    jpeg = face_jpeg
    publish(r, keys, visitor_entries(jpeg, crops=2))
    agg = aggregator(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/o.db", inference_server.port)
    real_count = agg_service.count_visitors
    failures = []

    def flaky(engine, visitors):
        if not failures:
            failures.append(1)
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real_count(engine, visitors)

    monkeypatch.setattr(agg_service, "count_visitors", flaky)
    stop = threading.Event()
    thread = threading.Thread(target=agg.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while agg.counted < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert failures and agg.counted == 1 and r.xlen(keys.faces) == 0

    other = aggregator(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/o.db", inference_server.port)
    info = other.client.model_info()
    del info.emotions[:]
    info.emotions.extend(["happy", "sad"])
    monkeypatch.setattr(other.client, "model_info", lambda: info)
    r.xadd(keys.faces, FaceMessage("c", 9.0, 0, "c:s:2", (0, 0, 60, 60), 0.9, jpeg).encode())
    with pytest.raises(agg_service.ModelMismatch, match="emotions"):
        for _ in range(3):  # the first round replays the (empty) pending list
            other.step()


def test_nothing_is_acknowledged_while_no_inference_worker_answers(redis_server_url, stream_prefix, face_model,
                                                                   face_jpeg, tmp_path):
    from footfall.config import InferenceSettings
    from footfall.embedded_redis import free_port
    from footfall.inference.server import InferenceServer

    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    publish(r, keys, visitor_entries(face_jpeg))
    port = free_port()
    agg = aggregator(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/d.db", port, inference_deadline_s=0.5,
                     inference_retries=2)
    agg.client.backoff_s = 0.01
    for _ in range(3):
        agg.step()  # inference is down: reads, fails, acknowledges nothing
    assert r.xpending(keys.faces, agg.s.consumer_group)["pending"] == 4 and agg.counted == 0
    assert table(agg.s.database_url) == []
    server = InferenceServer(InferenceSettings(grpc_port=port, grpc_host="127.0.0.1", face_model=face_model))
    try:
        agg._retry_after = 0.0  # skip the 2 s pause the aggregator takes after an outage
        drain(agg)
        assert agg.counted == 1 and r.xlen(keys.faces) == 0
    finally:
        server.stop(grace_s=0.5)
