"""The ingest worker: cameras in, aligned face crops out to a Redis Stream.

One thread per camera: read frames with OpenCV (file, RTSP/HTTP URL or webcam index), cap
the processed frame rate, detect faces (YuNet), track them, align each tracked face to
112x112 and publish a sample of crops per track (JPEG) with its metadata; when a track
closes, publish ``track_end``. A lost stream reconnects with exponential backoff; the
camera's state is a metric, a log line and a Redis hash the operators' view reads. The end
of a file source ends that camera cleanly; the worker exits when every camera has ended.

    FOOTFALL_CAMERAS="door=rtsp://10.0.0.5/stream,till=/videos/till.mp4" footfall-ingest
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import redis

from footfall.config import IngestSettings
from footfall.counting import parse_count_lines, parse_count_zones
from footfall.observability import (CAMERA_RECONNECTS, CAMERA_UP, FACES_PUBLISHED, FRAMES_DROPPED, FRAMES_PROCESSED,
                                    FRAMES_READ, INGEST_LATENCY, RateMeter, ctx, redact_url, redis_reachable,
                                    run_service)
from footfall.schema import MAX_CAMERA_ID, CameraState, FaceMessage, StreamKeys, TrackEnd
from footfall.tracking import Track, Tracker, appearance_features
from footfall.vision import FaceDetector, align_face, ensure_yunet

log = logging.getLogger("footfall.ingest")


# Network schemes whose first answer can be probed before OpenCV opens them (default ports).
_PROBED_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Run in a child process: can OpenCV open this source (URL and timeout on stdin, never in argv,
# where `ps` would show the credentials)?
_OPEN_CHECK = ("import sys, cv2\n"
               "url, ms = sys.stdin.read().rsplit('\\n', 1)\n"
               "ms = int(ms)\n"
               "params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms] if ms else []\n"
               "sys.exit(0 if cv2.VideoCapture(url, cv2.CAP_FFMPEG, params).isOpened() else 1)\n")


@dataclass(frozen=True)
class CameraSource:
    camera_id: str
    source: str
    # FFmpeg's open and read timeouts, and the first-answer probe of a network source (0: none).
    timeout_s: float = 0.0

    @property
    def is_file(self) -> bool:
        """A video file (ends); webcams (index or /dev/video*) and URLs are live (reconnect)."""
        return not self.source.isdigit() and "://" not in self.source and not self.source.startswith("/dev/")

    @property
    def display(self) -> str:
        """The source without credentials: the only form of it that is logged or published."""
        return redact_url(self.source)

    def reachable(self) -> bool:
        """Whether a network source can be opened, found out without OpenCV in this process.

        OpenCV's FFmpeg backend opens every capture under one process-wide lock, so a host that
        accepts and never answers held every other camera's open for FFmpeg's 30 s each (a file
        camera beside two such sources went live after 30-62 s). Two steps keep a hanging source
        away from that lock: its protocol's first answer, probed in plain Python (cheap: a silent
        host fails here), then a trial open by OpenCV in a child process (a host that answers
        and then stalls, as a hung encoder does, fails there). Files and webcams are reachable.
        """
        if self.is_file or self.source.isdigit() or self.source.startswith("/dev/") or not self.timeout_s:
            return True
        return self._answers() and self._opens_in_a_child()

    def _answers(self) -> bool:
        """The protocol's first request answered within ``timeout_s`` (other schemes: True)."""
        parts = urlsplit(self.source)
        scheme = parts.scheme.lower()
        if scheme not in _PROBED_PORTS:
            return True
        deadline = time.monotonic() + self.timeout_s
        try:
            with socket.create_connection((parts.hostname, parts.port or _PROBED_PORTS[scheme]),
                                          timeout=self.timeout_s) as sock:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                if scheme in ("https", "rtsps"):
                    # Liveness only: the handshake needs an answer; nothing is sent over it.
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    with context.wrap_socket(sock, server_hostname=parts.hostname):
                        return True
                path = parts.path or "/"
                if scheme == "rtsp":
                    plain = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))
                    sock.sendall(f"OPTIONS {plain} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
                else:
                    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
                return bool(sock.recv(1))
        except (OSError, ValueError):
            return False

    def _opens_in_a_child(self) -> bool:
        try:
            done = subprocess.run([sys.executable, "-c", _OPEN_CHECK], capture_output=True, text=True,
                                  input=f"{self.source}\n{int(self.timeout_s * 1000)}", timeout=self.timeout_s + 10)
        except subprocess.TimeoutExpired:  # the child is killed; this process never touched the source
            return False
        return done.returncode == 0

    def open(self) -> cv2.VideoCapture:
        if self.source.isdigit():
            return cv2.VideoCapture(int(self.source))
        params = []
        if self.timeout_s and not self.is_file:
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)


def parse_cameras(spec: str) -> list[CameraSource]:
    """``"door=rtsp://h/s,till=/v/till.mp4,2"`` -> camera sources (a bare source is named cam<N>).

    >>> [(c.camera_id, c.source) for c in parse_cameras("door=rtsp://h/s?a=1, /v/x.mp4")]
    [('door', 'rtsp://h/s?a=1'), ('cam2', '/v/x.mp4')]
    """
    cams = []
    for i, item in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        name, sep, source = item.partition("=")
        if sep and "://" not in name and "/" not in name:
            cams.append(CameraSource(name.strip(), source.strip()))
        else:
            cams.append(CameraSource(f"cam{i + 1}", item))
    ids = [c.camera_id for c in cams]
    if len(set(ids)) != len(ids):
        raise ValueError(f"camera ids must be unique: {ids}")
    too_long = [i for i in ids if len(i) > MAX_CAMERA_ID]
    if too_long:
        raise ValueError(f"camera ids longer than {MAX_CAMERA_ID} characters: {too_long}")
    return cams


class Publisher:
    """Writes crops, track ends and camera state to Redis (bounded stream).

    After a failure it fails fast for ``retry_after_s`` instead of waiting out a connection
    timeout on every frame, so live capture does not stall while Redis is down.
    """

    def __init__(self, client: redis.Redis, keys: StreamKeys, maxlen: int, retry_after_s: float = 1.0) -> None:
        self.client, self.keys, self.maxlen = client, keys, maxlen
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _execute(self, pipe) -> None:
        if time.monotonic() < self._down_until:
            raise redis.ConnectionError("redis unavailable (retrying shortly)")
        try:
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after_s
            raise

    def publish(self, messages: list[FaceMessage | TrackEnd]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            pipe.xadd(self.keys.faces_for(m.camera_id), m.encode(), maxlen=self.maxlen, approximate=True)
        self._execute(pipe)

    def camera_state(self, state: CameraState) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.camera(state.camera_id), mapping=state.encode())
        pipe.sadd(self.keys.cameras, state.camera_id)
        self._execute(pipe)


class CameraWorker:
    """Reads one camera until it ends (file) or the worker stops (live source)."""

    def __init__(self, cam: CameraSource, settings: IngestSettings, detector: FaceDetector, publisher: Publisher,
                 stop: threading.Event) -> None:
        self.cam, self.s, self.detector, self.publisher, self.stop = cam, settings, detector, publisher, stop
        self.tracker = Tracker(prefix=f"{cam.camera_id}:{secrets.token_hex(4)}", max_age_s=settings.track_max_age_s,
                               max_speed=settings.track_max_speed, n_init=settings.track_confirm_hits)
        self.line = parse_count_lines(settings.count_lines).get(cam.camera_id)
        self.zones = parse_count_zones(settings.count_zones).get(cam.camera_id, [])
        self.frame_size = (1, 1)  # (w, h) of the last frame: tracks' paths are normalized by it
        self.state = "connecting"
        self.last_frame_ts = 0.0
        self.frames_meter, self.faces_meter = RateMeter(), RateMeter()
        self._last_state_push = 0.0
        self.frames_processed = 0
        self.faces_published = 0
        self._thumb: np.ndarray | None = None  # colour histogram of the last frame of the current scene
        self._changed = False  # the previous frame differed from it (a flash or the first frame after a cut)

    # -- state -----------------------------------------------------------------------------
    def _set_state(self, state: str, force: bool = False) -> None:
        changed = state != self.state
        if changed:
            log.info("camera %s", state, **ctx(camera=self.cam.camera_id, source=self.cam.display))
        self.state = state
        CAMERA_UP.labels(camera=self.cam.camera_id).set(1 if state == "live" else 0)
        now = time.monotonic()
        if changed or force or now - self._last_state_push > 2.0:
            self._last_state_push = now
            try:
                self.publisher.camera_state(CameraState(self.cam.camera_id, state, self.last_frame_ts,
                                                        self.frames_meter.rate(), self.faces_meter.rate(),
                                                        time.time()))
            except redis.RedisError as exc:
                log.warning("cannot report camera state: %s", exc, **ctx(camera=self.cam.camera_id))

    def _publish(self, messages: list) -> bool:
        try:
            self.publisher.publish(messages)
            return True
        except redis.RedisError as exc:
            # Redis is down or restarting: these crops are lost, the camera keeps running and the
            # client reconnects on the next call; the aggregator closes tracks whose end was lost.
            FRAMES_DROPPED.labels(camera=self.cam.camera_id, reason="redis").inc()
            log.warning("publish failed, dropping %d entries: %s", len(messages), exc, **ctx(camera=self.cam.camera_id))
            return False

    # -- main loop ---------------------------------------------------------------------------
    def _give_up(self, last_frame_at: float) -> bool:
        """A live source silent for ``camera_give_up_s`` is given up (state failed)."""
        silent_s = time.monotonic() - last_frame_at
        if not self.s.camera_give_up_s or silent_s < self.s.camera_give_up_s:
            return False
        log.error("no frame from the source for %.0f s: giving up on this camera (FOOTFALL_CAMERA_GIVE_UP_S=%g)",
                  silent_s, self.s.camera_give_up_s, **ctx(camera=self.cam.camera_id, source=self.cam.display))
        self._set_state("failed", force=True)
        return True

    def run(self) -> None:
        delay = self.s.reconnect_initial_s
        last_frame_at = time.monotonic()
        while not self.stop.is_set():
            if self.cam.is_file and not Path(self.cam.source).exists():
                log.error("video file not found: %s", self.cam.display, **ctx(camera=self.cam.camera_id))
                self._set_state("failed", force=True)
                return
            cap = self.cam.open() if self.cam.reachable() else None
            if cap is not None and not cap.isOpened() and self.cam.is_file:
                cap.release()
                log.error("cannot decode video file: %s", self.cam.display, **ctx(camera=self.cam.camera_id))
                self._set_state("failed", force=True)
                return
            if cap is None or not cap.isOpened():
                if cap is not None:
                    cap.release()
                if self._give_up(last_frame_at):
                    return
                self._set_state("reconnecting")
                CAMERA_RECONNECTS.labels(camera=self.cam.camera_id).inc()
                why = "cannot open source" if cap is not None else "source unreachable"
                log.warning("%s, retrying in %.1fs", why, delay, **ctx(camera=self.cam.camera_id))
                self.stop.wait(delay)
                delay = min(delay * 2, self.s.reconnect_max_s)
                continue
            frames_before = self.frames_processed
            try:
                ended = self._read(cap)
            except Exception:  # noqa: BLE001 - a bug or a bad frame must not end the camera for good
                log.exception("camera reader failed; reconnecting", **ctx(camera=self.cam.camera_id))
                ended = False
            finally:
                cap.release()
            self._end_tracks(self.tracker.close_all())
            if self.frames_processed > frames_before:
                delay = self.s.reconnect_initial_s  # only a source that delivered frames resets the backoff
                last_frame_at = time.monotonic()
            if ended and self.cam.is_file and not self.s.loop:
                break
            if not ended:
                if self._give_up(last_frame_at):
                    return
                self._set_state("reconnecting")
                CAMERA_RECONNECTS.labels(camera=self.cam.camera_id).inc()
                self.stop.wait(delay)
                delay = min(delay * 2, self.s.reconnect_max_s)
        self._set_state("ended", force=True)
        log.info("camera finished", **ctx(camera=self.cam.camera_id, frames=self.frames_processed,
                                          faces=self.faces_published))

    def _read(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source ends (True) or fails (False) or the worker stops (True)."""
        cid = self.cam.camera_id
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not (1.0 <= fps <= 240.0):
            fps = 25.0
        interval = 1.0 / self.s.max_fps if self.s.max_fps > 0 else 0.0
        start_wall, start_mono = time.time(), time.monotonic()
        index, failures, next_due = -1, 0, 0.0
        self._set_state("live", force=True)
        while not self.stop.is_set():
            if not cap.grab():
                if self.cam.is_file:
                    return True
                failures += 1
                if failures >= 3:
                    log.warning("stream lost", **ctx(camera=cid))
                    return False
                continue
            failures = 0
            index += 1
            FRAMES_READ.labels(camera=cid).inc()
            if self.cam.is_file:
                video_t = index / fps
                frame_ts = start_wall + video_t
                if self.s.realtime:  # pace a file like the camera it stands for
                    ahead = video_t - (time.monotonic() - start_mono)
                    if ahead > 0:
                        self.stop.wait(ahead)
                stream_t = video_t
            else:
                frame_ts = time.time()
                stream_t = time.monotonic() - start_mono
            if stream_t + 1e-6 < next_due:
                FRAMES_DROPPED.labels(camera=cid, reason="rate_cap").inc()
                continue
            next_due = max(next_due + interval, stream_t) if interval else 0.0
            ok, frame = cap.retrieve()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
                FRAMES_DROPPED.labels(camera=cid, reason="corrupt").inc()
                log.warning("corrupt frame skipped", **ctx(camera=cid, frame=index))
                continue
            self.process(frame, frame_ts, index)
        return True

    def process(self, frame: np.ndarray, frame_ts: float, index: int) -> list[FaceMessage]:
        """Detect, track, align and publish the faces of one frame; returns what was published."""
        t0 = time.perf_counter()
        cid = self.cam.camera_id
        messages: list = []
        cut = self._scene_cut(frame)
        if cut is None:
            # One frame unlike the last (a flash, a camera's exposure jump): skipped, tracks coast through it.
            FRAMES_DROPPED.labels(camera=cid, reason="flash").inc()
            return []
        if cut:
            # An edited clip's cut or a moved camera: nobody in view can be the same track.
            messages += self._track_ends(self.tracker.close_all())
        self.frame_size = (frame.shape[1], frame.shape[0])
        dets = self.detector.detect(frame)
        update = self.tracker.update(dets.boxes, frame_ts, frame_size=(frame.shape[1], frame.shape[0]),
                                     appearance=appearance_features(frame, dets.boxes))
        for i, track_id in enumerate(update.track_ids):
            track = self.tracker.get(track_id)
            if track is None or track.published >= self.s.max_crops_per_track:
                continue
            if not track.confirmed:
                # A tentative track publishes nothing (it may be a glitch or a mix-up the next frame undoes);
                # its first crop waits in memory and goes out with the confirmation.
                if track.held is None:
                    track.held = self._crop(frame, frame_ts, index, dets, i, track_id)
                continue
            if track.held is not None:
                messages.append(track.held)
                track.published, track.last_published, track.held = track.published + 1, track.held.ts, None
            if frame_ts - track.last_published < self.s.track_sample_interval_s:
                continue
            message = self._crop(frame, frame_ts, index, dets, i, track_id)
            if message is not None:
                messages.append(message)
                track.published += 1
                track.last_published = frame_ts
        faces = [m for m in messages if isinstance(m, FaceMessage)]
        messages += self._track_ends(update.ended)
        if messages and self._publish(messages):
            FACES_PUBLISHED.labels(camera=cid).inc(len(faces))
            self.faces_published += len(faces)
            self.faces_meter.add(len(faces))
        self.frames_processed += 1
        self.frames_meter.add()
        self.last_frame_ts = frame_ts
        FRAMES_PROCESSED.labels(camera=cid).inc()
        INGEST_LATENCY.observe(time.perf_counter() - t0)
        self._set_state("live")
        return faces

    def _crop(self, frame: np.ndarray, frame_ts: float, index: int, dets, i: int, track_id: str) -> FaceMessage | None:
        """The aligned crop of detection ``i`` as a face message (None when it cannot be aligned or encoded)."""
        try:
            crop = align_face(frame, dets.landmarks[i])
        except (ValueError, cv2.error) as exc:
            log.debug("face skipped: %s", exc, **ctx(camera=self.cam.camera_id))
            return None
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.s.jpeg_quality])
        if not ok:
            return None
        x, y, w, h = (int(round(v)) for v in dets.boxes[i])
        return FaceMessage(camera_id=self.cam.camera_id, ts=frame_ts, frame=index, track_id=track_id,
                           box=(x, y, w, h), score=float(dets.scores[i]), jpeg=jpeg.tobytes())

    def _scene_cut(self, frame: np.ndarray) -> bool | None:
        """True at a cut, None for a single frame unlike the ones before (a flash: not a cut, since the
        next frame looks like the earlier ones again; decided one frame late), False otherwise."""
        if not self.s.scene_cut_threshold:
            return False
        # Hue/saturation histogram of a thumbnail: moving people barely change it, a cut does
        # (measured on the sample clip: cuts 0.45-0.58, motion within a shot <= 0.22).
        hsv = cv2.cvtColor(cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
        cv2.normalize(hist, hist, 1, 0, cv2.NORM_L1)
        if self._thumb is None or cv2.compareHist(self._thumb, hist, cv2.HISTCMP_BHATTACHARYYA) <= \
                self.s.scene_cut_threshold:
            self._thumb, self._changed = hist, False
            return False
        if not self._changed:
            self._changed = True  # the reference stays: the next frame tells a flash from a cut
            return None
        self._thumb, self._changed = hist, False  # changed twice in a row: the new scene holds
        return True

    def _track_ends(self, tracks: list[Track]) -> list[TrackEnd]:
        return [self._track_end(t) for t in tracks if t.published]

    def _track_end(self, track: Track) -> TrackEnd:
        """The closed track with its footfall meaning: dwell, line crossing, zones (footfall.counting)."""
        w, h = self.frame_size
        path = [(t, x / w, y / h) for t, x, y in track.centres]
        zones = tuple((z.name, round(d, 3)) for z in self.zones if (d := z.dwell(path)) is not None)
        return TrackEnd(self.cam.camera_id, track.last_seen, track.track_id, track.published,
                        dwell=round(track.dwell_s, 3), crossing=self.line.crossing(path) if self.line else "",
                        zones=zones)

    def _end_tracks(self, tracks: list[Track]) -> None:
        ends = self._track_ends(tracks)
        if ends:
            self._publish(ends)


class IngestWorker:
    """All cameras of one worker process."""

    def __init__(self, settings: IngestSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.cameras = [replace(cam, timeout_s=settings.camera_timeout_s) for cam in parse_cameras(settings.cameras)]
        if not self.cameras:
            raise ValueError("no cameras configured: set FOOTFALL_CAMERAS, e.g. door=rtsp://host/stream")
        known = {c.camera_id for c in self.cameras}
        unknown = sorted((set(parse_count_lines(settings.count_lines)) | set(parse_count_zones(settings.count_zones)))
                         - known)
        if unknown:
            raise ValueError(f"counting lines or zones for cameras not in FOOTFALL_CAMERAS: {unknown}")
        model = ensure_yunet(settings.models_dir)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5,
                                          health_check_interval=10, retry_on_timeout=True)
        publisher = Publisher(self.redis, StreamKeys(settings.stream_prefix, settings.stream_shards),
                              settings.stream_maxlen)
        self.workers = [CameraWorker(cam, settings, FaceDetector(model, settings.detect_width,
                                                                 settings.detection_threshold, min_face_px=settings.min_face_px),
                                     publisher, self.stop) for cam in self.cameras]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for w in self.workers:
            t = threading.Thread(target=w.run, name=f"camera-{w.cam.camera_id}", daemon=True)
            t.start()
            self.threads.append(t)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def ready(self) -> bool:
        return redis_reachable(self.redis)

    def run(self, stop: threading.Event) -> None:
        """Start the cameras and wait until they all finish or ``stop`` is set (then they stop too)."""
        self.start()
        while self.alive() and not stop.is_set():
            stop.wait(0.5)
        stop.set()

    def close(self) -> None:
        self.join(timeout=10)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def main() -> None:
    settings = IngestSettings()
    worker = run_service(settings, 9101, lambda stop: IngestWorker(settings, stop))
    failed = [w.cam.camera_id for w in worker.workers if w.state == "failed"]
    log.info("ingest worker stopped", **ctx(failed_cameras=failed))
    if failed and len(failed) == len(worker.workers):
        raise SystemExit(f"every camera failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
