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
- A malformed entry, or a crop the inference worker rejects, goes to the dead-letter stream
  with the reason (image bytes left out) and processing continues.
- Inference unavailable: nothing is acknowledged; the entries are retried with backoff.
- Database unavailable: nothing is acknowledged; the commit is retried with backoff.
- Redis restarted: the client reconnects, the consumer group is created again.
- A model whose label names differ from the database schema's is refused at the first call.

A visitor is final when its ``track_end`` entry arrives, or when its track has been idle for
``visit_timeout_s`` (both in stream time and here), or for 3x that long here alone (its
camera went silent).
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.exceptions import ResponseError
from sqlalchemy.exc import DBAPIError

from footfall.aggregator.folding import OpenVisitor, VisitorRecord
from footfall.config import AggregatorSettings
from footfall.db.migrate import upgrade
from footfall.db.store import count_visitors, make_engine, upsert_camera_health
from footfall.inference.client import BadCrop, InferenceClient, InferenceUnavailable
from footfall.labels import EMOTIONS, RACES
from footfall.observability import (DB_WRITES, DEAD_LETTERS, FRAME_TO_DB, PENDING, STREAM_LAG, VISITORS, ctx,
                                    serve_http, setup_logging, shutdown_event)
from footfall.schema import CameraState, FaceMessage, MalformedMessage, StreamKeys, TrackEnd, decode_entry

log = logging.getLogger("footfall.aggregator")


class ModelMismatch(RuntimeError):
    """The inference workers' model labels differ from what the database schema stores."""
DEAD_LETTER_MAXLEN = 1000
INFERENCE_CHUNK = 64


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Aggregator:
    def __init__(self, settings: AggregatorSettings, client: InferenceClient | None = None,
                 redis_client: redis.Redis | None = None) -> None:
        self.s = settings
        self.keys = StreamKeys(settings.stream_prefix)
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                                          socket_connect_timeout=5, health_check_interval=10)
        self.client = client or InferenceClient(settings.inference_targets, settings.inference_deadline_s,
                                                settings.inference_retries)
        upgrade(settings.database_url)
        self.engine = make_engine(settings.database_url)
        self.open: dict[str, OpenVisitor] = {}
        self.camera_stream_ts: dict[str, float] = {}  # newest frame time seen per camera
        self._own_pending_cursor: str | None = "0"  # re-read our own pending entries first
        self._next_claim = self._next_heartbeat = self._next_health = 0.0
        self._retry_after = 0.0
        self._model_checked = False
        self.counted = 0
        self._ensure_group()

    # -- Redis plumbing --------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.faces, self.s.consumer_group, id="0", mkstream=True)
            log.info("created consumer group", **ctx(stream=self.keys.faces, group=self.s.consumer_group))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> list[tuple[str, dict]]:
        if self._own_pending_cursor is not None:
            resp = self.redis.xreadgroup(self.s.consumer_group, self.s.consumer_name,
                                         {self.keys.faces: self._own_pending_cursor}, count=self.s.read_count)
            entries = resp[0][1] if resp else []
            if not entries:
                self._own_pending_cursor = None
                return []
            self._own_pending_cursor = _s(entries[-1][0])
            self._ack_trimmed(entries)
            return [(_s(i), f) for i, f in entries if f]
        resp = self.redis.xreadgroup(self.s.consumer_group, self.s.consumer_name, {self.keys.faces: ">"},
                                     count=self.s.read_count, block=self.s.block_ms)
        return [(_s(i), f) for i, f in resp[0][1]] if resp else []

    def _claim_abandoned(self) -> list[tuple[str, dict]]:
        """Entries other (dead) consumers left pending longer than claim_idle_ms."""
        claimed: list[tuple[str, dict]] = []
        start = "0-0"
        while True:
            resp = self.redis.xautoclaim(self.keys.faces, self.s.consumer_group, self.s.consumer_name,
                                         min_idle_time=self.s.claim_idle_ms, start_id=start, count=100)
            start, entries = _s(resp[0]), resp[1]
            self._ack_trimmed(entries)
            claimed += [(_s(i), f) for i, f in entries if f]
            if start == "0-0" or not entries:
                break
        if claimed:  # handle() skips any that our own open visitors already hold
            log.info("claimed abandoned entries", **ctx(count=len(claimed)))
        return claimed

    def _ack_trimmed(self, entries) -> None:
        """Entries trimmed by MAXLEN while pending come back without fields: nothing to count."""
        gone = [_s(i) for i, f in entries if not f]
        if gone:
            self.redis.xack(self.keys.faces, self.s.consumer_group, *gone)

    def _refresh_own_entries(self) -> None:
        """Reset the idle time of entries held by open visitors (so nobody claims them away)."""
        ids = [e for v in self.open.values() for e in v.entry_ids]
        for i in range(0, len(ids), 500):
            self.redis.xclaim(self.keys.faces, self.s.consumer_group, self.s.consumer_name, min_idle_time=0,
                              message_ids=ids[i:i + 500], justid=True)

    def _dead_letter(self, entry_id: str, fields: dict, reason: str) -> None:
        kept = {_s(k): v for k, v in (fields or {}).items() if _s(k) != "jpeg"}  # never keep face images
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letter, {**kept, "reason": reason, "entry_id": entry_id, "stream": self.keys.faces},
                  maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self.keys.faces, self.s.consumer_group, entry_id)
        pipe.xdel(self.keys.faces, entry_id)
        pipe.execute()
        DEAD_LETTERS.labels(reason=reason.split(":")[0][:40]).inc()
        log.warning("dead-lettered entry", **ctx(entry=entry_id, reason=reason))

    def _ack(self, entry_ids: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for i in range(0, len(entry_ids), 500):
            chunk = entry_ids[i:i + 500]
            pipe.xack(self.keys.faces, self.s.consumer_group, *chunk)
            pipe.xdel(self.keys.faces, *chunk)
        pipe.execute()

    # -- processing --------------------------------------------------------------------------------
    def _check_model(self) -> None:
        """Refuse a model whose label names differ from the ones the database stores."""
        info = self.client.model_info()
        if tuple(info.races) != RACES or tuple(info.emotions) != EMOTIONS:
            raise ModelMismatch(f"model {info.model_name} {info.model_version} has races {list(info.races)} and "
                                f"emotions {list(info.emotions)}; the database stores {list(RACES)} and {list(EMOTIONS)}")
        self._model_checked = True

    def handle(self, entries: list[tuple[str, dict]]) -> None:
        faces: list[tuple[str, FaceMessage]] = []
        ends: list[tuple[str, TrackEnd]] = []
        held = {e for v in self.open.values() for e in v.entry_ids}
        entries = [(i, f) for i, f in entries if i not in held]  # re-read after an outage: folded already
        if entries and not self._model_checked:
            self._check_model()
        for entry_id, fields in entries:
            try:
                msg = decode_entry(fields)
            except MalformedMessage as exc:
                self._dead_letter(entry_id, fields, f"malformed: {exc}")
                continue
            (faces if isinstance(msg, FaceMessage) else ends).append((entry_id, msg))
        for i in range(0, len(faces), INFERENCE_CHUNK):
            self._infer_and_fold(faces[i:i + INFERENCE_CHUNK])
        now = time.monotonic()
        for entry_id, end in ends:
            visitor = self.open.setdefault(end.track_id, OpenVisitor(end.camera_id, end.track_id, last_update=now))
            visitor.add_end(entry_id, end)
            self.camera_stream_ts[end.camera_id] = max(self.camera_stream_ts.get(end.camera_id, 0.0), end.ts)

    def _infer_and_fold(self, faces: list[tuple[str, FaceMessage]]) -> None:
        while faces:
            try:
                preds = self.client.predict([m.jpeg for _, m in faces], ids=[i for i, _ in faces])
            except BadCrop as exc:
                if exc.index < 0:  # the request as a whole (e.g. over the worker's size limit)
                    if len(faces) == 1:
                        entry_id, msg = faces.pop()
                        self._dead_letter(entry_id, msg.encode(), f"rejected by inference: {exc}")
                        continue
                    half = len(faces) // 2
                    self._infer_and_fold(faces[:half])
                    faces = faces[half:]
                    continue
                entry_id, msg = faces.pop(exc.index)
                self._dead_letter(entry_id, msg.encode(), f"rejected by inference: {exc}")
                continue
            break
        else:
            return
        now = time.monotonic()
        by_track: dict[str, list[int]] = {}
        for i, (_, m) in enumerate(faces):
            by_track.setdefault(m.track_id, []).append(i)
            self.camera_stream_ts[m.camera_id] = max(self.camera_stream_ts.get(m.camera_id, 0.0), m.ts)
        for track_id, rows in by_track.items():
            first = faces[rows[0]][1]
            visitor = self.open.setdefault(track_id, OpenVisitor(first.camera_id, track_id))
            visitor.add([faces[r][0] for r in rows], [faces[r][1].ts for r in rows], preds[rows])
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
        records = [v.finalize(self.s.bucket_s, self.s.enable_race, self.s.enable_emotion)
                   for v in due if v.faces >= self.s.min_track_faces]
        new = count_visitors(self.engine, records) if records else []
        if records:
            DB_WRITES.labels(kind="visitors").inc()
        committed = time.time()
        for r in new:  # redelivered visitors counted before are not counted (nor measured) again
            VISITORS.labels(camera=r.camera_id).inc()
            FRAME_TO_DB.observe(max(0.0, committed - r.last_ts))
        self._ack([e for v in due for e in v.entry_ids])
        for v in due:
            del self.open[v.track_id]
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

    def stream_lag(self) -> int:
        """Entries not yet delivered to this group. Counted entries are deleted, so the stream
        holds exactly the undelivered plus the pending ones."""
        pending = self.redis.xpending(self.keys.faces, self.s.consumer_group)["pending"]
        return max(0, self.redis.xlen(self.keys.faces) - int(pending))

    def step(self) -> list[VisitorRecord]:
        """One round: read (or claim), infer, fold, commit what is final. Returns the visitors finalized."""
        now = time.monotonic()
        entries: list[tuple[str, dict]] = []
        if now >= self._retry_after:
            if now >= self._next_claim:
                entries += self._claim_abandoned()
                self._next_claim = now + self.s.claim_idle_ms / 2000.0
            entries += self._read()
            try:
                self.handle(entries)
            except InferenceUnavailable as exc:
                # Nothing of these entries is acknowledged: re-read our pending list after a pause.
                log.error("inference unavailable, retrying: %s", exc)
                self._own_pending_cursor = "0"
                self._retry_after = time.monotonic() + 2.0
        else:
            time.sleep(min(0.2, self._retry_after - now))
        finalized = self.finalize_due()
        if now >= self._next_heartbeat:
            self._refresh_own_entries()
            self._next_heartbeat = now + self.s.claim_idle_ms / 3000.0
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
            self._own_pending_cursor = "0"
        except (redis.ConnectionError, redis.TimeoutError):
            pass

    def close(self) -> None:
        """Stop without finalizing open visitors: their entries stay pending for the next run."""
        self.client.close()
        self.engine.dispose()


def main() -> None:
    settings = AggregatorSettings()
    setup_logging(settings.log_level, settings.log_format)
    stop = shutdown_event()
    agg = Aggregator(settings)

    def ready() -> bool:
        try:
            return bool(agg.redis.ping())
        except redis.RedisError:
            return False

    http = serve_http(settings.metrics_port or 9103, ready=ready)
    try:
        agg.run(stop)
    finally:
        agg.close()
        http.close()


if __name__ == "__main__":
    main()
