"""A camera that never answers must not delay the others, must not keep footfall-local from
finishing, and no camera's credentials may show anywhere (logs, console, metrics, Redis).

The blackholes are loopback TCP listeners that accept every connection and never send a byte:
what an RTSP or HTTP camera behind a dead NAT or a hung encoder looks like to OpenCV/FFmpeg.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from footfall.config import IngestSettings
from footfall.schema import StreamKeys

pytestmark = pytest.mark.chaos

PASSWORD = "S3cretPass"


class Blackhole:
    """A loopback port that accepts connections and never answers (closed on exit)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


class HalfOpenRtsp(Blackhole):
    """Answers each connection's first request (RTSP OPTIONS) and then nothing: a hung encoder
    whose RTSP server still runs."""

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._answer_once, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer_once(conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            conn.sendall(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n")
        except OSError:
            pass


@pytest.fixture()
def blackholes():
    holes = [Blackhole(), Blackhole()]
    yield holes
    for hole in holes:
        hole.close()


def blackholed_sources(holes: list[Blackhole]) -> list[str]:
    return [f"rtsp=rtsp://viewer:{PASSWORD}@127.0.0.1:{holes[0].port}/stream",
            f"mjpeg=http://viewer:{PASSWORD}@127.0.0.1:{holes[1].port}/video.mjpg?password={PASSWORD}"]


def test_a_file_camera_goes_live_at_once_beside_two_blackholed_sources(redis_server_url, stream_prefix, models_dir,
                                                                       synthetic_clip, blackholes, caplog):
    """Beside them a half-open RTSP source (answers OPTIONS, then nothing) and a healthy network
    source (the clip over HTTP): the file goes live at once, the healthy source goes live too."""
    from prometheus_client import REGISTRY, generate_latest

    from footfall.ingest.service import IngestWorker

    path, _truth = synthetic_clip
    half_open = HalfOpenRtsp()
    web = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(path.parent)))
    web.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=web.serve_forever, daemon=True).start()
    cameras = ",".join([*blackholed_sources(blackholes), f"hung=rtsp://viewer:{PASSWORD}@127.0.0.1:{half_open.port}/s",
                        f"web=http://127.0.0.1:{web.server_address[1]}/{path.name}", f"file={path}"])
    timeout_s = 4.0
    settings = IngestSettings(redis_url=redis_server_url, stream_prefix=stream_prefix, models_dir=models_dir,
                              cameras=cameras, camera_timeout_s=timeout_s, reconnect_initial_s=0.2,
                              reconnect_max_s=1.0)
    worker = IngestWorker(settings)
    by_id = {w.cam.camera_id: w for w in worker.workers}
    caplog.set_level(logging.INFO, logger="footfall")
    started, started_wall = time.monotonic(), time.time()
    worker.start()

    def first_live() -> dict[str, float]:
        """Seconds from start to each camera's first state change to live (from its log line:
        the served clip goes live and ends again within milliseconds)."""
        first: dict[str, float] = {}
        for record in list(caplog.records):
            if record.getMessage() == "camera live":
                first.setdefault(record.__dict__["ctx_camera"], record.created - started_wall)
        return first

    try:
        # Before: OpenCV's global open lock held the file behind each blackholed open (30 s each),
        # and behind the half-open one for the open timeout.
        deadline = started + 3 * timeout_s
        while not {"file", "web"} <= set(first_live()) and time.monotonic() < deadline:
            time.sleep(0.02)
        live_at = first_live()
        print(f"live after: {', '.join(f'{k} {v:.2f} s' for k, v in sorted(live_at.items()))} "
              f"(beside two blackholed and one half-open source, camera timeout {timeout_s:g} s)")
        assert "file" in live_at and live_at["file"] < timeout_s / 2, live_at
        assert "web" in live_at, "a healthy network source goes live"
        while by_id["file"].frames_processed < 5 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert by_id["file"].frames_processed >= 5
        while {by_id[c].state for c in ("rtsp", "mjpeg", "hung")} != {"reconnecting"} and \
                time.monotonic() < deadline + 10:
            time.sleep(0.05)  # each waits out its probe or its trial open
        assert {by_id[c].state for c in ("rtsp", "mjpeg", "hung")} == {"reconnecting"}
    finally:
        worker.stop.set()
        worker.join(timeout=3 * timeout_s)
        web.shutdown()
        web.server_close()
        half_open.close()
    assert not worker.alive()

    # The credentials appear nowhere downstream of parsing the setting.
    logged = [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert any("viewer" not in line and "***@127.0.0.1" in line for line in logged), "the source is logged redacted"
    assert not [line for line in logged if PASSWORD in line]
    assert PASSWORD not in generate_latest(REGISTRY).decode()
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    for camera in ("rtsp", "mjpeg", "hung", "web", "file"):
        fields = r.hgetall(keys.camera(camera))
        assert fields and PASSWORD.encode() not in b"".join(k + v for k, v in fields.items())


def test_footfall_local_gives_up_an_unreachable_camera_and_counts_the_others(redis_server_url, stream_prefix,
                                                                            shared_data, blackholes, tmp_path):
    """--exit-when-done used to wait for ever on a source that never answers."""
    clip = shared_data / "video" / "short_hamilton_clip.mp4"
    db = f"sqlite:///{tmp_path}/local.db"
    env = {**os.environ, "FOOTFALL_REDIS_URL": redis_server_url, "FOOTFALL_CAMERA_GIVE_UP_S": "4",
           "FOOTFALL_CAMERA_TIMEOUT_S": "1", "FOOTFALL_RECONNECT_MAX_S": "1"}
    args = ["--no-dashboard", "--fast", "--exit-when-done", "--prefix", stream_prefix, "--database-url", db]
    for source in [*blackholed_sources(blackholes), f"stage={clip}"]:
        args += ["--source", source]
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "footfall.local", *args], env=env, capture_output=True, text=True,
                         timeout=240)
    print(f"footfall-local finished in {time.monotonic() - started:.1f} s")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "given up (FOOTFALL_CAMERA_GIVE_UP_S)" in out.stdout
    assert "gave up on camera(s) mjpeg, rtsp" in out.stdout
    assert "done." in out.stdout
    counted = int(out.stdout.split("visitors counted")[-1].split()[0])
    assert counted >= 10, out.stdout[-1500:]  # the clip's 11 visitors, as in test_footfall_local_runs_the_sample_clip
    assert PASSWORD not in out.stdout + out.stderr
    assert "rtsp://***@127.0.0.1" in out.stdout
