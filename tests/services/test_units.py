"""Unit tests of the pure pieces: message schema, tracker, folding, camera parsing."""

import numpy as np
import pytest

from footfall.aggregator.folding import OpenVisitor, bucket_start
from footfall.ingest.service import parse_cameras
from footfall.predictions import Predictions
from footfall.schema import FaceMessage, MalformedMessage, TrackEnd, decode_entry
from footfall.tracking import Tracker, iou_matrix


def _msg(**kw):
    base = dict(camera_id="door", ts=1700000000.25, frame=3, track_id="door:x:1", box=(1, 2, 30, 40), score=0.9,
                jpeg=b"\xff\xd8jpeg")
    base.update(kw)
    return FaceMessage(**base)


def test_face_and_track_end_round_trip_through_redis_style_bytes():
    raw = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in _msg().encode().items()}
    assert decode_entry(raw) == _msg()
    end = TrackEnd("door", 1.5, "door:x:1", 4)
    assert decode_entry({k.encode(): v.encode() for k, v in end.encode().items()}) == end


@pytest.mark.parametrize("mutate, reason", [
    (lambda f: f.pop("ts"), "missing field 'ts'"),
    (lambda f: f.update(ts="yesterday"), "not a number"),
    (lambda f: f.update(box="[1,2,3]"), "'box'"),
    (lambda f: f.update(box="not json"), "'box'"),
    (lambda f: f.update(jpeg=b""), "'jpeg'"),
    (lambda f: f.update(jpeg=b"x" * (600 * 1024)), "'jpeg'"),
    (lambda f: f.update(kind="selfie"), "unknown kind"),
    (lambda f: f.update(camera=b"\xff\xfe"), "UTF-8"),
])
def test_malformed_entries_say_why(mutate, reason):
    fields = _msg().encode()
    mutate(fields)
    with pytest.raises(MalformedMessage, match=reason):
        decode_entry(fields)


def test_tracker_keeps_ids_for_moving_faces_and_separates_two_people():
    t = Tracker("c:r", max_age_s=1.0)
    ids = []
    for step in range(10):  # two faces moving fast in opposite directions at 5 fps
        boxes = np.array([[100 + 60 * step, 100, 120, 120], [1100 - 60 * step, 400, 120, 120]], np.float32)
        ids.append(t.update(boxes, step * 0.2).track_ids)
    assert {i[0] for i in ids} == {"c:r:1"} and {i[1] for i in ids} == {"c:r:2"}
    update = t.update(np.zeros((0, 4), np.float32), 3.5)
    assert sorted(tr.track_id for tr in update.ended) == ["c:r:1", "c:r:2"]
    assert t.update(np.array([[100, 100, 120, 120]], np.float32), 3.7).track_ids == ["c:r:3"]


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], np.float32)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_folding_votes_and_ignores_redelivered_entries():
    v = OpenVisitor("door", "door:x:1")
    preds = Predictions(np.array([20.0, 40.0]), np.array([0.2, 0.4]), np.eye(5)[[1, 1]], np.eye(7)[[0, 4]])
    v.add(["1-0", "2-0"], [60.0, 61.0], preds)
    v.add(["2-0"], [61.0], preds[1:])  # redelivered entry
    record = v.finalize(bucket_s=60, enable_race=True, enable_emotion=False)
    assert (record.faces, record.age, record.gender, record.race, record.emotion) == (2, 30.0, "male", "black", "")
    assert record.bucket_start == bucket_start(60.0, 60)


def test_parse_cameras_rejects_duplicate_ids():
    assert [c.source for c in parse_cameras("a=0,b=http://h:1/x.mjpg")] == ["0", "http://h:1/x.mjpg"]
    assert parse_cameras("a=0")[0].is_file is False and parse_cameras("a=/x.mp4")[0].is_file
    with pytest.raises(ValueError, match="unique"):
        parse_cameras("a=/x.mp4,a=/y.mp4")


def test_readme_documents_every_setting_as_the_code_defines_it():
    from footfall.config import PROJECT_ROOT, settings_table

    assert settings_table() in (PROJECT_ROOT / "README.md").read_text(), \
        "README's configuration table is stale: paste `python -m footfall.config`"


def test_numpy_timestamps_encode_as_plain_numbers():
    msg = _msg(ts=np.float64(12.5))
    assert msg.encode()["ts"] == "12.5" and FaceMessage.decode(msg.encode()).ts == 12.5


def test_overlong_ids_are_malformed_not_database_errors():
    with pytest.raises(MalformedMessage, match="over 64"):
        decode_entry(_msg(camera_id="c" * 65).encode())
    with pytest.raises(ValueError, match="longer than 64"):
        parse_cameras(f"{'c' * 65}=/x.mp4")


def test_degenerate_landmarks_raise_a_clear_error():
    from footfall.vision import align_face

    img = np.zeros((100, 100, 3), np.uint8)
    for landmarks in (np.full((5, 2), 50.0), np.full((5, 2), np.nan), np.zeros((3, 2))):
        with pytest.raises(ValueError, match="degenerate"):
            align_face(img, landmarks)


def test_tracks_leaving_the_frame_close_at_once_but_edge_faces_get_the_grace_period():
    t = Tracker("c:r", max_age_s=1.5)
    size = (640, 360)
    t.update(np.array([[500, 100, 80, 80]], np.float32), 0.0, size)
    t.update(np.array([[560, 100, 80, 80]], np.float32), 0.2, size)  # walking right
    assert [e.track_id for e in t.update(np.zeros((0, 4), np.float32), 0.4, size).ended] == ["c:r:1"]
    t.update(np.array([[600, 100, 80, 80]], np.float32), 1.0, size)  # parked half outside the edge
    t.update(np.array([[600, 100, 80, 80]], np.float32), 1.2, size)
    assert t.update(np.zeros((0, 4), np.float32), 1.4, size).ended == []  # one missed detection: keep it
    assert [e.track_id for e in t.update(np.zeros((0, 4), np.float32), 2.8, size).ended] == ["c:r:2"]
    t.update(np.array([[300, 100, 80, 80]], np.float32), 3.0, size)  # a confirmed track lost mid-frame
    t.update(np.array([[300, 100, 80, 80]], np.float32), 3.2, size)
    assert t.update(np.zeros((0, 4), np.float32), 3.4, size).ended == []
    t.update(np.array([[100, 100, 80, 80]], np.float32), 5.0, size)  # a tentative track, not seen again
    assert t.update(np.zeros((0, 4), np.float32), 5.2, size).ended == []
    assert [e.track_id for e in t.update(np.zeros((0, 4), np.float32), 5.6, size).ended] == ["c:r:4"]


def test_a_fast_walker_keeps_one_track_from_its_first_sighting():
    """Measured on the synthetic clip: 650 px/s, 140 px faces, 5 fps -> ~0.85 face widths per frame."""
    t = Tracker("c:r")
    ids = {t.update(np.array([[-5 + 130 * k, 470, 140, 180]], np.float32), 0.2 * k, (1280, 720)).track_ids[0]
           for k in range(9)}
    assert ids == {"c:r:1"}


def test_ports_for_child_servers_are_distinct_free_and_outside_the_ephemeral_range():
    """The local run hands these to child processes to bind later; an outgoing connection
    from any process (Redis and gRPC clients included) takes its local port from the ephemeral
    range, so a port drawn from there could be gone by the time the child binds it."""
    import socket

    from footfall.embedded_redis import _ephemeral_range, free_ports

    low, high = _ephemeral_range()
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(p < low or p > high for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("", port))
