"""Scale-out by shards: the stream split by camera, one aggregator per shard at a time (leases in
real Redis), shards moving between aggregator processes, and exact counts through a kill -9."""

import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import pytest
import redis
import sqlalchemy as sa

from footfall.aggregator.service import Aggregator
from footfall.config import AggregatorSettings
from footfall.db.migrate import upgrade
from footfall.db.store import make_engine, total_visitors
from footfall.embedded_redis import free_ports
from footfall.schema import FaceMessage, StreamKeys, TrackEnd

pytestmark = pytest.mark.slow
SHARDS = 4


@pytest.fixture(scope="module")
def crops(shared_data) -> list[bytes]:
    """Real test-split faces as 112x112 JPEG crops."""
    from footfall.demo import sample_faces

    return [cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(f, (112, 112)), cv2.COLOR_RGB2BGR))[1].tobytes()
            for f in sample_faces(shared_data, 12, seed=5)]


def visitors(crops: list[bytes], count: int, cameras: int = 12, per_track: int = 3) -> list:
    """``count`` visitors spread over ``cameras``, in time order, as the ingest publishes them."""
    entries = []
    for v in range(count):
        camera, start = f"cam{v % cameras}", 1000.0 + 2.0 * (v // cameras)
        track = f"cam{v % cameras}:t:{v}"
        entries += [FaceMessage(camera, start + 0.4 * k, k, track, (0, 0, 80, 80), 0.9, crops[(v + k) % len(crops)])
                    for k in range(per_track)]
        entries.append(TrackEnd(camera, start + 0.4 * per_track, track, per_track))
    return sorted(entries, key=lambda e: e.ts)


def publish(r: redis.Redis, keys: StreamKeys, entries: list) -> None:
    pipe = r.pipeline(transaction=False)
    for e in entries:
        pipe.xadd(keys.faces_for(e.camera_id), e.encode())
    pipe.execute()


def table(db_url: str) -> list:
    from footfall.db.models import VisitorCount as V

    with make_engine(db_url).connect() as c:
        rows = c.execute(sa.select(V.camera_id, V.bucket_start, V.age_band, V.gender, V.race, V.emotion, V.visitors,
                                   V.age_sum))
        return sorted((*r[:7], round(r[7], 2)) for r in rows)


def settings(redis_url, prefix, db_url, port, **kw) -> AggregatorSettings:
    return AggregatorSettings(redis_url=redis_url, stream_prefix=prefix, stream_shards=SHARDS, database_url=db_url,
                              inference_targets=f"127.0.0.1:{port}", block_ms=20, **kw)


def drained(r: redis.Redis, keys: StreamKeys) -> bool:
    return all(r.xlen(keys.shard_stream(s)) == 0 for s in range(keys.shards))


def test_cameras_keep_their_shard_and_shards_use_cluster_hash_tags():
    keys = StreamKeys("ff", shards=8)
    assert {keys.shard_of("door")} == {StreamKeys("ff", shards=8).shard_of("door")}
    assert len({keys.shard_of(f"cam{i}") for i in range(100)}) == 8, "cameras spread over every shard"
    assert keys.shard_stream(3) == "ff:{faces:3}" and keys.lease(3) == "ff:{faces:3}:lease"
    assert StreamKeys("ff").faces == StreamKeys("ff", shards=1).faces_for("any") == "ff:faces", "1 shard: one stream"
    with pytest.raises(ValueError):
        StreamKeys("ff", shards=0)


def test_aggregators_share_the_shards_and_a_lost_lease_commits_nothing(redis_server_url, stream_prefix,
                                                                      inference_server, crops, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix, SHARDS)
    a = Aggregator(settings(redis_server_url, stream_prefix, db, inference_server.port, consumer_name="a"))
    assert sorted(a.owned) == list(range(SHARDS)), "alone, an aggregator takes every shard"
    b = Aggregator(settings(redis_server_url, stream_prefix, db, inference_server.port, consumer_name="b"))
    assert not b.owned, "every shard has a live holder"
    a.balance()  # two live aggregators: a gives half away ...
    b.balance()  # ... and b takes it
    assert len(a.owned) == len(b.owned) == SHARDS // 2 and not set(a.owned) & set(b.owned)

    entries = [e for e in visitors(crops, 24) if keys.shard_of(e.camera_id) in a.owned and isinstance(e, FaceMessage)]
    publish(r, keys, entries)  # no track ends: the visitors stay open
    for _ in range(3):  # the first round re-reads a's own (empty) pending history
        a.step()
    assert a.open, "a folds its shards' visitors"
    stolen = next(iter(a.owned))
    r.set(keys.lease(stolen), "c:999", px=60_000)  # a's lease expired and another aggregator took the shard
    a.finalize_due(force=True)
    lost_tracks = {e.track_id for e in entries if keys.shard_of(e.camera_id) == stolen}
    assert stolen not in a.owned and not lost_tracks & set(a.open)
    with make_engine(db).connect() as c:
        counted = {row[0] for row in c.execute(sa.text("select track_id from counted_tracks"))}
    assert counted and not counted & lost_tracks, "nothing of the lost shard is committed"
    pending = r.xpending(keys.shard_stream(stolen), "aggregator")["pending"]
    assert pending == sum(1 for e in entries if keys.shard_of(e.camera_id) == stolen), "its entries stay pending"
    b.close()
    a.close()


def test_killing_an_aggregator_while_shards_move_keeps_counts_exact(redis_server_url, stream_prefix,
                                                                   inference_server, crops, tmp_path):
    entries = visitors(crops, 90)
    r = redis.Redis.from_url(redis_server_url)
    # The reference: the same entries drained by one aggregator, uninterrupted.
    reference_prefix, reference_db = f"{stream_prefix}:ref", f"sqlite:///{tmp_path}/ref.db"
    publish(r, StreamKeys(reference_prefix, SHARDS), entries)
    ref = Aggregator(settings(redis_server_url, reference_prefix, reference_db, inference_server.port))
    deadline = time.monotonic() + 120
    while not (drained(r, ref.keys) and not ref.open):
        ref.step()
        assert time.monotonic() < deadline, "the reference run did not drain"
    ref.close()
    expected = table(reference_db)
    assert sum(row[6] for row in expected) == 90

    keys = StreamKeys(stream_prefix, SHARDS)
    db = f"sqlite:///{tmp_path}/run.db"
    upgrade(db)
    thirds = [entries[i * len(entries) // 3:(i + 1) * len(entries) // 3] for i in range(3)]
    publish(r, keys, thirds[0])
    killed = threading.Event()

    def camera_traffic() -> None:
        """The middle third arrives as cameras send it, while shards move; the last after the kill."""
        for i in range(0, len(thirds[1]), 6):
            publish(r, keys, thirds[1][i:i + 6])
            time.sleep(0.05)
        killed.wait(120)
        publish(r, keys, thirds[2])
    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url, "FOOTFALL_STREAM_PREFIX": stream_prefix,
           "FOOTFALL_STREAM_SHARDS": str(SHARDS), "FOOTFALL_DATABASE_URL": db, "FOOTFALL_READ_COUNT": "4",
           "FOOTFALL_INFERENCE_TARGETS": f"127.0.0.1:{inference_server.port}", 
           "FOOTFALL_CLAIM_IDLE_MS": "1500", "FOOTFALL_BLOCK_MS": "20", "FOOTFALL_LOG_LEVEL": "WARNING"}

    metrics_ports = dict(zip(("first", "second"), free_ports(2)))

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "footfall.aggregator.service"],
                                env={**env, "FOOTFALL_CONSUMER_NAME": name,
                                     "FOOTFALL_METRICS_PORT": str(metrics_ports[name])}, stderr=subprocess.DEVNULL)

    def holders() -> dict[int, str]:
        return {s: (r.get(keys.lease(s)) or b"").decode().split(":")[0] for s in range(SHARDS)}

    engine = make_engine(db)
    first = start("first")
    second = None
    try:
        deadline = time.monotonic() + 60
        while total_visitors(engine) < 5:
            assert time.monotonic() < deadline and first.poll() is None, "first aggregator counts nothing"
            time.sleep(0.01)
        second = start("second")  # shards start moving: first releases half, second takes them
        traffic = threading.Thread(target=camera_traffic, daemon=True)
        traffic.start()
        while "second" not in holders().values():
            assert time.monotonic() < deadline and second.poll() is None, "no shard moved to the second aggregator"
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)  # mid-move: first dies holding leases, visitors open, entries pending
        first.wait()
        killed.set()
        counted_at_kill = total_visitors(engine)
        assert 0 < counted_at_kill < 90, "the kill did not land mid-run"
        assert "first" in holders().values(), "first died holding leases"
        deadline = time.monotonic() + 120
        while not (total_visitors(engine) >= 90 and drained(r, keys)):
            assert time.monotonic() < deadline, f"not drained: {total_visitors(engine)} of 90 counted, {holders()}"
            assert second.poll() is None, "the second aggregator died"
            time.sleep(0.1)
        assert set(holders().values()) == {"second"}, "the dead aggregator's shards moved to the live one"
        time.sleep(0.5)  # nothing more arrives late
        assert table(db) == expected, "every visitor counted once, with all of its crops"
        with engine.connect() as c:
            assert c.execute(sa.text("select count(distinct track_id) from counted_tracks")).scalar_one() == 90
    finally:
        killed.set()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)


def test_the_ingest_publishes_each_camera_to_its_shard(redis_server_url, stream_prefix, crops):
    from footfall.ingest.service import Publisher

    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix, SHARDS)
    entries = visitors(crops, 24)
    Publisher(r, keys, maxlen=1000).publish(entries)
    for shard in range(SHARDS):
        cameras = {f[b"camera"].decode() for _, f in r.xrange(keys.shard_stream(shard))}
        assert cameras and {keys.shard_of(c) for c in cameras} == {shard}
    assert sum(r.xlen(keys.shard_stream(s)) for s in range(SHARDS)) == len(entries)


def test_one_commit_counts_many_visitors_of_one_cell_once_each(db_url):
    """The bulk commit sums visitors of the same cell before its single upsert, and skips tracks
    counted before (SQLite and PostgreSQL)."""
    from datetime import datetime

    from footfall.aggregator.folding import VisitorRecord
    from footfall.db.store import count_visitors

    engine = make_engine(db_url)

    def record(i: int, age: float = 30.0) -> VisitorRecord:
        return VisitorRecord("door", f"door:t:{i}", datetime(2026, 1, 1), 0, 1, 3, age, "25-34", "male", "", "happy")

    assert len(count_visitors(engine, [record(0)])) == 1
    new = count_visitors(engine, [record(i, 30.0 + i) for i in range(5)] + [record(7), record(7)])
    assert sorted(v.track_id for v in new) == [f"door:t:{i}" for i in (1, 2, 3, 4, 7)]
    assert table(db_url) == [("door", datetime(2026, 1, 1), "25-34", "male", "", "happy", 6, 30.0 + 31 + 32 + 33 + 34 + 30)]


def test_a_shard_lost_while_its_crops_are_at_inference_is_not_folded(redis_server_url, stream_prefix,
                                                                     inference_server, crops, tmp_path):
    """The lease runs out during a round (the commit of earlier visitors notices): the crops of
    that shard coming back from inference are left to the next holder, not folded into visitors
    nobody would commit or release."""
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix, SHARDS)
    a = Aggregator(settings(redis_server_url, stream_prefix, f"sqlite:///{tmp_path}/l.db", inference_server.port,
                            consumer_name="a"))
    faces = [e for e in visitors(crops, 24) if isinstance(e, FaceMessage)]
    lost = keys.shard_of(faces[0].camera_id)
    first_half = [e for e in faces if e.frame == 0]
    publish(r, keys, first_half)
    deadline = time.monotonic() + 60
    while len(a.open) < len({e.track_id for e in first_half}):
        assert time.monotonic() < deadline, "the first crops were not folded"
        a.step()
    publish(r, keys, [e for e in faces if e.frame > 0])

    def lease_runs_out():
        r.set(keys.lease(lost), "b:999", px=60_000)
        a.finalize_due(force=True)

    a.handle(a._read(), while_inferring=lease_runs_out)
    assert lost not in a.owned
    assert not [t for t, v in a.open.items() if keys.shard_of(v.camera_id) == lost], "nothing of the lost shard kept"
    assert a.open, "the other shards' crops are folded"
    a.close()
