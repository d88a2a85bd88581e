"""The dashboard reads long ranges from the rollups and its numbers stay exact (issue 20 item 8).

``data.plan_reads`` splits a range into rollup buckets and fine edges; these tests check that the
sums read that way equal the fine cells for arbitrary minute boundaries and "now" cuts (hypothesis,
SQLite and PostgreSQL), from the full rollups and the narrow ones, that the visitors per hour of
day summed in the database equal the rows' local hours (time zones with DST and half-hour offsets),
that the page asks the narrow rollup tables (the statements are observed), and that the first load
of a generated 40-camera database sends under 500 KB of charts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from footfall.db.migrate import upgrade
from footfall.db.models import VisitorCount
from footfall.db.store import refresh_rollups
from footfall_dash import data, demo

from . import truth
from .conftest import KNOWN_ROWS, write_rows
from .test_dashboard_app import assert_no_crash

EARLIEST = datetime(2024, 2, 28)
minutes = st.integers(0, 40 * 24 * 60)


@pytest.fixture
def statements():
    """Every SQL statement any engine runs while the test runs."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def test_plan_reads_uses_the_coarsest_table_inside_and_fine_cells_at_the_edges():
    start, end = datetime(2024, 5, 1, 22, 30), datetime(2024, 5, 4, 15, 30)
    plan = data.plan_reads(start, end, ("day", "hour"), cuts=(datetime(2024, 5, 2, 12, 10),))
    assert plan == [(None, start, datetime(2024, 5, 1, 23)),
                    ("hour", datetime(2024, 5, 1, 23), datetime(2024, 5, 2, 12)),  # adjacent pieces: one read
                    (None, datetime(2024, 5, 2, 12), datetime(2024, 5, 2, 13)),  # the hour holding the cut
                    ("hour", datetime(2024, 5, 2, 13), datetime(2024, 5, 3)),
                    ("day", datetime(2024, 5, 3), datetime(2024, 5, 4)),
                    ("hour", datetime(2024, 5, 4), datetime(2024, 5, 4, 15)),
                    (None, datetime(2024, 5, 4, 15), end)]
    assert all(a < b for _, a, b in plan) and [p[2] for p in plan[:-1]] == [p[1] for p in plan[1:]]
    assert data.plan_reads(start, end, ()) == [(None, start, end)]  # minute resolution or a half-hour zone


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(day=st.integers(0, 23), at=st.integers(0, 24 * 60 - 1), before=minutes, after=minutes,
       tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
       cameras=st.sampled_from([None, ["cam-a"], ["cam-b", "cam-c"]]))
def test_sums_through_the_rollups_equal_the_fine_cells(rolled_db, day, at, before, after, tz, cameras):
    engine, rows = rolled_db
    # "now" on a day with data (every third day), the range around it: minute edges anywhere
    cut_at = EARLIEST + timedelta(days=3 * day, minutes=at)
    rng = data.TimeRange(cut_at - timedelta(minutes=before), cut_at + timedelta(minutes=after + 1))
    utc = rows  # bucket starts are UTC
    start, end = data.to_utc(rng.start, tz), data.to_utc(rng.end, tz)
    per_camera = data.visitors_by_camera(engine, rng, cameras, tz)
    assert per_camera.to_dict() == {c: v for c, v in truth.by(truth.select(utc, start, end, cameras),
                                                             lambda r: r["camera_id"]).items() if v}
    for grain in ("hour", "day"):
        counts = data.load_counts(engine, rng, cameras, tz=tz, dims=["camera_id", "gender"], grain=grain,
                                  cuts=(cut_at,))
        assert int(counts["visitors"].sum()) == truth.total(truth.select(utc, start, end, cameras))
        # the comparable span: every row lies wholly on one side of the cut
        before = int(counts.loc[counts["time"] < pd.Timestamp(cut_at), "visitors"].sum())
        assert before == truth.total(truth.select(utc, start, data.to_utc(cut_at, tz), cameras))
        assert counts["age_sum"].sum() == pytest.approx(sum(r["age_sum"] for r in truth.select(utc, start, end,
                                                                                              cameras)))
    # the narrow rollups (each view's dimensions only) give the same sums per dimension and time
    selected = truth.select(utc, start, end, cameras)
    for dims, grain in ((["camera_id"], "hour"), ([], "hour"), (["camera_id", "gender"], "day"),
                        (["age_band", "gender"], "day"), (["emotion"], "day")):
        for by_time in (True, False):
            narrow = data.load_counts(engine, rng, cameras, tz=tz, dims=dims, grain=grain, by_time=by_time)
            wide = data.read_cells(engine, VisitorCount, dims, rng, cameras, tz=tz, grain="minute", by_time=by_time)
            keys = dims + (["time"] if by_time else [])
            got = narrow.groupby(keys)["visitors"].sum().to_dict() if keys else {(): int(narrow["visitors"].sum())}
            if by_time:  # the minute cells summed into the narrow read's buckets
                wide["time"] = wide["time"].apply(lambda t: max(b for b in narrow["time"] if b <= t))
            assert got == (wide.groupby(keys)["visitors"].sum().to_dict() if keys
                           else {(): truth.total(selected)}), (dims, grain, by_time)
    hours = data.hours_of_day(engine, rng, cameras, tz=tz)
    zone = ZoneInfo(tz)
    local_hour = lambda r: r["bucket_start"].replace(tzinfo=timezone.utc).astimezone(zone).hour  # noqa: E731
    assert {(c, h): v for c, h, v in hours[["camera_id", "hour", "visitors"]].itertuples(index=False)} == \
        {(r_c, r_h): v for (r_c, r_h), v in truth.by(selected, lambda r: (r["camera_id"], local_hour(r))).items()}


@pytest.fixture(params=["sqlite", "postgresql"])
def rolled_db(request, tmp_path):
    """KNOWN_ROWS plus rows on UTC hour and day edges, rollups refilled; (read-only engine, rows)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rolled.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("postgres_url")
    edges = [{"camera_id": cam, "bucket_start": when, "age_band": "25-34", "gender": gender, "race": "",
              "emotion": "happy", "visitors": 1 + minute % 7, "age_sum": 31.5 * (1 + minute % 7)}
             for day in range(0, 70, 3) for minute in (0, 59, 60, 23 * 60 + 59)
             for when in [EARLIEST + timedelta(days=day, minutes=minute)]
             for cam, gender in (("cam-a", "male"), ("cam-b", "female"))]
    rows = KNOWN_ROWS + edges
    write_rows(url, rows)
    engine = data.open_engine(url)
    yield engine, rows
    engine.dispose()


def test_the_page_reads_the_rollups_for_a_month(known_db, app_test, statements):
    at = app_test(known_db, run=False)
    at.run()
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    month_per_hour = len(statements)  # the emotion mix per hour reads the full hourly rollup
    at.radio(key="f_resolution").set_value("day").run()
    assert_no_crash(at)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    per_day = [s for s in statements[month_per_hour:] if s.lstrip().upper().startswith("SELECT")]
    # the narrow rollups: hourly totals (weekday x hour, busiest hours), per-camera genders, the pyramid, emotions
    for table in ("visitor_totals_hourly", "visitor_genders_daily", "visitor_age_genders_daily",
                  "visitor_emotions_daily"):
        assert any(f"FROM {table}" in s for s in reads), table
    assert not any("FROM visitor_counts_hourly" in s for s in per_day)  # per day nothing needs every attribute
    # whatever reads the fine cells reads a ragged edge or the data version, never the month: the rows
    # fetched from visitor_counts stay few (the fixture holds 18 fine rows; a month has 30 x 24 hours)
    assert not any("GROUP BY visitor_counts.camera_id, visitor_counts.bucket_start" in s and "daily" not in s
                   and "hourly" not in s for s in reads)


def test_first_load_of_forty_cameras_sends_under_500_kb(tmp_path, app_test):
    """21 days x 40 cameras (hourly buckets, deterministic seeds): the first load (last 7 days per hour,
    stacked by camera) and the month per hour send < 500 KB of chart specs."""
    url = f"sqlite:///{tmp_path / 'forty.db'}"
    upgrade(url)
    end = datetime(2024, 5, 9)
    frames = []
    for group in range(10):
        frame = demo.demo_frame(end - timedelta(days=21), end, seed=group, peak_per_hour=20, bucket_s=3600)
        frame["camera_id"] = frame["camera_id"].map({c: f"cam-{group * 4 + i:02d}"
                                                     for i, c in enumerate(demo.DEMO_CAMERAS)})
        frames.append(frame)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(VisitorCount.__table__.insert(), pd.concat(frames).to_dict("records"))
        refresh_rollups(conn)
    engine.dispose()
    at = app_test(url, now=datetime(2024, 5, 8, 23, 0))
    assert_no_crash(at)
    sizes = {"first load": sum(len(el.proto.spec) for el in at.get("plotly_chart"))}
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    assert_no_crash(at)
    sizes["last 30 days"] = sum(len(el.proto.spec) for el in at.get("plotly_chart"))
    assert max(sizes.values()) < 500_000, sizes
