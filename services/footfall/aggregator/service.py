"""The aggregator: face stream -> inference -> one visitor per track -> aggregate database.

Delivery guarantees (what happens when things break):

- Entries are read through a consumer group. A visitor's entries are acknowledged (and then
  deleted, so crops do not outlive their use) only after the visitor is committed to the
  database; until then they stay pending.
- On start the aggregator first re-reads its own pending entries (a restart with the same
  consumer name resumes exactly), and periodically claims entries left pending by dead
  consumers (XAUTOCLAIM). It refreshes the idle time of its own open visitors' entries so a
  live consumer's work is not claimed away.
- Counting is idempotent (``footfall.db.store.count_visitors``): a visitor redelivered after
  a crash between commit and acknowledgement is not counted twice.
- A malformed entry (whatever bytes it holds), or a crop the inference worker rejects, goes to
  the dead-letter stream with the reason and a bounded copy (image bytes left out) and
  processing continues.
- A request too large for a worker is split (by count and bytes), never resent as it was.
- Inference unavailable: nothing is acknowledged; the entries are retried with backoff.
- Database unavailable: nothing is acknowledged; the commit is retried with backoff. At
  start, the aggregator waits for the database (and Redis) with backoff.
- Counting stalled (entries pending, nothing acknowledged for ``stall_after_s``): ``/readyz``
  fails.
- Redis restarted: the client reconnects, the consumer group is created again.
- A model whose label names differ from the database schema's is refused at the first call.

Shards (FOOTFALL_STREAM_SHARDS): the ingest workers split the stream by camera. Each shard is
consumed by one aggregator at a time, the holder of its lease in Redis (``StreamKeys.lease``,
value ``consumer:token`` with a fresh token per lease; it expires ``claim_idle_ms`` after the
last renewal). Aggregators register in a sorted set and each holds about shards / live
aggregators: one with too many releases the extras, one with too few takes free or expired
leases. A new holder first takes over every entry left pending in the shard (by a dead or
departed holder), so a track's crops are folded by one aggregator. A holder checks its lease
before each commit and drops a lost shard's open visitors unacknowledged; where a commit still
races a takeover, the idempotent counting above keeps the count exact.

A visitor is final when its ``track_end`` entry arrives, or when its track has been idle for
``visit_timeout_s`` (both in stream time and here), or for 3x that long here alone (its
camera went silent).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import redis
from redis.exceptions import ResponseError
from sqlalchemy.exc import DBAPIError

from footfall.aggregator.folding import OpenVisitor
from footfall.config import AggregatorSettings
from footfall.db.migrate import upgrade
from footfall.db.records import VisitorRecord
from footfall.db.store import count_visitors, make_engine, upsert_camera_health
from footfall.inference.client import BadCrop, InferenceClient, InferenceUnavailable
from footfall.labels import EMOTIONS, RACES
from footfall.observability import (AGGREGATOR_STAGE, DB_WRITES, DEAD_LETTERS, FRAME_TO_DB, PENDING, SHARDS_OWNED,
                                    STREAM_LAG, VISITORS, ctx, redis_reachable, run_service)
from footfall.schema import CameraState, FaceMessage, MalformedMessage, StreamKeys, TrackEnd, decode_entry
from footfall.tls import channel_credentials

log = logging.getLogger("footfall.aggregator")


class ModelMismatch(RuntimeError):
    """The inference workers' model labels differ from what the database schema stores."""
DEAD_LETTER_MAXLEN = 1000
# A dead letter keeps a truncated copy of the entry (enough to see what was wrong), so the
# dead-letter stream stays under ~MAXLEN x 16 x (64 + 256) bytes = ~5 MB whatever arrives.
DEAD_LETTER_FIELDS, DEAD_LETTER_NAME_BYTES, DEAD_LETTER_VALUE_BYTES = 16, 64, 256
# One request per model batch (the workers' max_batch), several in flight at once: the workers'
# micro-batchers stay busy, and the aggregator commits the previous round's visitors meanwhile.
INFERENCE_CHUNK = 32
INFERENCE_IN_FLIGHT = 4


# A lease is taken when free, expired, or held under our own consumer name (a restart).
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. ':' then return false end
local value = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def _stage(name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        AGGREGATOR_STAGE.labels(stage=name).inc(time.perf_counter() - started)


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def dead_letter_copy(fields: dict) -> dict[bytes, bytes]:
    """What a dead letter keeps of an entry: at most DEAD_LETTER_FIELDS fields, names and values
    truncated, bytes as they came (a name need not be UTF-8), and never the face image.
    Kept names get a ``field:`` prefix so they cannot overwrite the dead letter's own fields.

    >>> copy = dead_letter_copy({b"jpeg": b"\\xff\\xd8", b"\\xff": b"x" * 1000, "ts": 1.5})
    >>> sorted(copy), len(copy[b"field:\\xff"]), copy[b"field:ts"]
    ([b'field:ts', b'field:\\xff'], 256, b'1.5')
    """
    kept = [(_b(k), _b(v)) for k, v in (fields or {}).items() if _b(k) != b"jpeg"]  # never keep face images
    return {b"field:" + k[:DEAD_LETTER_NAME_BYTES]: v[:DEAD_LETTER_VALUE_BYTES] for k, v in kept[:DEAD_LETTER_FIELDS]}


class Aggregator:
    def __init__(self, settings: AggregatorSettings, client: InferenceClient | None = None,
                 redis_client: redis.Redis | None = None) -> None:
        self.s = settings
        self.keys = StreamKeys(settings.stream_prefix, settings.stream_shards)
        # Database and Redis first: a start retried while either is down opens no channels.
        upgrade(settings.database_url)
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                                          socket_connect_timeout=5, health_check_interval=10)
        self._ensure_group()
        self.client = client or InferenceClient(settings.inference_targets, settings.inference_deadline_s,
                                                settings.inference_retries, max_message_mb=settings.max_message_mb,
                                                eject_s=settings.inference_eject_s,
                                                credentials=channel_credentials(settings))
        self.engine = make_engine(settings.database_url)
        self.open: dict[str, OpenVisitor] = {}
        self.shard_of_track: dict[str, int] = {}  # the shard (stream) an open visitor's entries are in
        self.camera_stream_ts: dict[str, float] = {}  # newest frame time seen per camera
        self.owned: dict[int, str] = {}  # shard -> our lease value (consumer:token)
        self._own_pending_cursor: dict[int, str | None] = {}  # re-read our own pending entries first
        self._take_over: set[int] = set()  # newly leased shards: claim every entry left pending there
        self._next_claim = self._next_heartbeat = self._next_health = 0.0
        self._retry_after = 0.0
        self._model_checked = False
        self.counted = 0
        self.last_progress = time.monotonic()  # last acknowledgement, or the stream seen empty
        self._inference_pool = ThreadPoolExecutor(INFERENCE_IN_FLIGHT, thread_name_prefix="inference")
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self.balance()

    # -- Redis plumbing --------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        for shard in range(self.keys.shards):
            stream = self.keys.shard_stream(shard)
            try:
                self.redis.xgroup_create(stream, self.s.consumer_group, id="0", mkstream=True)
                log.info("created consumer group", **ctx(stream=stream, group=self.s.consumer_group))
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- shard leases ------------------------------------------------------------------------------
    def balance(self) -> None:
        """Renew our leases, then hold about shards / live aggregators: release extras, take free ones."""
        with _stage("lease"):
            ttl_ms = self.s.claim_idle_ms
            now = time.time()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.keys.aggregators, {self.s.consumer_name: now})
            pipe.zremrangebyscore(self.keys.aggregators, 0, now - ttl_ms / 1000.0)
            pipe.zcard(self.keys.aggregators)
            live = max(1, int(pipe.execute()[-1]))
            for shard, value in list(self.owned.items()):
                if not self._renew(keys=[self.keys.lease(shard)], args=[value, ttl_ms]):
                    log.warning("shard lease lost", **ctx(shard=shard))
                    self._drop_shard(shard)
            share = math.ceil(self.keys.shards / live)
            while len(self.owned) > share:
                self.release_shard(max(self.owned))
            if len(self.owned) < share:
                first = zlib.crc32(self.s.consumer_name.encode()) % self.keys.shards  # spread the first picks
                for k in range(self.keys.shards):
                    shard = (first + k) % self.keys.shards
                    if shard in self.owned:
                        continue
                    value = self._acquire(keys=[self.keys.lease(shard), self.keys.lease_epoch(shard)],
                                          args=[self.s.consumer_name, ttl_ms])
                    if value:
                        self.owned[shard] = _s(value)
                        self._own_pending_cursor[shard] = "0"
                        self._take_over.add(shard)
                        log.info("shard leased", **ctx(shard=shard, lease=_s(value)))
                        if len(self.owned) >= share:
                            break
            SHARDS_OWNED.set(len(self.owned))

    def _drop_shard(self, shard: int) -> None:
        """Forget a shard: its open visitors' entries stay pending for the next holder."""
        for track in [t for t, s in self.shard_of_track.items() if s == shard]:
            self.open.pop(track, None)
            del self.shard_of_track[track]
        self.owned.pop(shard, None)
        self._own_pending_cursor.pop(shard, None)
        self._take_over.discard(shard)

    def release_shard(self, shard: int) -> None:
        value = self.owned.get(shard)
        self._drop_shard(shard)
        if value is not None:
            self._release(keys=[self.keys.lease(shard)], args=[value])
            log.info("shard released", **ctx(shard=shard))

    def _check_leases(self, shards: set[int]) -> set[int]:
        """The shards among ``shards`` whose lease we still hold (renewed); lost ones are dropped."""
        held = set()
        with _stage("lease"):
            for shard in shards:
                value = self.owned.get(shard)
                if value and self._renew(keys=[self.keys.lease(shard)], args=[value, self.s.claim_idle_ms]):
                    held.add(shard)
                else:
                    if value:
                        log.warning("shard lease lost before commit", **ctx(shard=shard))
                    self._drop_shard(shard)
        return held

    # -- reading -----------------------------------------------------------------------------------
    def _read(self) -> list[tuple[int, str, dict]]:
        """Entries of every shard we hold: our own pending ones first (after a start or an outage),
        then new ones, in one XREADGROUP."""
        if not self.owned:
            time.sleep(self.s.block_ms / 1000.0)  # standby: every shard has a live holder
            return []
        streams = {self.keys.shard_stream(shard): self._own_pending_cursor.get(shard) or ">" for shard in self.owned}
        history = any(cursor != ">" for cursor in streams.values())
        shard_by_stream = {self.keys.shard_stream(shard): shard for shard in self.owned}
        with _stage("read"):
            resp = self.redis.xreadgroup(self.s.consumer_group, self.s.consumer_name, streams,
                                         count=self.s.read_count, block=None if history else self.s.block_ms)
        out: list[tuple[int, str, dict]] = []
        for stream, entries in resp or []:
            shard = shard_by_stream[_s(stream)]
            if self._own_pending_cursor.get(shard) is not None:
                if not entries:
                    self._own_pending_cursor[shard] = None
                    continue
                self._own_pending_cursor[shard] = _s(entries[-1][0])
                self._ack_trimmed(shard, entries)
            out += [(shard, _s(i), f) for i, f in entries if f]
        if history:  # shards whose pending history came back empty are done with it
            answered = {shard_by_stream[_s(stream)] for stream, _ in resp or []}
            for shard in list(self.owned):
                if streams[self.keys.shard_stream(shard)] != ">" and shard not in answered:
                    self._own_pending_cursor[shard] = None
        return out

    def _claim_abandoned(self) -> list[tuple[int, str, dict]]:
        """Entries other consumers left pending: all of them in a shard we just took over, else
        those pending longer than claim_idle_ms (a dead consumer under the same lease name)."""
        claimed: list[tuple[int, str, dict]] = []
        with _stage("read"):
            for shard in list(self.owned):
                min_idle = 0 if shard in self._take_over else self.s.claim_idle_ms
                self._take_over.discard(shard)
                stream, start = self.keys.shard_stream(shard), "0-0"
                while True:
                    resp = self.redis.xautoclaim(stream, self.s.consumer_group, self.s.consumer_name,
                                                 min_idle_time=min_idle, start_id=start, count=100)
                    start, entries = _s(resp[0]), resp[1]
                    self._ack_trimmed(shard, entries)
                    claimed += [(shard, _s(i), f) for i, f in entries if f]
                    if start == "0-0" or not entries:
                        break
        if claimed:  # handle() skips any that our own open visitors already hold
            log.info("claimed abandoned entries", **ctx(count=len(claimed)))
        return claimed

    def _ack_trimmed(self, shard: int, entries) -> None:
        """Entries trimmed by MAXLEN while pending come back without fields: nothing to count."""
        gone = [_s(i) for i, f in entries if not f]
        if gone:
            self.redis.xack(self.keys.shard_stream(shard), self.s.consumer_group, *gone)

    def _refresh_own_entries(self) -> None:
        """Reset the idle time of entries held by open visitors (so nobody claims them away)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for track, v in self.open.items():
            by_shard[self.shard_of_track[track]] += v.entry_ids
        for shard, ids in by_shard.items():
            for i in range(0, len(ids), 500):
                self.redis.xclaim(self.keys.shard_stream(shard), self.s.consumer_group, self.s.consumer_name,
                                  min_idle_time=0, message_ids=ids[i:i + 500], justid=True)

    def _dead_letter(self, shard: int, entry_id: str, fields: dict, reason: str) -> None:
        stream = self.keys.shard_stream(shard)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letter, {**dead_letter_copy(fields), "reason": reason[:DEAD_LETTER_VALUE_BYTES],
                                          "entry_id": entry_id, "stream": stream},
                  maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(stream, self.s.consumer_group, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()
        self.last_progress = time.monotonic()
        DEAD_LETTERS.labels(reason=reason.split(":")[0][:40]).inc()
        log.warning("dead-lettered entry", **ctx(entry=entry_id, reason=reason[:DEAD_LETTER_VALUE_BYTES]))

    def _ack(self, entries: dict[int, list[str]]) -> None:
        """Acknowledge and delete, per shard (a transaction per shard: one slot each in a cluster)."""
        with _stage("ack"):
            for shard, entry_ids in entries.items():
                stream = self.keys.shard_stream(shard)
                pipe = self.redis.pipeline(transaction=True)
                for i in range(0, len(entry_ids), 500):
                    chunk = entry_ids[i:i + 500]
                    pipe.xack(stream, self.s.consumer_group, *chunk)
                    pipe.xdel(stream, *chunk)
                pipe.execute()
        self.last_progress = time.monotonic()

    # -- processing --------------------------------------------------------------------------------
    def _check_model(self) -> None:
        """Refuse a model whose label names differ from the ones the database stores."""
        info = self.client.model_info()
        if tuple(info.races) != RACES or tuple(info.emotions) != EMOTIONS:
            raise ModelMismatch(f"model {info.model_name} {info.model_version} has races {list(info.races)} and "
                                f"emotions {list(info.emotions)}; the database stores {list(RACES)} and {list(EMOTIONS)}")
        self._model_checked = True

    def handle(self, entries: list[tuple[int, str, dict]], while_inferring=None) -> None:
        """Decode, infer (chunks in flight together, ``while_inferring()`` run meanwhile) and fold."""
        faces: list[tuple[int, str, FaceMessage]] = []
        ends: list[tuple[int, str, TrackEnd]] = []
        held = {(self.shard_of_track[t], e) for t, v in self.open.items() for e in v.entry_ids}
        entries = [(s, i, f) for s, i, f in entries if (s, i) not in held]  # re-read after an outage: folded already
        if entries and not self._model_checked:
            self._check_model()
        with _stage("decode"):
            for shard, entry_id, fields in entries:
                try:
                    msg = decode_entry(fields)
                except MalformedMessage as exc:
                    self._dead_letter(shard, entry_id, fields, f"malformed: {exc}")
                    continue
                (faces if isinstance(msg, FaceMessage) else ends).append((shard, entry_id, msg))
        chunks = [faces[i:i + INFERENCE_CHUNK] for i in range(0, len(faces), INFERENCE_CHUNK)]
        started = time.perf_counter()
        futures = [self._inference_pool.submit(self.client.predict, [m.jpeg for _, _, m in chunk],
                                               ids=[i for _, i, _ in chunk]) for chunk in chunks]
        try:
            if while_inferring is not None:
                while_inferring()
        finally:
            wait(futures)
            AGGREGATOR_STAGE.labels(stage="inference").inc(time.perf_counter() - started)
            for chunk, future in zip(chunks, futures):
                error = future.exception()
                if isinstance(error, BadCrop):  # find the bad crop(s) one request at a time
                    self._infer_and_fold(chunk)
                elif error is not None:
                    raise error
                else:
                    self._fold(chunk, future.result())
        now = time.monotonic()
        for shard, entry_id, end in ends:
            if shard not in self.owned:  # lost while this round ran: the next holder folds it
                continue
            visitor = self._visitor(shard, end.camera_id, end.track_id, last_update=now)
            visitor.add_end(entry_id, end)
            self.camera_stream_ts[end.camera_id] = max(self.camera_stream_ts.get(end.camera_id, 0.0), end.ts)

    def _visitor(self, shard: int, camera_id: str, track_id: str, last_update: float = 0.0) -> OpenVisitor:
        visitor = self.open.get(track_id)
        if visitor is None:
            visitor = self.open[track_id] = OpenVisitor(camera_id, track_id, last_update=last_update)
            self.shard_of_track[track_id] = shard
        return visitor

    def _infer_and_fold(self, faces: list[tuple[int, str, FaceMessage]]) -> None:
        while faces:
            try:
                with _stage("inference"):
                    preds = self.client.predict([m.jpeg for _, _, m in faces], ids=[i for _, i, _ in faces])
            except BadCrop as exc:
                if exc.index < 0:  # the request as a whole (e.g. over the worker's size limit)
                    if len(faces) == 1:
                        shard, entry_id, msg = faces.pop()
                        self._dead_letter(shard, entry_id, msg.encode(), f"rejected by inference: {exc}")
                        continue
                    half = len(faces) // 2
                    self._infer_and_fold(faces[:half])
                    faces = faces[half:]
                    continue
                shard, entry_id, msg = faces.pop(exc.index)
                self._dead_letter(shard, entry_id, msg.encode(), f"rejected by inference: {exc}")
                continue
            break
        else:
            return
        self._fold(faces, preds)

    def _fold(self, faces: list[tuple[int, str, FaceMessage]], preds) -> None:
        with _stage("fold"):
            now = time.monotonic()
            by_track: dict[str, list[int]] = {}
            for i, (_, _, m) in enumerate(faces):
                by_track.setdefault(m.track_id, []).append(i)
                self.camera_stream_ts[m.camera_id] = max(self.camera_stream_ts.get(m.camera_id, 0.0), m.ts)
            for track_id, rows in by_track.items():
                shard, _, first = faces[rows[0]]
                if shard not in self.owned:  # lost (lease) while its crops were at inference: not ours to fold
                    continue
                visitor = self._visitor(shard, first.camera_id, track_id)
                visitor.add([faces[r][1] for r in rows], [faces[r][2].ts for r in rows], preds[rows])
                visitor.last_update = now

    def _due(self, v: OpenVisitor, now: float) -> bool:
        idle_here = now - v.last_update
        if v.ended:
            return True
        stream_idle = self.camera_stream_ts.get(v.camera_id, 0.0) - (max(v.timestamps) if v.timestamps else 0.0)
        return (idle_here > self.s.visit_timeout_s and stream_idle > self.s.visit_timeout_s) \
            or idle_here > 3 * self.s.visit_timeout_s

    def finalize_due(self, force: bool = False) -> list[VisitorRecord]:
        now = time.monotonic()
        due = [v for v in self.open.values() if force or self._due(v, now)]
        if not due:
            return []
        # Fencing: commit only the shards whose lease we still hold (a lost one's visitors are dropped).
        held = self._check_leases({self.shard_of_track[v.track_id] for v in due})
        due = [v for v in due if self.shard_of_track.get(v.track_id) in held]
        records = [v.finalize(self.s.bucket_s, self.s.enable_race, self.s.enable_emotion)
                   for v in due if v.faces >= self.s.min_track_faces]
        with _stage("commit"):
            new = count_visitors(self.engine, records) if records else []
        if records:
            DB_WRITES.labels(kind="visitors").inc()
        committed = time.time()
        for r in new:  # redelivered visitors counted before are not counted (nor measured) again
            VISITORS.labels(camera=r.camera_id).inc()
            FRAME_TO_DB.observe(max(0.0, committed - r.last_ts))
        acks: dict[int, list[str]] = defaultdict(list)
        for v in due:
            acks[self.shard_of_track[v.track_id]] += v.entry_ids
        self._ack(acks)
        for v in due:
            del self.open[v.track_id]
            del self.shard_of_track[v.track_id]
        self.counted += len(new)
        if records:
            log.info("visitors counted", **ctx(new=len(new), finalized=len(records), noise=len(due) - len(records)))
        return records

    def sync_camera_health(self, lag: int) -> None:
        """Copy the ingest workers' camera states from Redis to the database (operator view);
        ``lag`` is the stream's, the same for every camera."""
        from datetime import datetime, timezone

        def utc(ts: float):
            return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None) if ts > 0 else None

        rows = []
        for cam in sorted(_s(c) for c in self.redis.smembers(self.keys.cameras)):
            fields = self.redis.hgetall(self.keys.camera(cam))
            try:
                state = CameraState.decode(cam, fields)
            except MalformedMessage:
                continue
            rows.append({"camera_id": cam, "state": state.state, "last_frame_at": utc(state.last_frame_ts),
                         "frames_per_s": state.frames_per_s, "faces_per_s": state.faces_per_s, "stream_lag": lag,
                         "updated_at": utc(state.updated_ts)})
        upsert_camera_health(self.engine, rows)

    def ready(self) -> bool:
        """Redis answers, and the counting moves: something was acknowledged within
        ``stall_after_s``, or nothing waits (the stream is empty)."""
        if not redis_reachable(self.redis):
            return False
        try:
            if time.monotonic() - self.last_progress <= self.s.stall_after_s:
                return True
            if sum(self.redis.xlen(self.keys.shard_stream(i)) for i in range(self.keys.shards)) == 0:
                self.last_progress = time.monotonic()
                return True
        except redis.RedisError:
            return False
        log.warning("not ready: entries pending and nothing acknowledged",
                    **ctx(seconds=round(time.monotonic() - self.last_progress)))
        return False

    def stream_lag(self) -> int:
        """Entries not yet delivered to the group, over all shards. Counted entries are deleted,
        so a stream holds exactly the undelivered plus the pending ones."""
        lag = 0
        for shard in range(self.keys.shards):
            stream = self.keys.shard_stream(shard)
            pending = self.redis.xpending(stream, self.s.consumer_group)["pending"]
            lag += max(0, self.redis.xlen(stream) - int(pending))
        return lag

    def step(self) -> list[VisitorRecord]:
        """One round: read (or claim), infer, fold, commit what is final. Returns the visitors finalized."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.balance()  # before reading: a lost shard's visitors are dropped, not refreshed
            self._refresh_own_entries()
            self._next_heartbeat = now + self.s.claim_idle_ms / 3000.0
        entries: list[tuple[int, str, dict]] = []
        finalized: list[VisitorRecord] = []
        if now >= self._retry_after:
            if now >= self._next_claim or self._take_over:
                entries += self._claim_abandoned()
                self._next_claim = now + self.s.claim_idle_ms / 2000.0
            entries += self._read()
            try:
                # The visitors that became final in earlier rounds are committed while this round infers.
                self.handle(entries, while_inferring=lambda: finalized.extend(self.finalize_due()))
            except InferenceUnavailable as exc:
                # Nothing of these entries is acknowledged: re-read our pending list after a pause.
                log.error("inference unavailable, retrying: %s", exc)
                self._own_pending_cursor = dict.fromkeys(self.owned, "0")
                self._retry_after = time.monotonic() + 2.0
        else:
            time.sleep(min(0.2, self._retry_after - now))
        finalized += self.finalize_due()
        if now >= self._next_health:
            lag = self.stream_lag()
            STREAM_LAG.set(lag)
            self.sync_camera_health(lag)
            PENDING.set(sum(len(v.entry_ids) for v in self.open.values()))
            self._next_health = now + 5.0
        return finalized

    def run(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                self.step()
                delay = 0.5
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s), reconnecting in %.1fs", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
                self._reconnected()
            except DBAPIError as exc:
                # Nothing was acknowledged: the visitors are committed on a later round.
                log.warning("database unavailable (%s), retrying in %.1fs", str(exc).splitlines()[0], delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: the stream and group are gone
                    log.warning("consumer group missing (Redis restarted?), recreating")
                    self._reconnected()
                else:
                    raise
        log.info("aggregator stopping", **ctx(open_visitors=len(self.open)))

    def _reconnected(self) -> None:
        try:
            self._ensure_group()
            self._own_pending_cursor = dict.fromkeys(self.owned, "0")
            self._next_heartbeat = 0.0  # renew (or re-take) the leases at once: Redis may have lost them
        except (redis.ConnectionError, redis.TimeoutError):
            pass

    def close(self) -> None:
        """Stop without finalizing open visitors: their entries stay pending for the next run,
        and the leases are released so another aggregator takes the shards at once."""
        try:
            for shard in list(self.owned):
                self.release_shard(shard)
            self.redis.zrem(self.keys.aggregators, self.s.consumer_name)
        except redis.RedisError as exc:
            log.warning("leases not released (they expire): %s", exc)
        self._inference_pool.shutdown(wait=True)
        self.client.close()
        self.engine.dispose()


def start_aggregator(settings: AggregatorSettings, stop: threading.Event) -> Aggregator | None:
    """The aggregator, once Redis and the database answer (retried with backoff, 0.5 s -> 10 s);
    None when stopped first."""
    delay = 0.5
    while not stop.is_set():
        try:
            return Aggregator(settings)
        except (DBAPIError, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("cannot start: %s unavailable (%s), retrying in %.1fs",
                        "database" if isinstance(exc, DBAPIError) else "redis", str(exc).splitlines()[0], delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
    return None


def main() -> None:
    settings = AggregatorSettings()
    run_service(settings, 9103, lambda stop: start_aggregator(settings, stop))


if __name__ == "__main__":
    main()
