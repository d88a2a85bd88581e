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
    from prometheus_client import REGISTRY, generate_latest

    from footfall.ingest.service import IngestWorker

    path, _truth = synthetic_clip
    cameras = ",".join([*blackholed_sources(blackholes), f"file={path}"])
    settings = IngestSettings(redis_url=redis_server_url, stream_prefix=stream_prefix, models_dir=models_dir,
                              cameras=cameras, camera_timeout_s=2.0, reconnect_initial_s=0.2, reconnect_max_s=1.0)
    worker = IngestWorker(settings)
    by_id = {w.cam.camera_id: w for w in worker.workers}
    caplog.set_level(logging.INFO, logger="footfall")
    started = time.monotonic()
    worker.start()
    try:
        # Before the fix OpenCV's global open lock held the file behind each blackholed open (30 s each).
        deadline = started + 8.0
        while by_id["file"].state != "live" and time.monotonic() < deadline:
            time.sleep(0.05)
        live_after = time.monotonic() - started
        print(f"file camera live after {live_after:.2f} s beside two blackholed sources")
        assert by_id["file"].state == "live", f"file camera still {by_id['file'].state} after {live_after:.1f} s"
        while by_id["file"].frames_processed < 5 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert by_id["file"].frames_processed >= 5
        while {by_id["rtsp"].state, by_id["mjpeg"].state} != {"reconnecting"} and time.monotonic() < deadline + 10:
            time.sleep(0.05)  # each probe waits out camera_timeout_s
        assert by_id["rtsp"].state == by_id["mjpeg"].state == "reconnecting"
    finally:
        worker.stop.set()
        worker.join(timeout=10)
    assert not worker.alive()

    # The credentials appear nowhere downstream of parsing the setting.
    logged = [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert any("viewer" not in line and "***@127.0.0.1" in line for line in logged), "the source is logged redacted"
    assert not [line for line in logged if PASSWORD in line]
    assert PASSWORD not in generate_latest(REGISTRY).decode()
    r = redis.Redis.from_url(redis_server_url)
    keys = StreamKeys(stream_prefix)
    for camera in ("rtsp", "mjpeg", "file"):
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
