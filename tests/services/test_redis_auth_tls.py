"""Redis with a password and TLS (`rediss://`), as compose and k8s can run it: a real redis-server
started with --requirepass and a TLS port (certificates made in the test by footfall-certs); the
ingest worker's own connection code reaches it only with the password and the CA."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis

from footfall.config import IngestSettings
from footfall.embedded_redis import free_port
from footfall.tls import generate_certificates

from ..support import missing_requirement

PASSWORD = "test-redis-password"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        missing_requirement("redis-server not installed (Debian: apt-get install -y redis-server)")
    folder = tmp_path_factory.mktemp("redis-tls")
    certs = generate_certificates(folder / "certs", ["127.0.0.1"])
    port = free_port()
    proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
                             "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no",
                             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                missing_requirement(f"redis-server cannot serve TLS: {proc.stdout.read().decode()[-500:]}")
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server with TLS did not start"
                time.sleep(0.1)
        yield port, certs
    finally:
        proc.terminate()
        proc.wait(10)


def _ingest_ready(url: str, models_dir, tmp_path) -> bool:
    from footfall.ingest.service import IngestWorker

    worker = IngestWorker(IngestSettings(redis_url=url, models_dir=models_dir, cameras=f"cam={tmp_path}/none.mp4"))
    try:
        return worker.ready()
    finally:
        worker.redis.close()


def test_ingest_reaches_redis_over_tls_with_the_password(tls_redis, models_dir, tmp_path):
    port, certs = tls_redis
    ca = certs / "ca.crt"
    assert _ingest_ready(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}", models_dir, tmp_path)


def test_redis_refuses_no_password_a_wrong_one_plain_text_and_an_unverified_server(tls_redis, models_dir,
                                                                                   tmp_path):
    port, certs = tls_redis
    ca = certs / "ca.crt"
    assert not _ingest_ready(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", models_dir, tmp_path)
    assert not _ingest_ready(f"rediss://:wrong@127.0.0.1:{port}/0?ssl_ca_certs={ca}", models_dir, tmp_path)
    assert not _ingest_ready(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", models_dir, tmp_path)
    # the system's CAs do not know the private one: the server is not trusted
    assert not _ingest_ready(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", models_dir, tmp_path)
