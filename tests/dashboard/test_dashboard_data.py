"""The dashboard's data layer (footfall_dash) against SQLite and PostgreSQL, and its pure functions."""

from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from footfall_dash import charts, data, demo, privacy, views

from . import truth
from .conftest import DAY, KNOWN_ROWS, NOW, TODAY, health_rows, write_rows

LAST_7 = data.TimeRange(TODAY - timedelta(days=6), TODAY + timedelta(days=1))


@pytest.fixture
def filled(any_db) -> str:
    write_rows(any_db, KNOWN_ROWS, health_rows(datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)))
    return any_db


@pytest.mark.parametrize("module", [data, privacy, views, charts, demo])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- database (both backends)


def test_load_counts_equals_the_rows(filled):
    engine = data.open_engine(filled)
    counts = data.load_counts(engine, LAST_7, None)
    rows = truth.select(KNOWN_ROWS, LAST_7.start, LAST_7.end)
    assert int(counts["visitors"].sum()) == truth.total(rows)
    assert counts.groupby("camera_id")["visitors"].sum().to_dict() == truth.by(rows, lambda r: r["camera_id"])
    assert counts["age_sum"].sum() == pytest.approx(sum(r["age_sum"] for r in rows))
    assert "race" not in counts.columns  # never even read while race is off
    assert counts["time"].min() == datetime(2024, 5, 2)  # the range's first minute is included
    only_a = data.load_counts(engine, LAST_7, ["cam-a"])
    assert set(only_a["camera_id"]) == {"cam-a"}
    with_race = data.load_counts(engine, LAST_7, None, include_race=True, include_emotion=False)
    assert "emotion" not in with_race.columns
    assert with_race.groupby("race")["visitors"].sum().to_dict() == {
        data.NOT_RECORDED_LABEL if k == "" else k: v for k, v in truth.by(rows, lambda r: r["race"]).items()}
    engine.dispose()


def test_previous_period_and_span(filled):
    engine = data.open_engine(filled)
    current, previous = data.comparison_ranges(LAST_7, NOW)
    per_camera = data.visitors_by_camera(engine, previous, None)
    _, expected = truth.comparison(KNOWN_ROWS, LAST_7.start, LAST_7.end, NOW)
    assert int(per_camera.sum()) == expected == 70
    assert data.data_span(engine) == (datetime(2024, 3, 1, 12), datetime(2024, 5, 8, 14, 30))
    assert data.list_cameras(engine) == ["cam-a", "cam-b", "cam-c", "cam-d"]
    assert data.has_counts(engine)
    first = {"cam-a": datetime(2024, 3, 1, 12), "cam-b": datetime(2024, 4, 12, 13), "cam-c": datetime(2024, 3, 1, 13)}
    assert data.first_counts(engine) == first
    assert data.first_counts(engine, ["cam-b", "cam-d"]) == {"cam-b": first["cam-b"]}  # cam-d: health only
    # the caches' key: the last bucket and the visitors of its day and the day before
    assert data.data_version(engine) == ("2024-05-08 14:30:00", 105 + 100)
    late = dict(KNOWN_ROWS[6], bucket_start=TODAY - DAY + timedelta(hours=10), visitors=4)  # counted late
    write_rows(filled, [late])
    assert data.data_version(engine) == ("2024-05-08 14:30:00", 105 + 100 + 4)
    engine.dispose()


def test_span_and_first_counts_are_index_seeks_not_scans(tmp_path):
    """The first screen asks for the data's span and each camera's first count: SQLite's work for them
    (virtual-machine steps) must not grow with the rows stored (a year of 50 cameras is 2 M cells)."""
    from footfall.db.migrate import upgrade

    def steps(rows: int) -> int:
        url = f"sqlite:///{tmp_path / f'seek{rows}.db'}"
        upgrade(url)
        write_rows(url, [dict(KNOWN_ROWS[0], bucket_start=datetime(2024, 1, 1) + timedelta(minutes=i),
                              camera_id=f"cam-{i % 2}") for i in range(rows)])
        engine = data.open_engine(url)
        counted = [0]

        def count(dbapi_connection, _record):
            dbapi_connection.set_progress_handler(lambda: counted.__setitem__(0, counted[0] + 1) or 0, 1)

        sa.event.listen(engine, "connect", count)
        assert data.data_span(engine) == (datetime(2024, 1, 1), datetime(2024, 1, 1) + timedelta(minutes=rows - 1))
        assert data.first_counts(engine, ["cam-0", "cam-1"]) == {"cam-0": datetime(2024, 1, 1),
                                                                 "cam-1": datetime(2024, 1, 1, 0, 1)}
        engine.dispose()
        return counted[0]

    few, many = steps(100), steps(4000)
    assert many < few * 1.5, (few, many)


def test_time_zone_shifts_hours(filled):
    engine = data.open_engine(filled)
    berlin = data.load_counts(engine, data.TimeRange(datetime(2024, 5, 8), datetime(2024, 5, 9)), None,
                              tz="Europe/Berlin")
    # Berlin is UTC+2 in May: the 09:00 UTC bucket is 11:00 local; the local day starts 22:00 UTC the day before
    assert (berlin["time"] == datetime(2024, 5, 8, 11)).any()
    expected = truth.total(truth.select(KNOWN_ROWS, datetime(2024, 5, 7, 22), datetime(2024, 5, 8, 22)))
    assert int(berlin["visitors"].sum()) == expected
    engine.dispose()


def test_engine_is_read_only(filled):
    engine = data.open_engine(filled)
    with pytest.raises(sa.exc.SQLAlchemyError):
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM visitor_counts"))
    engine.dispose()
    check = sa.create_engine(filled)
    with check.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM visitor_counts")).scalar() == len(KNOWN_ROWS)
    check.dispose()


def test_health_flags(filled):
    engine = data.open_engine(filled)
    health = data.load_health(engine, datetime.now(timezone.utc).replace(tzinfo=None)).set_index("camera_id")
    assert health["ok"].to_dict() == {"cam-a": True, "cam-b": False, "cam-c": False, "cam-d": True}
    assert health.loc["cam-b", "problem"].startswith("last frame 6")
    assert health.loc["cam-c", "problem"] == "state reconnecting"
    assert health.loc["cam-a", "last_frame_age_s"] == pytest.approx(2, abs=5)
    engine.dispose()


def test_empty_database(any_db):
    engine = data.open_engine(any_db)
    assert not data.has_counts(engine)
    assert data.data_span(engine) is None
    assert data.load_counts(engine, LAST_7, None).empty
    assert data.load_health(engine, datetime(2024, 1, 1)).empty
    engine.dispose()


@pytest.mark.parametrize("url, message", [
    ("sqlite:////nonexistent/dir/f.db", "does not exist"),
    ("nonsense", "not a database URL"),
    ("nosuchdialect://x/y", "Cannot use the database URL"),
])
def test_open_engine_errors(url, message):
    with pytest.raises(data.DatabaseError, match=message):
        data.open_engine(url)


def test_server_down_is_a_database_error():
    engine = data.open_engine("postgresql+psycopg://u:secretpw@127.0.0.1:1/db")
    with pytest.raises(data.DatabaseError, match="Cannot read the database") as info:
        data.has_counts(engine)
    assert "secretpw" not in str(info.value)  # the password is masked


# --------------------------------------------------------------------------- pure functions


def test_suppress_complements_until_safe():
    frame = pd.DataFrame({"g": ["x"] * 4 + ["y"] * 2, "visitors": [50, 2, 1, 30, 40, 0]})
    out = privacy.suppress(frame, k=5, within="g")
    # group x: 2 and 1 are small; together 3 < k, so the next smallest (30) is hidden too
    assert out["suppressed"].tolist() == [False, True, True, True, False, False]
    assert np.isnan(out["visitors"][1]) and out["visitors"][0] == 50
    # a lone small cell in a group of zeros cannot be protected further, but is hidden itself
    assert privacy.suppress(pd.DataFrame({"visitors": [3, 0, 0]}), 5)["suppressed"].tolist() == [True, False, False]
    # k = 1 hides nothing
    assert not privacy.suppress(frame, 1)["suppressed"].any()


def test_presets_and_comparison():
    now = datetime(2024, 5, 8, 15, 30)
    assert data.preset_range("Today", now) == data.TimeRange(datetime(2024, 5, 8), datetime(2024, 5, 9))
    assert data.preset_range("Last 30 days", now).start == datetime(2024, 4, 9)
    with pytest.raises(ValueError):
        data.preset_range("Custom", now, (now, now))
    past = data.TimeRange(datetime(2024, 4, 1), datetime(2024, 4, 8))
    current, previous = data.comparison_ranges(past, now)
    assert current == past and previous == data.TimeRange(datetime(2024, 3, 25), datetime(2024, 4, 1))


def test_headline_and_camera_summary_equal_the_truth():
    rows = truth.select(KNOWN_ROWS, LAST_7.start, LAST_7.end)
    counts = pd.DataFrame(rows).rename(columns={"bucket_start": "time"})
    current, _ = data.comparison_ranges(LAST_7, NOW)
    in_current = truth.by(truth.select(rows, LAST_7.start, current.end), lambda r: r["camera_id"])
    h = data.headline(counts[["time", "visitors"]], counts[["gender", "visitors", "age_sum"]],
                      sum(in_current.values()), previous_total=70)
    assert h.visitors == truth.total(rows)
    assert h.current_visitors == truth.comparison(KNOWN_ROWS, LAST_7.start, LAST_7.end, NOW)[0]
    assert h.busiest_hour == truth.busiest_hour(rows)
    assert h.median_per_hour == truth.median_active_hour(rows)
    assert h.mean_age == pytest.approx(truth.mean_age(rows))
    assert h.by_gender["female"] == truth.by(rows, lambda r: r["gender"])["female"]
    hours = pd.DataFrame([(c, hour, v) for (c, hour), v in truth.by(
        rows, lambda r: (r["camera_id"], r["bucket_start"].hour)).items()], columns=["camera_id", "hour", "visitors"])
    summary = data.camera_summary(counts[["camera_id", "gender", "visitors", "age_sum"]], hours,
                                  pd.Series(in_current), ["cam-a", "cam-z"], pd.Series({"cam-a": 70}),
                                  ).set_index("camera_id")
    cam_a = [r for r in rows if r["camera_id"] == "cam-a"]
    assert summary.loc["cam-a", "visitors"] == truth.total(cam_a)
    assert summary.loc["cam-a", "current"] == in_current["cam-a"]
    assert summary.loc["cam-a", "female"] == truth.by(cam_a, lambda r: r["gender"])["female"]
    assert summary.loc["cam-a", "busiest_hour"] == truth.busiest_hour(cam_a)
    assert summary.loc["cam-z", "visitors"] == 0 and summary.loc["cam-z", "busiest_hour"] is None


def test_sites_parsing():
    assert data.parse_sites("") == {}
    assert data.parse_sites("a/b=c1;d=c2,c3;") == {"a/b": ("c1",), "d": ("c2", "c3")}
    with pytest.raises(ValueError):
        data.parse_sites("no-equals-sign")


def test_export_omits_switched_off_attributes():
    rows = truth.select(KNOWN_ROWS, LAST_7.start, LAST_7.end)
    counts = pd.DataFrame(rows).rename(columns={"bucket_start": "time"}).drop(columns=["race", "emotion"])
    shown = [views.footfall_view(counts, LAST_7, "day", "gender", None, 5), views.pyramid_view(counts, 5)]
    frame = views.export_frame(shown, 5)
    assert list(frame.columns) == ["view", "period", "gender", "age_band", "value"]


# --------------------------------------------------------------------------- demo data


def test_demo_data_has_the_rhythm_and_known_totals(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    end = datetime(2024, 5, 6)  # a Monday
    summary = demo.fill_demo(url, days=14, seed=7, end=end)
    engine = data.open_engine(url)
    counts = data.load_counts(engine, data.TimeRange(end - timedelta(days=14), end), None)
    assert int(counts["visitors"].sum()) == summary.visitors
    assert sorted(counts["camera_id"].unique()) == sorted(demo.DEMO_CAMERAS)
    by_day = counts.groupby(counts["time"].dt.day_of_week)["visitors"].sum()
    assert by_day[5] > by_day[0] > by_day[6]  # Saturday > Monday > Sunday
    by_hour = counts.groupby(counts["time"].dt.hour)["visitors"].sum().reindex(range(24), fill_value=0)
    assert by_hour[17] > 10 * by_hour[3]  # open in the evening, closed at night
    assert counts.loc[counts["visitors"] > 0, "age_sum"].div(counts["visitors"]).between(3, 92).all()
    again = demo.fill_demo(url, days=14, seed=7, end=end)  # idempotent: replaces its own rows
    assert again.visitors == summary.visitors
    assert int(data.load_counts(engine, data.TimeRange(end - timedelta(days=14), end))["visitors"].sum()) \
        == summary.visitors
    engine.dispose()
