"""The Redis message schema: stream keys and entry fields, defined once and imported everywhere.

Ingest workers append to the face stream; the aggregator consumes it through a consumer
group. Two kinds of entries:

- ``face``: one aligned face crop (JPEG bytes) with camera id, frame timestamp, track id,
  box and detection score;
- ``track_end``: the tracker closed a track; its visitor can be finalized. It carries the
  visitor's dwell (first to last seen), how they crossed the camera's counting line (entry,
  exit, passer-by) and the zones they were in, with the time in each (``footfall.counting``).

Entries that cannot be decoded go to the dead-letter stream with the reason.

Example:
    >>> msg = FaceMessage(camera_id="door", ts=1700000000.5, frame=12, track_id="door:ab12:3",
    ...                   box=(10, 20, 64, 64), score=0.93, jpeg=b"\\xff\\xd8...")
    >>> FaceMessage.decode(msg.encode()) == msg
    True
    >>> FaceMessage.decode({b"kind": b"face", b"camera": b"door"})
    Traceback (most recent call last):
    ...
    footfall.schema.MalformedMessage: missing field 'ts'
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

SCHEMA_VERSION = "1"
KIND_FACE = "face"
KIND_TRACK_END = "track_end"
MAX_CROP_BYTES = 512 * 1024  # a 112x112 JPEG is ~4 KB; anything this big is not a crop
MAX_CAMERA_ID = 64  # also the database columns' sizes (footfall.db.models uses these)
MAX_TRACK_ID = 96
# Frame times a time bucket can hold: from the epoch to 2100-01-01 (an entry outside is not a frame time).
MAX_TS = 4102444800.0
MAX_BOX_TEXT = 100  # '[x, y, w, h]' is ~20 characters; longer text is not a box (and json recursion is bounded)
CROSSINGS = ("entry", "exit", "passer-by")  # how a track crossed its camera's counting line (footfall.counting)
MAX_ZONE_NAME = 32


class MalformedMessage(ValueError):
    """A stream entry that does not follow this schema (the message says why)."""


@dataclass(frozen=True)
class StreamKeys:
    """Every Redis key Footfall uses, under one prefix (FOOTFALL_STREAM_PREFIX).

    The face stream is split into ``shards`` streams (FOOTFALL_STREAM_SHARDS) by camera, so
    several aggregators can share the work while every crop of a track stays in one stream.
    One shard keeps the single stream ``{prefix}:faces``; with more, shard ``i`` is
    ``{prefix}:{faces:i}``, a Redis Cluster hash tag that puts each shard and its lease keys in
    one slot (different shards land on different nodes).

        >>> keys = StreamKeys("footfall", shards=4)
        >>> keys.shard_stream(3), keys.shard_of("door") == keys.shard_of("door"), StreamKeys().faces
        ('footfall:{faces:3}', True, 'footfall:faces')
    """

    prefix: str = "footfall"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"stream shards must be >= 1, got {self.shards}")

    @property
    def faces(self) -> str:
        """The face stream of a single-shard setup (shard 0)."""
        return self.shard_stream(0)

    def shard_stream(self, shard: int) -> str:
        return f"{self.prefix}:faces" if self.shards == 1 else f"{self.prefix}:{{faces:{shard}}}"

    def shard_of(self, camera_id: str) -> int:
        """The shard of a camera: a stable hash (CRC-32, the same in every process and release)."""
        return zlib.crc32(camera_id.encode()) % self.shards

    def faces_for(self, camera_id: str) -> str:
        """The stream a camera's crops and track ends go to."""
        return self.shard_stream(self.shard_of(camera_id))

    def lease(self, shard: int) -> str:
        """Which aggregator consumes a shard (value ``consumer:token``, expires unless renewed)."""
        return f"{self.prefix}:{{faces:{shard}}}:lease"

    def lease_epoch(self, shard: int) -> str:
        """Counter of a shard's leases: each new lease gets the next token (fencing)."""
        return f"{self.prefix}:{{faces:{shard}}}:epoch"

    @property
    def aggregators(self) -> str:
        """Sorted set of live aggregators (score: last heartbeat), to share the shards fairly."""
        return f"{self.prefix}:aggregators"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:faces:dead"

    def camera(self, camera_id: str) -> str:
        """Hash with the ingest worker's live state of one camera (operator view)."""
        return f"{self.prefix}:camera:{camera_id}"

    @property
    def cameras(self) -> str:
        """Set of the camera ids that have reported."""
        return f"{self.prefix}:cameras"


def _num(value: float) -> str:
    """A float as Redis text (a numpy float's repr would read 'np.float64(...)')."""
    return repr(float(value))


def _ids(camera: str, track: str) -> None:
    if not camera or not track:
        raise MalformedMessage("empty camera or track id")
    if len(camera) > MAX_CAMERA_ID or len(track) > MAX_TRACK_ID:
        raise MalformedMessage(f"camera id over {MAX_CAMERA_ID} or track id over {MAX_TRACK_ID} characters")
    # Control characters (NUL above all: PostgreSQL text cannot store it) would fail every commit.
    if not camera.isprintable() or not track.isprintable():
        raise MalformedMessage(f"camera id {camera[:40]!r} or track id {track[:40]!r} has control characters")


def _field(fields: dict, name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise MalformedMessage(f"missing field {name!r}")
    return value if isinstance(value, bytes) else str(value).encode()


def _text(fields: dict, name: str) -> str:
    try:
        return _field(fields, name).decode()
    except UnicodeDecodeError:
        raise MalformedMessage(f"field {name!r} is not UTF-8") from None


def _number(fields: dict, name: str, kind=float):
    text = _text(fields, name)
    try:
        value = kind(text)
    except ValueError:  # int('9' * 5000) too: over Python's digit limit
        raise MalformedMessage(f"field {name!r} is not a number: {text[:40]!r}") from None
    if kind is float and not math.isfinite(value):
        raise MalformedMessage(f"field {name!r} is not a finite number: {text[:40]!r}")
    return value


def _timestamp(fields: dict) -> float:
    ts = _number(fields, "ts")
    if not 0.0 <= ts < MAX_TS:
        raise MalformedMessage(f"field 'ts' = {ts!r} is no frame time (expected 0..{MAX_TS:.0f} s since the epoch)")
    return ts


def _box(fields: dict) -> tuple[int, int, int, int]:
    text = _text(fields, "box")
    try:
        if len(text) > MAX_BOX_TEXT:
            raise ValueError
        box = tuple(int(v) for v in json.loads(text))
    except (ValueError, TypeError, OverflowError):  # OverflowError: int(1e999)
        raise MalformedMessage("field 'box' is not a JSON list of 4 integers") from None
    if len(box) != 4:
        raise MalformedMessage("field 'box' is not a JSON list of 4 integers")
    return box


@dataclass(frozen=True)
class FaceMessage:
    camera_id: str
    ts: float  # frame time, seconds since the epoch (UTC)
    frame: int  # frame index within the source
    track_id: str  # unique across cameras and worker restarts
    box: tuple[int, int, int, int]  # x, y, w, h in the full frame
    score: float  # detection score
    jpeg: bytes  # aligned 112x112 face crop

    def encode(self) -> dict[str, bytes | str]:
        return {"v": SCHEMA_VERSION, "kind": KIND_FACE, "camera": self.camera_id, "ts": _num(self.ts),
                "frame": str(self.frame), "track": self.track_id, "box": json.dumps(list(self.box)),
                "score": f"{self.score:.4f}", "jpeg": self.jpeg}

    @staticmethod
    def decode(fields: dict) -> FaceMessage:
        kind = _text(fields, "kind")
        if kind != KIND_FACE:
            raise MalformedMessage(f"not a face entry: kind={kind!r}")
        camera, ts, track = _text(fields, "camera"), _timestamp(fields), _text(fields, "track")
        box = _box(fields)
        jpeg = _field(fields, "jpeg")
        if not jpeg or len(jpeg) > MAX_CROP_BYTES:
            raise MalformedMessage(f"field 'jpeg' has {len(jpeg)} bytes (expected 1..{MAX_CROP_BYTES})")
        _ids(camera, track)
        return FaceMessage(camera_id=camera, ts=ts, frame=_number(fields, "frame", int), track_id=track,
                           box=box, score=_number(fields, "score"), jpeg=jpeg)


@dataclass(frozen=True)
class TrackEnd:
    camera_id: str
    ts: float  # time the track was last seen
    track_id: str
    faces: int  # crops published for this track
    dwell: float = 0.0  # seconds from first to last seen
    crossing: str = ""  # entry / exit / passer-by on the camera's counting line; "" without a line
    zones: tuple[tuple[str, float], ...] = ()  # (zone, seconds in it) of the camera's zones the visitor was in

    def encode(self) -> dict[str, str]:
        return {"v": SCHEMA_VERSION, "kind": KIND_TRACK_END, "camera": self.camera_id, "ts": _num(self.ts),
                "track": self.track_id, "faces": str(self.faces), "dwell": _num(self.dwell),
                "crossing": self.crossing, "zones": json.dumps(dict(self.zones))}

    @staticmethod
    def decode(fields: dict) -> TrackEnd:
        if _text(fields, "kind") != KIND_TRACK_END:
            raise MalformedMessage("not a track_end entry")
        camera, track = _text(fields, "camera"), _text(fields, "track")
        _ids(camera, track)
        # dwell, crossing and zones came with issue 19: entries of earlier workers lack them
        has = lambda name: name in fields or name.encode() in fields  # noqa: E731
        dwell = _number(fields, "dwell") if has("dwell") else 0.0
        if not 0.0 <= dwell < 1e7:
            raise MalformedMessage(f"field 'dwell' out of range: {dwell}")
        crossing = _text(fields, "crossing") if has("crossing") else ""
        if crossing not in CROSSINGS + ("",):
            raise MalformedMessage(f"field 'crossing' is not one of {CROSSINGS}: {crossing[:40]!r}")
        zones: tuple = ()
        if has("zones"):
            try:
                raw = json.loads(_text(fields, "zones"))
                zones = tuple((str(k), float(v)) for k, v in raw.items())
            except (ValueError, TypeError, AttributeError):
                raise MalformedMessage("field 'zones' is not a JSON object of zone: seconds") from None
            if any(not 0 < len(k) <= MAX_ZONE_NAME or not 0.0 <= v < 1e7 for k, v in zones):
                raise MalformedMessage(f"field 'zones' has a name over {MAX_ZONE_NAME} characters or a bad time")
        return TrackEnd(camera_id=camera, ts=_timestamp(fields), track_id=track, faces=_number(fields, "faces", int),
                        dwell=dwell, crossing=crossing, zones=zones)


def decode_entry(fields: dict) -> FaceMessage | TrackEnd:
    """Decode any stream entry, raising MalformedMessage with the reason."""
    kind = _text(fields, "kind")
    if kind == KIND_FACE:
        return FaceMessage.decode(fields)
    if kind == KIND_TRACK_END:
        return TrackEnd.decode(fields)
    raise MalformedMessage(f"unknown kind {kind!r}")


@dataclass(frozen=True)
class CameraState:
    """Live state of one camera, written by the ingest worker to ``StreamKeys.camera``."""

    camera_id: str
    state: str  # connecting / live / reconnecting / ended / failed
    last_frame_ts: float  # 0 when no frame yet
    frames_per_s: float
    faces_per_s: float
    updated_ts: float

    def encode(self) -> dict[str, str]:
        return {"state": self.state, "last_frame_ts": _num(self.last_frame_ts),
                "frames_per_s": f"{self.frames_per_s:.2f}", "faces_per_s": f"{self.faces_per_s:.2f}",
                "updated_ts": _num(self.updated_ts)}

    @staticmethod
    def decode(camera_id: str, fields: dict) -> CameraState:
        return CameraState(camera_id=camera_id, state=_text(fields, "state"),
                           last_frame_ts=_number(fields, "last_frame_ts"),
                           frames_per_s=_number(fields, "frames_per_s"), faces_per_s=_number(fields, "faces_per_s"),
                           updated_ts=_number(fields, "updated_ts"))
