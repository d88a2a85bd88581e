"""Fixtures shared by all test folders.

Tests that need the real datasets in ``../shared/data`` (or ``FOOTFALL_DATA_DIR``) use the
``shared_data`` fixture: it skips with a clear reason when the data is missing, except under
``CI=true``, where a missing dataset is a failure (CI must never pass by skipping).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .support import missing_requirement, postgres_schema


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data directory (``ModelSettings().data_dir``) holding the datasets of ../shared/data."""
    from footfall.config import ModelSettings

    data_dir = Path(ModelSettings().data_dir)
    needed = ("utkface_128.tar", "utkface_128.csv", "ferplus_48.tar", "ferplus_48.csv", "ferplus_votes.csv")
    missing = [n for n in needed if not (data_dir / n).exists()]
    if missing:
        missing_requirement(f"datasets not found in {data_dir} (missing {', '.join(missing)}); "
                            f"set FOOTFALL_DATA_DIR or see ../shared/data/README.md")
    return data_dir


# ---- services: real Redis, real databases, real gRPC ---------------------------------------------

@pytest.fixture(scope="session")
def redis_server_url():
    """The running Redis (FOOTFALL_TEST_REDIS_URL, default 127.0.0.1:6379), else an embedded real one."""
    import redis

    from footfall.embedded_redis import EmbeddedRedis

    url = os.environ.get("FOOTFALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture()
def stream_prefix(redis_server_url):
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import secrets

    import redis

    prefix = f"fftest-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(redis_server_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, migrated database: SQLite in tmp_path, and PostgreSQL in a schema of its own when
    FOOTFALL_TEST_POSTGRES_URL is set (CI sets it; then an unreachable server is a failure)."""
    from footfall.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'footfall.db'}"
        upgrade(url)
        yield url
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def face_model() -> Path:
    """The committed INT8 model the services run by default."""
    from footfall.config import InferenceSettings

    path = Path(InferenceSettings().face_model)
    if not path.exists():
        pytest.fail(f"committed model {path} is missing")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Folder with the YuNet detector (FOOTFALL_MODELS_DIR; ../shared/models here)."""
    from footfall.config import IngestSettings
    from footfall.vision import YUNET_FILE

    path = Path(IngestSettings().models_dir)
    if not (path / YUNET_FILE).exists():
        missing_requirement(f"YuNet model not found in {path}; set FOOTFALL_MODELS_DIR")
    return path


@pytest.fixture()
def inference_server(face_model):
    """A real gRPC inference server on a free loopback port; yields it (``.port``)."""
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    server = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model,
                                               max_wait_ms=2.0))
    yield server
    if server.serving:
        server.stop(grace_s=1)


@pytest.fixture(scope="session")
def synthetic_clip(shared_data, tmp_path_factory):
    """A 1280x720 clip of 12 labelled UTKFace test faces walking across a shop scene, and its truth."""
    from footfall.demo import compose_clip
    from footfall.demo import sample_faces

    path = tmp_path_factory.mktemp("media") / "entrance.mp4"
    faces = sample_faces(shared_data, 12, seed=1)
    truth = compose_clip(path, faces, fps=25, size=(1280, 720), walk_s=2.0, gap_s=1.0, concurrent=2)
    return path, truth
