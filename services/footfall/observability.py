"""What every service shares: structured logs, Prometheus metrics, health endpoints, SIGTERM.

``serve_http(port, ready)`` starts one HTTP endpoint per service with ``/metrics``
(Prometheus text), ``/healthz`` (the process is alive) and ``/readyz`` (``ready()`` is true).
``shutdown_event()`` returns an event set on SIGTERM/SIGINT so loops stop cleanly.
``run_service(settings, port, make)`` is every service's ``main()``: logging, SIGTERM shutdown,
the endpoint with the service's readiness, run until stopped, close.

Example:
    >>> import urllib.request
    >>> server = serve_http(0, ready=lambda: True)
    >>> urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz").status
    200
    >>> server.close()
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

# ---- metrics (one registry per process; names documented in docs/deploy.md) ----------------
FRAMES_READ = Counter("footfall_frames_read", "Frames decoded from the source", ["camera"])
FRAMES_PROCESSED = Counter("footfall_frames_processed", "Frames run through face detection", ["camera"])
FRAMES_DROPPED = Counter("footfall_frames_dropped", "Frames skipped (frame-rate cap) or corrupt", ["camera", "reason"])
FACES_PUBLISHED = Counter("footfall_faces_published", "Face crops published to Redis", ["camera"])
CAMERA_UP = Gauge("footfall_camera_up", "1 while the camera delivers frames", ["camera"])
CAMERA_RECONNECTS = Counter("footfall_camera_reconnects", "Reconnect attempts", ["camera"])
INGEST_LATENCY = Histogram("footfall_ingest_frame_seconds", "Decode-to-publish time of a processed frame",
                           buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))
BATCH_SIZE = Histogram("footfall_inference_batch_size", "Crops per model run (micro-batches)",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INFERENCE_LATENCY = Histogram("footfall_inference_latency_seconds", "Model run time per micro-batch",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
REQUESTS = Counter("footfall_inference_requests", "Predict requests", ["code"])
STREAM_LAG = Gauge("footfall_stream_lag", "Entries in the face stream not yet delivered to the aggregator")
PENDING = Gauge("footfall_pending_entries", "Entries delivered but not yet acknowledged (open visitors)")
DB_WRITES = Counter("footfall_db_writes", "Database transactions committed", ["kind"])
VISITORS = Counter("footfall_visitors_counted", "Visitors counted", ["camera"])
DEAD_LETTERS = Counter("footfall_dead_letters", "Stream entries moved to the dead-letter stream", ["reason"])
AGGREGATOR_STAGE = Counter("footfall_aggregator_stage_seconds", "Aggregator time per stage (read, decode, "
                           "inference, fold, commit, ack, lease)", ["stage"])
INFERENCE_DECODE = Counter("footfall_inference_decode_seconds", "Inference worker time decoding and preparing crops")
SHARDS_OWNED = Gauge("footfall_shards_owned", "Stream shards this aggregator holds the lease of")
FRAME_TO_DB = Histogram("footfall_frame_to_db_seconds", "Time from a visitor's last frame to its database commit",
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key.startswith("ctx_"):
                entry[key[4:]] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per record for people: the message followed by its context fields as key=value.

    >>> record = logging.LogRecord("footfall.ingest", logging.INFO, "", 0, "camera live", None, None)
    >>> record.ctx_camera, record.ctx_fps = "door", 5.0
    >>> TextFormatter().format(record).split(" ", 2)[2]
    'INFO footfall.ingest: camera live camera=door fps=5.0'
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{key[4:]}={value}" for key, value in record.__dict__.items() if key.startswith("ctx_"))
        if not fields:
            return text
        message, sep, rest = text.partition("\n")  # a traceback stays below the line
        return f"{message} {fields}{sep}{rest}"


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# Query parameters some cameras (and services) take credentials in (``?user=admin&password=...``).
_SECRET_PARAMS = {"user", "username", "password", "pass", "passwd", "pwd", "token", "auth", "key", "apikey",
                  "api_key", "secret", "signature"}
_USERINFO = re.compile(r"://[^/?#\s]*@")


def redact_url(source: str) -> str:
    """A URL as it may be shown anywhere (logs, console, Redis, dashboard): its user info and
    credential-like query values replaced by ``***``; anything that is not a URL unchanged.
    Camera sources, Redis and database URLs go through it before they are logged or printed.

    >>> redact_url("rtsp://viewer:S3cretPass@10.0.0.5:554/stream?channel=1&password=x")
    'rtsp://***@10.0.0.5:554/stream?channel=1&password=***'
    >>> redact_url("/videos/door.mp4"), redact_url("0"), redact_url("rtsp://[bad@h")
    ('/videos/door.mp4', '0', 'rtsp://***@h')
    """
    if "://" not in source:
        return source
    source = _USERINFO.sub("://***@", source)
    try:
        parts = urlsplit(source)
    except ValueError:  # not a URL after all: the user info is gone, keep the rest as it is
        return source
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
        return source
    query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def ctx(**fields) -> dict:
    """Structured fields for a log call: ``log.info("msg", extra=ctx(camera="door"))``."""
    return {"extra": {f"ctx_{k}": v for k, v in fields.items()}}


class HttpEndpoint:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_http(port: int, ready: Callable[[], bool] = lambda: True, host: str = "0.0.0.0") -> HttpEndpoint:
    """Serve /metrics, /healthz and /readyz on ``port`` (0: any free port) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                body, ctype, code = b"ok\n", "text/plain", 200
            elif self.path.startswith("/readyz"):
                ok = bool(ready())
                body, ctype, code = (b"ready\n" if ok else b"not ready\n"), "text/plain", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep probes out of the logs
            pass

    return HttpEndpoint(ThreadingHTTPServer((host, port), Handler))


def shutdown_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    event = threading.Event()

    def handler(signum, _frame) -> None:
        logging.getLogger("footfall").info("signal %s: shutting down", signal.Signals(signum).name)
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return event


class Service(Protocol):
    """What ``run_service`` needs of a service."""

    def ready(self) -> bool:
        """True while the service can do its work (``/readyz``)."""

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set (or the work is done)."""

    def close(self) -> None:
        """Release what the service holds (after ``run``, also when it raised)."""


S = TypeVar("S", bound=Service)


def redis_reachable(client) -> bool:
    """Readiness of a service that needs Redis: the server answers a PING."""
    from redis.exceptions import RedisError

    try:
        return bool(client.ping())
    except RedisError:
        return False


def run_service(settings, default_metrics_port: int, make: Callable[[threading.Event], S | None]) -> S | None:
    """The skeleton of every service's ``main()``: logs as ``settings`` say, a stop event set by
    SIGTERM/SIGINT, ``/metrics``, ``/healthz`` and ``/readyz`` on ``settings.metrics_port``
    (0: ``default_metrics_port``), the service made with the stop event (alive but not ready while
    ``make`` waits for its dependencies; ``None``: stopped before it could start), run until
    stopped, then closed. Returns the closed service (for a final report)."""
    setup_logging(settings.log_level, settings.log_format)
    stop = shutdown_event()
    started: list[S] = []
    http = serve_http(settings.metrics_port or default_metrics_port,
                      ready=lambda: bool(started) and started[0].ready())
    try:
        service = make(stop)
        if service is None:
            return None
        started.append(service)
        try:
            service.run(stop)
        finally:
            service.close()
    finally:
        http.close()
    return service


class RateMeter:
    """Events per second over a sliding window (for the camera state shown to operators)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def add(self, n: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.extend([now] * n)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        return len(self._times) / self.window_s

    def _trim(self, now: float) -> None:
        cut = now - self.window_s
        i = 0
        while i < len(self._times) and self._times[i] < cut:
            i += 1
        del self._times[:i]
