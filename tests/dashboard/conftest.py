"""Fixtures of the dashboard tests: a SQLite database of known aggregates, PostgreSQL schemas, AppTest.

The known data set (``KNOWN_ROWS``) is written by hand so the tests can compute every figure
independently with plain Python (see ``truth``). The clock is pinned at ``NOW`` (Wednesday
2024-05-08 15:30 local time) through the app's ``footfall_now`` session value.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from footfall.config import PROJECT_ROOT
from footfall.db.migrate import upgrade
from footfall.db.models import CameraHealth, VisitorCount
from footfall.db.store import refresh_rollups

from ..support import postgres_schema

DASHBOARD_DIR = PROJECT_ROOT / "dashboard"
APP = DASHBOARD_DIR / "app.py"
if str(DASHBOARD_DIR) not in sys.path:
    sys.path.insert(0, str(DASHBOARD_DIR))

NOW = datetime(2024, 5, 8, 15, 30)  # a Wednesday
DAY = timedelta(days=1)
TODAY = datetime(2024, 5, 8)


def _row(when: datetime, camera: str, band: str, gender: str, emotion: str, race: str, visitors: int, age: float):
    return {"camera_id": camera, "bucket_start": when, "age_band": band, "gender": gender, "race": race,
            "emotion": emotion, "visitors": visitors, "age_sum": visitors * age}


# Hand-written aggregates (UTC bucket starts). Comments say which checks they feed.
KNOWN_ROWS = [
    # today, before NOW
    _row(TODAY.replace(hour=9), "cam-a", "25-34", "female", "happy", "white", 30, 28.0),
    _row(TODAY.replace(hour=9, minute=1), "cam-a", "35-44", "male", "neutral", "", 20, 40.0),
    _row(TODAY.replace(hour=14), "cam-a", "18-24", "female", "sad", "asian", 12, 21.0),
    _row(TODAY.replace(hour=10), "cam-b", "25-34", "male", "angry", "black", 25, 30.0),
    _row(TODAY.replace(hour=14, minute=30), "cam-b", "65+", "female", "neutral", "indian", 3, 70.0),  # < k
    _row(TODAY.replace(hour=11), "cam-c", "45-54", "male", "surprise", "others", 15, 50.0),
    # yesterday: before and after the time of NOW (like-for-like comparison of "Today")
    _row(TODAY - DAY + timedelta(hours=9), "cam-a", "25-34", "female", "happy", "white", 40, 30.0),
    _row(TODAY - DAY + timedelta(hours=12), "cam-b", "35-44", "male", "neutral", "white", 10, 38.0),
    _row(TODAY - DAY + timedelta(hours=18), "cam-a", "18-24", "male", "happy", "white", 50, 22.0),
    # earlier this week (last 7 days = 2024-05-02 .. 2024-05-08)
    _row(datetime(2024, 5, 3, 16), "cam-c", "55-64", "female", "fear", "", 8, 60.0),
    _row(datetime(2024, 5, 4, 11), "cam-a", "25-34", "male", "happy", "white", 60, 31.0),
    _row(datetime(2024, 5, 4, 11, 5), "cam-b", "13-17", "female", "disgust", "asian", 2, 15.0),  # < k
    _row(datetime(2024, 5, 2, 0, 0), "cam-b", "0-12", "male", "happy", "white", 6, 8.0),  # first minute
    # the 7 days before (previous period of "Last 7 days": 2024-04-25 .. 2024-05-01)
    _row(datetime(2024, 4, 26, 10), "cam-a", "25-34", "female", "happy", "white", 70, 29.0),
    _row(datetime(2024, 5, 1, 23, 59), "cam-c", "35-44", "male", "neutral", "", 9, 41.0),  # last minute
    # within 30 days only, and far outside every range
    _row(datetime(2024, 4, 12, 13), "cam-b", "45-54", "female", "sad", "white", 33, 47.0),
    _row(datetime(2024, 3, 1, 12), "cam-a", "25-34", "male", "happy", "white", 99, 30.0),
    # cam-c's first data (so the previous 7 days are comparable for every camera; cam-b starts 2024-04-12)
    _row(datetime(2024, 3, 1, 13), "cam-c", "25-34", "female", "neutral", "", 10, 35.0),
]
CAMERAS_WITH_COUNTS = ["cam-a", "cam-b", "cam-c"]
SILENT_CAMERA = "cam-d"  # reports health, never counted anyone


def health_rows(now_utc: datetime) -> list[dict]:
    def row(camera, state, age_s, fps, faces, lag):
        return {"camera_id": camera, "state": state,
                "last_frame_at": None if age_s is None else now_utc - timedelta(seconds=age_s),
                "frames_per_s": fps, "faces_per_s": faces, "stream_lag": lag, "updated_at": now_utc}

    # stream_lag: one figure for the shared face stream, copied onto every row (as the aggregator does)
    return [row("cam-a", "live", 2, 5.0, 0.8, 1), row("cam-b", "live", 600, 0.0, 0.0, 1),
            row("cam-c", "reconnecting", 30, 0.0, 0.0, 1), row(SILENT_CAMERA, "live", 1, 4.9, 0.0, 1)]


def write_rows(url: str, rows: list[dict], health: list[dict] | None = None) -> None:
    """Visitor cells (and their rollups, as the migration's backfill computes them) and health rows."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if rows:
            conn.execute(VisitorCount.__table__.insert(), rows)
            refresh_rollups(conn)
        if health:
            conn.execute(CameraHealth.__table__.insert(), health)
    engine.dispose()


@pytest.fixture
def empty_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    return url


@pytest.fixture
def known_db(tmp_path) -> str:
    """SQLite database holding ``KNOWN_ROWS`` and health rows relative to the real clock."""
    url = f"sqlite:///{tmp_path / 'known.db'}"
    upgrade(url)
    write_rows(url, KNOWN_ROWS, health_rows(datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)))
    return url


@pytest.fixture
def postgres_url():
    """A fresh migrated schema in the test PostgreSQL (FOOTFALL_TEST_POSTGRES_URL); dropped afterwards."""
    with postgres_schema("dash_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path) -> str:
    """An empty migrated database of each kind (PostgreSQL: see ``tests.support.postgres_schema``)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'any.db'}"
        upgrade(url)
        return url
    return request.getfixturevalue("postgres_url")


DASHBOARD_ENV = ("FOOTFALL_DATABASE_URL", "FOOTFALL_K_ANONYMITY", "FOOTFALL_AUTH_USERNAME",
                 "FOOTFALL_AUTH_PASSWORD_HASH", "FOOTFALL_REFRESH_S", "FOOTFALL_SITES", "FOOTFALL_ENABLE_RACE",
                 "FOOTFALL_ENABLE_EMOTION", "FOOTFALL_TIMEZONE", "FOOTFALL_SESSION_SECRET", "FOOTFALL_SESSION_HOURS",
                 "FOOTFALL_OPENING_HOURS")


@pytest.fixture
def dash_env(monkeypatch):
    """A clean FOOTFALL_* dashboard environment; returns monkeypatch to set more."""
    for name in DASHBOARD_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def app_test(dash_env):
    """Factory: ``app_test(url, **env)`` -> an AppTest of dashboard/app.py with the clock at NOW, run once."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()

    def make(url: str | None, run: bool = True, now: datetime | None = NOW, **env: str) -> AppTest:
        if url is not None:
            dash_env.setenv("FOOTFALL_DATABASE_URL", url)
        for name, value in env.items():
            dash_env.setenv(f"FOOTFALL_{name.upper()}", value)
        at = AppTest.from_file(str(APP), default_timeout=60)
        if now is not None:
            at.session_state["footfall_now"] = now
        if run:
            at.run()
        return at

    yield make
    st.cache_data.clear()
    st.cache_resource.clear()


def output_dir() -> Path:
    """The repository's git-ignored test-output/ folder (screenshots kept after the run)."""
    path = PROJECT_ROOT / "test-output"
    path.mkdir(exist_ok=True)
    return path
