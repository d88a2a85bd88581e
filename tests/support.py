"""Helpers shared by the test folders (``from ..support import ...`` inside a subfolder).

- ``missing_requirement``: the one rule for a test whose requirement (dataset, tool, server) is
  absent: skip with the reason, but fail under ``CI=true`` (CI must never pass by skipping).
- ``postgres_schema``: a throwaway, migrated schema in the test PostgreSQL
  (``FOOTFALL_TEST_POSTGRES_URL``; CI sets it through .ci/run).
- ``TcpProxy``: a loopback TCP proxy a test stops and starts (a database outage).
- ``container_memory_limit`` / ``peak_rss``: a service's k8s memory limit and a process's peak
  resident memory, for tests that hold a real process to its container's bound.
- ``import_file``: a script of the repository (``scripts/``, ``benchmarks/``, ``docker/``), which
  is no package module, imported by its path.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

POSTGRES_URL_VARIABLE = "FOOTFALL_TEST_POSTGRES_URL"


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` is 1, true or yes, any case)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_requirement(reason: str) -> NoReturn:
    """Skip the calling test, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement is a failure)")
    pytest.skip(reason)


def import_file(path: Path) -> ModuleType:
    """The Python file at ``path`` imported as a module named after its stem."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def container_memory_limit(manifest: str) -> int:
    """The memory limit (bytes) of the first container of the Deployment in ``k8s/base/<manifest>``."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "k8s" / "base" / manifest
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Deployment":
            limit = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            return int(limit[:-2]) * {"Mi": 2**20, "Gi": 2**30}[limit[-2:]]
    raise ValueError(f"no Deployment in {path}")


def peak_rss(pid: int) -> int:
    """A running process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for process {pid}")


def with_search_path(url: str, schema: str) -> str:
    """``url`` with the PostgreSQL ``search_path`` set to ``schema`` (libpq ``options``).

    >>> with_search_path("postgresql+psycopg://u@h/db", "s1")
    'postgresql+psycopg://u@h/db?options=-csearch_path%3Ds1'
    >>> with_search_path("postgresql+psycopg://u@h/db?sslmode=disable", "s1")
    'postgresql+psycopg://u@h/db?sslmode=disable&options=-csearch_path%3Ds1'
    """
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def postgres_schema(prefix: str = "fftest") -> Iterator[str]:
    """A fresh schema ``<prefix>_<random>`` with the footfall tables (migrated); yields a URL whose
    search_path points at it, and drops the schema afterwards.

    Not configured (``FOOTFALL_TEST_POSTGRES_URL`` unset): ``missing_requirement``. Configured but
    unreachable: a failure, since whoever set the variable expects the server to be there.
    """
    import sqlalchemy as sa

    from footfall.db.migrate import upgrade

    base = os.environ.get(POSTGRES_URL_VARIABLE)
    if not base:
        missing_requirement(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} "
                            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(base, connect_args={"connect_timeout": 3})
    try:
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            first_line = str(exc.orig).strip().partition("\n")[0]
            pytest.fail(f"PostgreSQL at {base} unreachable: {first_line}", pytrace=False)
        try:
            url = with_search_path(base, schema)
            upgrade(url)
            yield url
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


class TcpProxy:
    """A TCP proxy from a loopback port to ``target`` (host, port), for outages a test controls:
    ``stop()`` closes the port and drops every open connection (as a dead database host would),
    ``start()`` serves again on the same port.

    >>> import socket
    >>> echo = socket.create_server(("127.0.0.1", 0))
    >>> proxy = TcpProxy(echo.getsockname()).start()
    >>> client = socket.create_connection(("127.0.0.1", proxy.port))
    >>> server_side, _ = echo.accept()
    >>> client.sendall(b"ping"); server_side.recv(4)
    b'ping'
    >>> proxy.stop(); client.recv(4)  # dropped
    b''
    >>> for s in (client, server_side, echo): s.close()
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        from footfall.embedded_redis import free_port

        # Below the ephemeral range: while the proxy is stopped, no outgoing connection takes its port.
        self.target, self.port = target, port or free_port()
        self._lock = threading.Lock()
        self._sockets: list = []
        self._listener = None

    def start(self) -> TcpProxy:

        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def _accept(self, listener) -> None:

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:

        if self._listener is not None:
            # shutdown first: a bare close() leaves the socket listening while _accept waits in accept()
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def drain(agg, timeout_s: float = 60.0) -> list:
    """Step the aggregator until its stream is empty and every visitor is committed; returns the
    records. A stall (entries left or visitors open after ``timeout_s``) fails the test."""
    records, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records += agg.step()
        if agg.redis.xlen(agg.keys.faces) == 0 and not agg.open:
            return records
    raise AssertionError(f"stalled: {agg.redis.xlen(agg.keys.faces)} entries left, {len(agg.open)} open visitors")
