"""Poison stream entries against the real aggregator, a real Redis, a real gRPC inference server
and a real database: whatever bytes an entry holds, it goes to the dead-letter stream with a
reason, everything else is counted, and the aggregator neither crashes nor stalls.

The property-based test draws entries of every kind (face, track_end, unknown) from valid ones
with any field dropped, replaced by arbitrary bytes or by a hostile number, or joined by extra
fields with arbitrary names (hypothesis; bounded ``max_examples``, derandomized for CI).
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import cv2
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from footfall.aggregator.service import (DEAD_LETTER_FIELDS, DEAD_LETTER_NAME_BYTES, DEAD_LETTER_VALUE_BYTES,
                                         Aggregator, dead_letter_copy)
from footfall.config import AggregatorSettings, InferenceSettings
from footfall.inference.server import InferenceServer
from footfall.schema import FaceMessage, MalformedMessage, StreamKeys, TrackEnd, decode_entry

from ..support import POSTGRES_URL_VARIABLE, drain, postgres_schema

pytestmark = pytest.mark.slow

HOSTILE_TEXT = [b"nan", b"inf", b"-inf", b"1e999", b"-1e999", b"1e12", b"-5", b"9" * 5000, b"", b"\xff\xfe",
                b"[1e999, 0, 10, 10]", b"[nan, 0, 1, 1]", b"[" * 5000, b"[1, 2, 3, 4, 5]", b'{"a": 1}', b"\x00",
                b"face", b"track_end", b"door\x00", b"x\n1", "caf\u00e9".encode(), b"0x10", b"1_000"]
FIELD_NAMES = [b"v", b"kind", b"camera", b"ts", b"frame", b"track", b"box", b"score", b"jpeg", b"faces"]
_serial = iter(range(10**9))


def _jpeg() -> bytes:
    gradient = np.add.outer(np.arange(112), np.arange(112)).astype(np.uint8)
    return cv2.imencode(".jpg", np.dstack([gradient] * 3))[1].tobytes()


JPEG = _jpeg()


def valid_entry(kind: str, track: str) -> dict[bytes, bytes]:
    msg = (FaceMessage("p", 100.0, 1, track, (0, 0, 60, 60), 0.9, JPEG) if kind == "face"
           else TrackEnd("p", 101.0, track, 1))
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in msg.encode().items()}


@st.composite
def poison_entries(draw) -> dict[bytes, bytes]:
    """An entry of any kind with arbitrary damage (it may also come out valid)."""
    kind = draw(st.sampled_from(["face", "track_end", "other"]))
    fields = valid_entry("face" if kind == "other" else kind, f"p:{next(_serial)}")
    if kind == "other":
        fields[b"kind"] = draw(st.binary(max_size=12))
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "bytes", "hostile", "text"]))
        if action == "drop":
            fields.pop(name, None)
        elif action == "bytes":
            fields[name] = draw(st.binary(max_size=64))
        elif action == "hostile":
            fields[name] = draw(st.sampled_from(HOSTILE_TEXT))
        else:
            fields[name] = draw(st.text(max_size=20)).encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 3))):  # extra fields, names of any bytes (not UTF-8 included)
        fields[draw(st.binary(min_size=1, max_size=80))] = draw(st.binary(max_size=400))
    if not fields:
        fields[b"x"] = b""  # Redis needs one field
    return fields


@pytest.fixture(scope="module")
def pipeline(redis_server_url, face_model, tmp_path_factory):
    """One real inference server, one database (PostgreSQL when configured: it refuses more
    text than SQLite) and one aggregator with its own key prefix, shared by this module."""
    with ExitStack() as stack:
        server = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model,
                                                   max_wait_ms=1.0))
        stack.callback(server.stop, 1)
        if os.environ.get(POSTGRES_URL_VARIABLE):
            db_url = stack.enter_context(postgres_schema())
        else:
            db_url = f"sqlite:///{tmp_path_factory.mktemp('poison')}/p.db"
        prefix = f"fftest-poison-{os.getpid()}"
        agg = Aggregator(AggregatorSettings(redis_url=redis_server_url, stream_prefix=prefix, database_url=db_url,
                                            block_ms=10, inference_targets=f"127.0.0.1:{server.port}",
                                            visit_timeout_s=0.05, claim_idle_ms=600_000))
        stack.callback(agg.close)
        r = redis.Redis.from_url(redis_server_url)
        stack.callback(lambda: r.delete(*(list(r.scan_iter(f"{prefix}:*")) or ["-"])))
        yield agg, r




def publish_with_visitor(agg: Aggregator, r: redis.Redis, poison: list[dict]) -> str:
    """A valid two-crop visitor with the poison entries between its crops; returns its track id."""
    track = f"ok:{next(_serial)}"
    keys = agg.keys
    r.xadd(keys.faces, valid_entry("face", track))
    for fields in poison:
        r.xadd(keys.faces, fields)
    r.xadd(keys.faces, valid_entry("face", track) | {b"ts": b"100.5", b"frame": b"2"})
    r.xadd(keys.faces, valid_entry("track_end", track) | {b"faces": b"2"})
    return track


def dead_letters(r: redis.Redis, keys: StreamKeys) -> list[dict]:
    return [f for _, f in r.xrange(keys.dead_letter)]


def test_the_issues_poison_entries_are_dead_lettered_and_the_rest_is_counted(pipeline):
    agg, r = pipeline
    r.delete(agg.keys.dead_letter)
    poison = [
        {b"kind": b"face", b"\xff": b"x"},  # a field name that is not UTF-8
        valid_entry("face", "p:box") | {b"box": b"[1e999,0,10,10]"},  # int(inf): OverflowError
        valid_entry("face", "p:nan") | {b"ts": b"nan"},
        valid_entry("face", "p:inf") | {b"ts": b"inf"},
        valid_entry("track_end", "p:future") | {b"ts": b"1e12"},  # no time bucket holds year 33658
        {b"kind": b"face", b"camera": b"c", b"blob": os.urandom(5 * 1024 * 1024)},  # 5 MB extra field
    ]
    track = publish_with_visitor(agg, r, poison)
    records = drain(agg, timeout_s=20.0)
    assert [v.track_id for v in records] == [track], "the valid visitor is counted"
    dead = dead_letters(r, agg.keys)
    reasons = [f[b"reason"].decode() for f in dead]
    assert len(dead) == len(poison), reasons
    assert all(x.startswith("malformed: ") for x in reasons), reasons
    assert sum("'box'" in x for x in reasons) == 1, reasons
    assert sum("'ts' is not a finite number" in x or "'ts' = 1" in x for x in reasons) == 3, reasons
    assert b"field:\xff" in dead[0], "the undecodable name is kept as bytes"
    biggest = max(sum(len(k) + len(v) for k, v in f.items()) for f in dead)
    assert biggest < DEAD_LETTER_FIELDS * (DEAD_LETTER_NAME_BYTES + DEAD_LETTER_VALUE_BYTES) + 1024, biggest
    assert r.memory_usage(agg.keys.dead_letter) < 64 * 1024, "the 5 MB field is not copied to the dead letters"


@settings(max_examples=int(os.environ.get("FOOTFALL_FUZZ_EXAMPLES", "250")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(poison=st.lists(poison_entries(), min_size=1, max_size=6))
def test_fuzzed_entries_never_stop_the_counting(pipeline, poison):
    agg, r = pipeline
    newest = r.xrevrange(agg.keys.dead_letter, count=1)
    after = f"({newest[0][0].decode()}" if newest else "-"
    track = publish_with_visitor(agg, r, poison)
    records = drain(agg, timeout_s=20.0)
    assert track in [v.track_id for v in records], "the valid visitor beside the poison is counted"
    expected_dead = 0
    for fields in poison:
        try:
            decode_entry(fields)
        except MalformedMessage:
            expected_dead += 1
    new_dead = r.xrange(agg.keys.dead_letter, min=after)
    # Schema-valid entries may still be refused by the inference worker (their crop bytes):
    # they are dead-lettered as 'rejected by inference'; every other dead letter is 'malformed'.
    malformed = [f for _, f in new_dead if f[b"reason"].startswith(b"malformed: ")]
    assert len(malformed) == expected_dead
    for _, f in new_dead:
        assert b"field:jpeg" not in f
        assert all(len(v) <= max(DEAD_LETTER_VALUE_BYTES, 200) for v in f.values())


@settings(max_examples=int(os.environ.get("FOOTFALL_FUZZ_DECODE_EXAMPLES", "3000")), deadline=None,
          derandomize=True)
@given(fields=poison_entries())
def test_decoding_any_entry_gives_a_message_or_says_why(fields):
    """The schema alone, many more cases: any fields give a message or MalformedMessage (never
    another exception), a decoded message has finite, bucketable times and storable ids, and the
    dead-letter copy of anything is bounded."""
    from footfall.aggregator.folding import bucket_start

    try:
        msg = decode_entry(fields)
    except MalformedMessage as exc:
        assert str(exc)
    else:
        bucket_start(msg.ts, 60)
        assert "\x00" not in msg.camera_id + msg.track_id
    copy = dead_letter_copy(fields)
    assert len(copy) <= DEAD_LETTER_FIELDS and b"field:jpeg" not in copy
    assert all(len(k) <= DEAD_LETTER_NAME_BYTES + 6 and len(v) <= DEAD_LETTER_VALUE_BYTES for k, v in copy.items())
