"""Unit tests of the pure pieces: message schema, tracker, folding, camera parsing."""

import numpy as np
import pytest

from footfall.aggregator.folding import OpenVisitor
from footfall.db.records import bucket_start
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
    (lambda f: f.update(box="[1e999, 0, 10, 10]"), "'box'"),  # int(inf): OverflowError before the fix
    (lambda f: f.update(box="[" * 100_000), "'box'"),  # json's recursion limit
    (lambda f: f.update(ts="nan"), "'ts'"),
    (lambda f: f.update(ts="inf"), "'ts'"),
    (lambda f: f.update(ts="1e12"), "'ts'"),  # year 33658: no time bucket holds it
    (lambda f: f.update(ts="-5"), "'ts'"),
    (lambda f: f.update(score="nan"), "'score'"),
    (lambda f: f.update(camera="door\x00"), "camera"),  # PostgreSQL text cannot hold NUL
    (lambda f: f.update(track="x\n1"), "track"),
])
def test_malformed_entries_say_why(mutate, reason):
    fields = _msg().encode()
    mutate(fields)
    with pytest.raises(MalformedMessage, match=reason):
        decode_entry(fields)


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", "1e12"])
def test_track_end_times_are_validated_too(ts):
    fields = TrackEnd("door", 1.5, "door:x:1", 4).encode()
    fields["ts"] = ts
    with pytest.raises(MalformedMessage, match="'ts'"):
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


def test_predictions_check_their_arrays_when_made():
    n = 2
    good = dict(age=np.zeros(n), gender=np.zeros(n), race=np.zeros((n, 5)), emotion=np.zeros((n, 7)))
    assert len(Predictions(**good)) == n
    with pytest.raises(ValueError, match="gender has shape \\(3,\\), expected \\(2,\\)"):
        Predictions(**{**good, "gender": np.zeros(3)})
    with pytest.raises(ValueError, match="emotion has shape \\(2, 7, 1\\)"):
        Predictions(**{**good, "emotion": np.zeros((n, 7, 1))})
    with pytest.raises(ValueError, match="race must be a floating-point numpy array, not int64"):
        Predictions(**{**good, "race": np.zeros((n, 5), np.int64)})
    with pytest.raises(ValueError, match="lack \\['emotion'\\]"):
        Predictions.from_outputs(("age", "gender", "race"), [np.zeros((n, 1)), np.zeros((n, 1)), np.zeros((n, 5))])
    assert len(Predictions.empty(5, 7)) == 0


def test_backend_options_are_validated_not_swallowed(face_model):
    from pydantic import ValidationError

    from footfall.config import InferenceSettings
    from footfall.inference.backends import FlipAveragedBackend, load_backend
    from footfall.inference.backends.rknn import RknnOptions

    with pytest.raises(ValidationError, match="thread"):  # a misspelt option is an error
        load_backend("onnxruntime", face_model, thread=1)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        load_backend("onnxruntime", face_model, threads=0)
    with pytest.raises(ValidationError, match="the RK3588 NPU has cores 0, 1, 2"):
        RknnOptions(npu_cores="0,3")
    # the worker's settings supply the chosen backend's options only
    backend = load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=1, npu_cores="2"),
                           flip_average=False)
    assert backend.options.threads == 1
    backend = load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=4, session_threads=2),
                           flip_average=False)
    assert backend.options.layout == (2, 2) and len(backend.sessions) == 2
    # ... and the flip averaging the worker serves with, unless the caller says otherwise
    served = load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=1, flip_confidence=0.5))
    assert isinstance(served, FlipAveragedBackend) and served.confidence == 0.5 and served.name == "onnxruntime+flip<0.5"
    assert served.inner.options.threads == 1
    every = load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=1), flip_confidence=1.0)
    assert isinstance(every, FlipAveragedBackend) and every.name == "onnxruntime+flip"
    off = load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=1, flip_average=False))
    assert not isinstance(off, FlipAveragedBackend)
    assert not isinstance(load_backend("onnxruntime", face_model, threads=1), FlipAveragedBackend)  # no settings: single pass
    assert load_backend("onnxruntime", face_model, threads=1, flip_average=True).name == "onnxruntime+flip"  # every face
    assert served.inner.metadata.flip_confidence == 0.65  # what the settings' unset threshold resolves to:
    assert load_backend("onnxruntime", face_model, settings=InferenceSettings(threads=1)).name == "onnxruntime+flip<0.65"
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        load_backend("onnxruntime", face_model, session_threads=0)


def test_a_batch_split_over_sessions_gives_each_face_its_own_predictions_in_order(face_model):
    """Two 1-thread sessions each run a contiguous chunk of the batch; the result is the one-session
    result, face for face, for batch sizes that split evenly, unevenly or not at all (1, 0)."""
    from footfall.inference.backends import load_backend

    rng = np.random.default_rng(3)
    one = load_backend("onnxruntime", face_model, threads=2, session_threads=2)
    split = load_backend("onnxruntime", face_model, threads=2)  # the default: sessions of 1 thread
    assert len(one.sessions) == 1 and len(split.sessions) == 2
    faces = rng.integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    # each face alone: what the face's own prediction is, whatever batch it came in
    alone = [one.predict(faces[i:i + 1]) for i in range(len(faces))]
    for n in (7, 6, 2, 1, 0):
        got = split.predict(faces[:n])
        assert len(got) == n and got.race.shape == (n, 5) and got.emotion.shape == (n, 7)
        for head in ("age", "gender", "race", "emotion") if n else ():
            want = np.concatenate([getattr(p, head) for p in alone[:n]])
            np.testing.assert_allclose(getattr(got, head), want, rtol=1e-5, atol=1e-5, err_msg=f"{head}, batch {n}")
    # concurrent callers (the server's batcher and a second request path) share the sessions safely
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: split.predict(faces[i:i + 3]), range(5)))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got.age, np.concatenate([p.age for p in alone[i:i + 3]]), rtol=1e-5, atol=1e-5)
    one.close()
    split.close()


def test_text_logs_keep_the_context_fields(capsys):
    import logging

    from footfall.observability import ctx, setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO", "text")
        logging.getLogger("footfall.ingest").info("camera live", **ctx(camera="door", fps=5.0))
    finally:
        root.handlers[:], root.level = handlers, level
    assert "footfall.ingest: camera live camera=door fps=5.0" in capsys.readouterr().err


def test_the_local_run_stops_each_service_before_the_one_it_depends_on():
    import argparse

    from footfall.local import Pipeline

    events = []

    class Service:  # the part of subprocess.Popen that Pipeline.stop uses
        def __init__(self, name):
            self.name, self.running = name, True

        def poll(self):
            return None if self.running else 0

        def send_signal(self, sig):
            events.append(("signal", self.name))

        def wait(self, timeout=None):
            events.append(("gone", self.name))
            self.running = False
            return 0

    pipeline = Pipeline(argparse.Namespace())
    pipeline.procs = {name: Service(name) for name in ("inference", "aggregator", "ingest", "dashboard")}
    pipeline.stop()
    assert events == [(step, name) for name in ("ingest", "dashboard", "aggregator", "inference")
                      for step in ("signal", "gone")]
