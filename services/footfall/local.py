"""The whole pipeline on one machine, no Docker, no camera: ``footfall-local``.

Starts, as local processes on loopback: Redis (``FOOTFALL_REDIS_URL`` or ``REDIS_URL`` if set, else an
embedded real redis-server with persistence off), the inference worker, the aggregator (on
SQLite by default), one ingest worker for the video sources, and the dashboard. With no
``--source`` it plays the demo: the sample clip from the data directory and a synthetic
entrance clip of labelled dataset faces. Progress is printed while it runs, the services' logs go to ``.footfall/logs/``;
Ctrl-C stops everything gracefully.

    footfall-local                                  # demo sources, dashboard on :8501
    footfall-local --source door=/videos/door.mp4 --source till=rtsp://cam/stream
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from footfall.config import PROJECT_ROOT, AggregatorSettings, ModelSettings
from footfall.db.migrate import upgrade
from footfall.db.store import make_engine, total_visitors
from footfall.demo import compose_clip, sample_faces
from footfall.embedded_redis import EmbeddedRedis, free_ports
from footfall.ingest.service import parse_cameras
from footfall.observability import redact_url
from footfall.schema import StreamKeys

STATE_DIR = PROJECT_ROOT / ".footfall"
LOG_DIR = STATE_DIR / "logs"
EXIT_WHEN_DONE_GIVE_UP_S = 60.0


def demo_sources(media_dir: Path) -> list[str]:
    data_dir = ModelSettings().data_dir
    sources = []
    clip = data_dir / "video" / "short_hamilton_clip.mp4"
    if clip.exists():
        sources.append(f"stage={clip}")
    if (data_dir / "utkface_128.tar").exists():
        entrance = media_dir / "entrance.mp4"
        if not entrance.exists():
            media_dir.mkdir(parents=True, exist_ok=True)
            print(f"composing the synthetic entrance clip {entrance} ...", flush=True)
            compose_clip(entrance, sample_faces(data_dir, 30), fps=25, size=(1280, 720), walk_s=3.0, gap_s=1.0,
                         concurrent=2)
        sources.append(f"entrance={entrance}")
    return sources


class Pipeline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_server: EmbeddedRedis | None = None
        self.env = dict(os.environ)

    def _spawn(self, name: str, module: str, extra_env: dict[str, str], args: list[str] | None = None) -> None:
        env = {**self.env, **extra_env}
        # Each service logs to its own file (a pipe nobody reads would block it once full).
        log = None if self.args.verbose else open(LOG_DIR / f"{name}.log", "ab")
        # Own session: a terminal's Ctrl-C reaches only this runner, which stops the services in order.
        self.procs[name] = subprocess.Popen([sys.executable, "-m", module, *(args or [])], env=env,
                                            stdout=subprocess.DEVNULL if log else None, stderr=log,
                                            start_new_session=True)

    def start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        redis_url = os.environ.get("FOOTFALL_REDIS_URL") or os.environ.get("REDIS_URL")
        if not redis_url:
            self.redis_server = EmbeddedRedis().start()
            redis_url = self.redis_server.url
            print(f"redis      embedded redis-server at {redis_url} (persistence off)")
        else:
            print(f"redis      {redact_url(redis_url)}")
        db_url = self.args.database_url or os.environ.get("FOOTFALL_DATABASE_URL") or \
            f"sqlite:///{STATE_DIR / 'footfall.db'}"
        upgrade(db_url)
        self.db_url, self.redis_url = db_url, redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.engine = make_engine(db_url)
        self.visitors_before = total_visitors(self.engine)  # earlier runs' visitors in the same database
        grpc_port, inference_metrics, aggregator_metrics, ingest_metrics = free_ports(4)
        common = {"FOOTFALL_REDIS_URL": redis_url, "FOOTFALL_DATABASE_URL": db_url,
                  "FOOTFALL_LOG_FORMAT": "text", "FOOTFALL_STREAM_PREFIX": self.args.prefix}
        self.env.update(common)
        self._spawn("inference", "footfall.inference.server",
                    {"FOOTFALL_GRPC_PORT": str(grpc_port), "FOOTFALL_GRPC_HOST": "127.0.0.1",
                     "FOOTFALL_METRICS_PORT": str(inference_metrics)})
        print(f"inference  gRPC 127.0.0.1:{grpc_port}, metrics http://127.0.0.1:{inference_metrics}/metrics")
        self._spawn("aggregator", "footfall.aggregator.service",
                    {"FOOTFALL_INFERENCE_TARGETS": f"127.0.0.1:{grpc_port}", "FOOTFALL_METRICS_PORT": str(aggregator_metrics),
                     "FOOTFALL_CONSUMER_NAME": "local"})
        print(f"aggregator metrics http://127.0.0.1:{aggregator_metrics}/metrics")
        print(f"database   {redact_url(db_url)}")
        sources = self.args.source or demo_sources(STATE_DIR / "media")
        if not sources:
            raise SystemExit("no video sources: pass --source name=path-or-url (no demo data found in "
                             f"{ModelSettings().data_dir})")
        self.sources = sources
        ingest_env = {"FOOTFALL_CAMERAS": ",".join(sources), "FOOTFALL_METRICS_PORT": str(ingest_metrics),
                      "FOOTFALL_LOOP": "true" if self.args.loop else "false",
                      "FOOTFALL_REALTIME": "false" if self.args.fast else "true"}
        if self.args.exit_when_done:
            # Done must come even when a source never answers: give it up, count what the others saw.
            give_up = self.env.get("FOOTFALL_CAMERA_GIVE_UP_S") or str(EXIT_WHEN_DONE_GIVE_UP_S)
            ingest_env["FOOTFALL_CAMERA_GIVE_UP_S"] = give_up
        self._spawn("ingest", "footfall.ingest.service", ingest_env)
        print(f"ingest     {', '.join(f'{c.camera_id}={c.display}' for c in parse_cameras(','.join(sources)))}, "
              f"metrics http://127.0.0.1:{ingest_metrics}/metrics")
        if self.args.exit_when_done:
            print(f"           a camera silent for {float(give_up):g} s is given up (FOOTFALL_CAMERA_GIVE_UP_S)")
        if not self.args.no_dashboard:
            port = self.args.dashboard_port
            self._spawn("dashboard", "footfall.dashboard_launcher", {"FOOTFALL_DASHBOARD_PORT": str(port),
                                                                     "FOOTFALL_DASHBOARD_ADDRESS": "127.0.0.1"})
            print(f"dashboard  http://127.0.0.1:{port}")

    def progress(self, started: float) -> str:
        r = self.redis
        keys = StreamKeys(self.args.prefix)
        cams = []
        for cam in sorted(c.decode() for c in r.smembers(keys.cameras)):
            h = {k.decode(): v.decode() for k, v in r.hgetall(keys.camera(cam)).items()}
            cams.append(f"{cam}={h.get('state', '?')} {float(h.get('frames_per_s', 0)):.1f}fps")
        total = total_visitors(self.engine)
        return (f"[{time.monotonic() - started:5.0f}s] {' '.join(cams) or 'cameras starting'} | "
                f"stream {r.xlen(keys.faces)} entries | visitors counted {total - self.visitors_before} this run "
                f"({total} in the database)")

    def cameras_in(self, state: str) -> list[str]:
        keys = StreamKeys(self.args.prefix)
        return sorted(c.decode() for c in self.redis.smembers(keys.cameras)
                      if self.redis.hget(keys.camera(c.decode()), "state") == state.encode())

    def drained(self) -> bool:
        return self.redis.xlen(StreamKeys(self.args.prefix).faces) == 0

    def failed(self) -> str | None:
        for name, p in self.procs.items():
            code = p.poll()
            if code not in (None, 0):
                log = LOG_DIR / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                return f"{name} exited with code {code} (log: {log})\n{tail}"
        return None

    def stop(self) -> None:
        # In dependency order, each one gone before the next is asked: the aggregator still calls the
        # inference worker while it stops (stopping them together logged an aggregator ERROR).
        for name in ("ingest", "dashboard", "aggregator", "inference"):
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.redis_server:
            self.redis_server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", help="camera_id=file|url|webcam-index (repeatable)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--prefix", default="footfall", help="Redis key prefix")
    parser.add_argument("--loop", action="store_true", help="replay file sources forever")
    parser.add_argument("--fast", action="store_true", help="read files as fast as possible, not in real time")
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--dashboard-port", type=int, default=8501)
    parser.add_argument("--exit-when-done", action="store_true",
                        help="stop once the sources ended and every visitor is counted")
    parser.add_argument("--verbose", action="store_true", help="show the services' own logs")
    args = parser.parse_args(argv)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    pipeline = Pipeline(args)
    started = time.monotonic()
    code = 0
    try:
        pipeline.start()
        settings = AggregatorSettings()
        ingest_done_at = None
        while not stop["now"]:
            for _ in range(30):
                if stop["now"]:
                    break
                time.sleep(0.1)
            if stop["now"]:
                break
            problem = pipeline.failed()
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                code = 1
                break
            try:
                print(pipeline.progress(started), flush=True)
            except (redis.RedisError, OSError) as exc:
                print(f"(progress unavailable: {exc})", flush=True)
            if pipeline.procs["ingest"].poll() == 0 and ingest_done_at is None:
                ingest_done_at = time.monotonic()
                given_up = pipeline.cameras_in("failed")
                if given_up:
                    print(f"gave up on camera(s) {', '.join(given_up)}: no frames (see .footfall/logs/ingest.log); "
                          "counting what the others saw", flush=True)
                print("all sources ended; counting the last visitors ...", flush=True)
            if ingest_done_at and pipeline.drained() and \
                    time.monotonic() - ingest_done_at > settings.visit_timeout_s:
                print(pipeline.progress(started).split("|")[-1].strip() + " — done.", flush=True)
                if args.exit_when_done or args.no_dashboard:
                    break
                print("the dashboard keeps running; Ctrl-C to stop.", flush=True)
                ingest_done_at = float("inf")
    finally:
        pipeline.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
