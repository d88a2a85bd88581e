"""Rollups: the hourly and daily tables (full and narrow) always equal the sum of their fine cells.

``count_visitors`` writes them in the transaction of the cells (hypothesis: random batches of
visitors, redeliveries included), and migrations 0003 (full) and 0004 (narrow) backfill them from
cells already stored;
SQLite and, when FOOTFALL_TEST_POSTGRES_URL is set, PostgreSQL (``db_url``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from footfall.counting import ENTRY, EXIT, PASSER_BY
from footfall.db.migrate import upgrade
from footfall.db.models import (NARROW_ROLLUPS, ROLLUPS, DwellCount, FlowCount, VisitorCount, cell_keys,
                                cell_sums, rollups_of)
from footfall.db.records import VisitorRecord
from footfall.db.store import count_visitors, floor_time, make_engine

START = datetime(2026, 3, 28, 22, 0)  # buckets spread over three UTC days


def _rows(conn, model) -> dict[tuple, tuple]:
    keys, sums = cell_keys(model), cell_sums(model)
    table = model.__table__
    return {tuple(r[:len(keys)]): tuple(r[len(keys):])
            for r in conn.execute(sa.select(*(table.c[k] for k in keys), *(table.c[s] for s in sums)))}


def _expected(fine: dict[tuple, tuple], model, grain: str, rollup) -> dict[tuple, tuple]:
    """The fine cells summed in Python per floored bucket and the rollup's key columns (independent of the
    store's code path)."""
    keys, sums = cell_keys(model), cell_sums(model)
    out: dict[tuple, list] = defaultdict(lambda: [0] * len(cell_sums(rollup)))
    for key, values in fine.items():
        named = {**dict(zip(keys, key)), **dict(zip(sums, values))}
        named["bucket_start"] = floor_time(named["bucket_start"], grain)
        cell = out[tuple(named[k] for k in cell_keys(rollup))]
        for i, name in enumerate(cell_sums(rollup)):
            cell[i] += named[name]
    return {k: tuple(v) for k, v in out.items()}


def assert_rollups_match(engine) -> int:
    """Every rollup row equals the sum of its fine cells (ints exactly, age_sum to float rounding)."""
    checked = 0
    with engine.connect() as conn:
        for model in ROLLUPS:
            fine = _rows(conn, model)
            for grain, rollup in rollups_of(model):
                stored, expected = _rows(conn, rollup), _expected(fine, model, grain, rollup)
                assert stored.keys() == expected.keys(), (rollup.__tablename__, set(stored) ^ set(expected))
                for key, values in expected.items():
                    assert stored[key] == pytest.approx(values, rel=1e-9), (rollup.__tablename__, key)
                checked += len(stored)
    return checked


def _clear(engine) -> None:
    with engine.begin() as conn:
        for model in ROLLUPS:
            for table in (model, *(rollup for _, rollup in rollups_of(model))):
                conn.execute(table.__table__.delete())
        conn.execute(sa.text("DELETE FROM counted_tracks"))


visitor = st.builds(
    lambda track, minute, end_minutes, band, gender, emotion, age, crossing, zones, dwell: VisitorRecord(
        camera_id=f"cam-{track % 3}", track_id=f"t{track}", bucket_start=START + timedelta(minutes=minute),
        first_ts=0.0, last_ts=1.0, faces=2, age=age, age_band=band, gender=gender, race="", emotion=emotion,
        dwell_s=dwell, crossing=crossing, zones=tuple((z, dwell) for z in zones),
        end_bucket_start=START + timedelta(minutes=minute + end_minutes) if crossing == EXIT else None),
    st.integers(0, 60), st.integers(0, 26 * 60), st.integers(0, 90),
    st.sampled_from(["18-24", "25-34", "65+"]), st.sampled_from(["male", "female"]),
    st.sampled_from(["happy", "neutral", ""]), st.floats(3.0, 90.0), st.sampled_from(["", ENTRY, EXIT, PASSER_BY]),
    st.lists(st.sampled_from(["till", "window"]), max_size=2, unique=True), st.floats(0.0, 900.0))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(st.lists(visitor, min_size=1, max_size=8), min_size=1, max_size=4))
def test_rollups_equal_the_sum_of_the_fine_cells_after_random_counting(db_url, batches):
    engine = make_engine(db_url)
    try:
        _clear(engine)
        for batch in batches:
            count_visitors(engine, batch)  # a track of an earlier batch is skipped: counted once
        assert assert_rollups_match(engine) > 0
    finally:
        engine.dispose()


def test_migration_backfills_rollups_from_stored_cells_and_counting_continues_them(db_url):
    """Cells stored before 0003 are rolled up by the upgrade; a visitor counted afterwards lands in the
    same rollup rows (same key text on SQLite, no duplicate row)."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            for model in ROLLUPS:  # back to revision 0002: no rollup tables
                for _, rollup in rollups_of(model):
                    rollup.__table__.drop(conn)
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
            when = [START + timedelta(minutes=m) for m in (0, 1, 59, 60, 125, 24 * 60 + 3)]
            conn.execute(VisitorCount.__table__.insert(), [
                {"camera_id": cam, "bucket_start": t, "age_band": "25-34", "gender": g, "race": "", "emotion": "happy",
                 "visitors": i + 1, "age_sum": 30.5 * (i + 1)}
                for i, t in enumerate(when) for cam in ("a", "b") for g in ("male", "female")])
            conn.execute(FlowCount.__table__.insert(), [
                {"camera_id": "a", "bucket_start": t, "zone": z, "visitors": 3, "entries": 2, "exits": 1,
                 "passers_by": 0} for t in when for z in ("", "till")])
            conn.execute(DwellCount.__table__.insert(), [
                {"camera_id": "a", "bucket_start": t, "zone": "", "dwell_band": "<10s", "visitors": 2} for t in when])
        upgrade(db_url)
        # 4 UTC hours and 2 days: visitors 2 cameras x 2 genders, flow 2 zones, dwell 1 band; narrow: per
        # camera 4 hours, and 2 days of genders, age bands x genders, emotions (1), races (1)
        rows = (2 * 2 + 2 + 1) * (4 + 2) + 2 * 4 + 2 * 2 * (2 + 2 + 1 + 1)
        assert assert_rollups_match(engine) == rows
        with engine.connect() as conn:
            hourly = conn.execute(sa.select(sa.func.sum(ROLLUPS[VisitorCount]["hour"].__table__.c.visitors))).scalar()
        assert hourly == 4 * sum(range(1, 7))
        count_visitors(engine, [VisitorRecord("a", "late", START + timedelta(minutes=30), 0, 1, 2, 40.0, "25-34",
                                              "male", "", "happy")])
        assert assert_rollups_match(engine) == rows  # updated in place, no new row
    finally:
        engine.dispose()


def test_migration_0004_backfills_the_narrow_rollups_of_a_database_at_0003(db_url):
    """A database upgraded before the narrow rollups existed gets them filled from its cells."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            for _, rollup in NARROW_ROLLUPS[VisitorCount]:  # back to revision 0003
                rollup.__table__.drop(conn)
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0003'"))
        with engine.begin() as conn:
            conn.execute(VisitorCount.__table__.insert(), [
                {"camera_id": f"cam-{i % 2}", "bucket_start": START + timedelta(minutes=37 * i),
                 "age_band": ("18-24", "65+")[i % 2], "gender": ("male", "female")[i % 3 > 0], "race": "",
                 "emotion": ("happy", "neutral", "")[i % 3], "visitors": 1 + i % 4, "age_sum": 25.5 * (1 + i % 4)}
                for i in range(60)])
        upgrade(db_url)
        with engine.connect() as conn:
            fine = _rows(conn, VisitorCount)
            for grain, rollup in NARROW_ROLLUPS[VisitorCount]:
                stored, expected = _rows(conn, rollup), _expected(fine, VisitorCount, grain, rollup)
                assert stored.keys() == expected.keys(), rollup.__tablename__
                for key, values in expected.items():
                    assert stored[key] == pytest.approx(values, rel=1e-9), (rollup.__tablename__, key)
                assert sum(v[0] for v in stored.values()) == sum(v[0] for v in fine.values())
    finally:
        engine.dispose()
