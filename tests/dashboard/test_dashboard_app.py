"""The Streamlit app end to end with AppTest on a SQLite database of known aggregates.

Every expected figure is computed here from ``KNOWN_ROWS`` with plain Python (``truth``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, time, timedelta

import numpy as np
import pandas as pd
import pytest

from footfall.dashboard_launcher import hash_password

from . import truth
from .conftest import CAMERAS_WITH_COUNTS, KNOWN_ROWS, NOW, SILENT_CAMERA, TODAY

LAST_7 = (TODAY - timedelta(days=6), TODAY + timedelta(days=1))
ALL = CAMERAS_WITH_COUNTS + [SILENT_CAMERA]


def metrics(at) -> dict[str, object]:
    return {m.label: m for m in at.metric}


def camera_table(at) -> pd.DataFrame:
    tables = [d.value for d in at.dataframe if "Camera" in d.value.columns and "Visitors" in d.value.columns]
    assert len(tables) == 1, "exactly one camera comparison table"
    return tables[0].set_index("Camera")


def figures(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def array(value) -> list:
    """A plotly JSON array: a list, or a typed array {"dtype": ..., "bdata": base64}."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def texts(at) -> str:
    """All markdown, captions, headings and alerts of the page, for presence checks."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [a.value for a in (*at.info, *at.error, *at.warning)]
    return "\n".join(parts)


def export(at) -> pd.DataFrame:
    """The CSV export's frame: the session holds the function that builds it on the download click."""
    return at.session_state["footfall_export"]()


def assert_no_crash(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def expected_headline(start: datetime, end: datetime, cameras: list[str] | None = None) -> dict[str, str]:
    rows = truth.select(KNOWN_ROWS, start, end, cameras)
    current, previous = truth.comparison(KNOWN_ROWS, start, end, NOW, cameras)
    return {
        "Visitors": f"{truth.total(rows):,}",
        "Previous period": f"{previous:,}",
        "change": f"{100.0 * (current - previous) / previous:+.1f} %" if previous else None,
        "Busiest hour": f"{truth.busiest_hour(rows):02d}:00",
        "Median / hour": f"{truth.median_active_hour(rows):,.1f}",
        "Female / male": f"{truth.share(rows, 'female'):.0f} / {truth.share(rows, 'male'):.0f} %",
        "Mean age": f"{truth.mean_age(rows):.1f}",
    }


# --------------------------------------------------------------------------- figures


def test_headline_figures_equal_the_truth(known_db, app_test):
    at = app_test(known_db)
    assert_no_crash(at)
    shown = metrics(at)
    expected = expected_headline(*LAST_7)
    for label in ("Visitors", "Previous period", "Busiest hour", "Median / hour", "Female / male", "Mean age"):
        assert shown[label].value == expected[label], label
    assert shown["Visitors"].delta == expected["change"]
    # the like-for-like cut: the previous period stops at the same time of day as now
    assert expected["Previous period"] == f"{70:,}"


def test_camera_table_equals_the_truth(known_db, app_test):
    at = app_test(known_db)
    table = camera_table(at)
    assert list(table.index) == ALL
    rows = truth.select(KNOWN_ROWS, *LAST_7)
    per_camera = truth.by(rows, lambda r: r["camera_id"])
    _, previous_total = truth.comparison(KNOWN_ROWS, *LAST_7, NOW)
    assert table.loc["cam-a", "Visitors"] == f"{per_camera['cam-a']:,}"
    assert table.loc["cam-a", "Previous period"] == "70"
    assert table.loc["cam-a", "Mean age"] == f"{truth.mean_age([r for r in rows if r['camera_id'] == 'cam-a']):.1f}"
    assert table.loc[SILENT_CAMERA, "Visitors"] == "0"
    # the table's cameras add up to the headline (every camera is at least k here)
    assert sum(per_camera.values()) == truth.total(rows)
    # a camera with no data in the range gets a clear message
    assert f"No data in this period for camera: {SILENT_CAMERA}" in texts(at)


def test_export_holds_exactly_what_is_shown(known_db, app_test, monkeypatch):
    from footfall_dash import views

    built = []
    monkeypatch.setattr(views, "export_frame", lambda *a, real=views.export_frame: built.append(1) or real(*a))
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    assert built == []  # the CSV frame is built on the download click only, not on every run (speed)
    at.selectbox(key="f_preset").set_value("Last 7 days").run()
    frame = export(at)  # what the click builds
    assert built == [1]
    headline = dict(zip(frame.loc[frame.view == "headline", "metric"], frame.loc[frame.view == "headline", "value"]))
    shown = metrics(at)
    assert headline["Visitors"] == shown["Visitors"].value
    assert headline["Change vs previous period"] == shown["Visitors"].delta
    assert headline["Mean age"] == shown["Mean age"].value
    table = camera_table(at)
    cams = frame[(frame.view == "cameras") & (frame.metric == "Visitors")].set_index("camera")["value"]
    assert cams.to_dict() == table["Visitors"].to_dict()
    # footfall chart: the plotted bars are the exported values
    footfall = frame[frame.view == "footfall_over_time"]
    plotted = figures(at)[0]
    plotted_total = sum(y for trace in plotted["data"] for y in array(trace["y"]) if y == y and y is not None)
    exported_total = sum(int(v) for v in footfall["value"] if not v.startswith("<"))
    assert plotted_total == exported_total
    assert set(frame.columns) >= {"view", "period", "camera", "gender", "age_band", "value"}


# --------------------------------------------------------------------------- k-anonymity


def test_small_cells_are_suppressed(known_db, app_test):
    at = app_test(known_db, now=NOW)
    at.selectbox(key="f_preset").set_value("Today").run()
    frame = export(at)
    pyramid = frame[frame.view == "age_gender"].set_index(["gender", "age_band"])["value"]
    assert pyramid[("female", "65+")] == "<5"  # 3 visitors
    # complementary: with the female share shown, the smallest other female cell is hidden too
    assert pyramid[("female", "18-24")] == "<5"  # 12 visitors
    assert pyramid[("female", "25-34")] == "30"
    assert pyramid[("male", "25-34")] == "25"
    # the pyramid figure draws no bar for a hidden cell and labels it
    pyramid_fig = next(f for f in figures(at) if f["data"][0].get("orientation") == "h")
    female = next(t for t in pyramid_fig["data"] if t["name"] == "female")
    labelled = dict(zip(array(female["y"]), array(female["text"])))
    assert labelled["65+"] == "<5" and labelled["25-34"] == ""
    # heatmap: 14:00 Wednesday has cam-a 12 + cam-b 3 = 15 visitors, shown
    heat = frame[frame.view == "hour_weekday"].set_index(["weekday", "hour"])["value"]
    assert heat[("Wed", "14:00")] == "15.0"  # one Wednesday: the mean per day is the sum
    # no exported value below k anywhere
    numbers = pd.to_numeric(frame.loc[~frame.view.isin(["headline", "cameras"]), "value"], errors="coerce")
    assert not ((numbers > 0) & (numbers < 5)).any()


def test_k_from_settings_hides_a_camera_and_its_complement(known_db, app_test):
    at = app_test(known_db, k_anonymity="20")
    at.selectbox(key="f_preset").set_value("Today").run()
    table = camera_table(at)
    # today: cam-a 62, cam-b 28, cam-c 15 (< 20): cam-c hidden, and the next smallest (cam-b) with it
    assert table.loc["cam-c", "Visitors"] == "<20"
    assert table.loc["cam-b", "Visitors"] == "<20"
    assert table.loc["cam-a", "Visitors"] == "62"
    assert table.loc["cam-c", "Mean age"].startswith("hidden")
    assert "k = 20" in texts(at) or "<20" in texts(at)


# --------------------------------------------------------------------------- filters


def test_camera_filter_changes_the_figures(known_db, app_test):
    at = app_test(known_db)
    at.multiselect(key="f_cameras").set_value(["cam-a"]).run()
    assert_no_crash(at)
    expected = expected_headline(*LAST_7, cameras=["cam-a"])
    assert metrics(at)["Visitors"].value == expected["Visitors"]
    assert metrics(at)["Mean age"].value == expected["Mean age"]
    assert list(camera_table(at).index) == ["cam-a"]


def test_range_presets_and_custom_range(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Today").run()
    today = expected_headline(TODAY, TODAY + timedelta(days=1))
    assert metrics(at)["Visitors"].value == today["Visitors"] == "105"
    assert metrics(at)["Previous period"].value == "50"  # yesterday until 15:30 only
    assert metrics(at)["Visitors"].delta == today["change"]

    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    month = expected_headline(TODAY - timedelta(days=29), TODAY + timedelta(days=1))
    assert metrics(at)["Visitors"].value == month["Visitors"]

    at.selectbox(key="f_preset").set_value("Custom").run()
    at.date_input(key="f_from_date").set_value(datetime(2024, 5, 4).date())
    at.time_input(key="f_from_time").set_value(time(11, 0))
    at.date_input(key="f_to_date").set_value(datetime(2024, 5, 8).date())
    at.time_input(key="f_to_time").set_value(time(10, 0))
    at.button(key="f_apply").click().run()  # the custom range is a form: "Apply" sends the typed dates
    custom = truth.total(truth.select(KNOWN_ROWS, datetime(2024, 5, 4, 11), datetime(2024, 5, 8, 10)))
    assert metrics(at)["Visitors"].value == f"{custom:,}"


def test_resolution_changes_the_time_axis(known_db, app_test):
    at = app_test(known_db, k_anonymity="2")  # no cell below k: no resolution is too fine to show
    cameras = len(ALL)
    # minute: 7 days are more than data.MAX_PERIODS minutes, so they are drawn per hour
    for resolution, periods in (("day", 7), ("hour", 7 * 24), ("week", 2), ("minute", 7 * 24)):
        at.radio(key="f_resolution").set_value(resolution).run()
        frame = export(at)
        footfall = frame[frame.view == "footfall_over_time"]
        assert footfall["period"].nunique() == periods, resolution
        assert len(footfall) == periods * cameras
    # per day, cam-a's bar on 2024-05-04 holds its 60 visitors
    at.radio(key="f_resolution").set_value("day").run()
    footfall = export(at).query("view == 'footfall_over_time'").set_index(["period", "camera"])["value"]
    assert footfall[("2024-05-04", "cam-a")] == "60"
    at.radio(key="f_stack").set_value("gender").run()
    by_gender = export(at).query("view == 'footfall_over_time'")
    assert set(by_gender["gender"]) == {"male", "female"}


def test_too_fine_a_resolution_falls_back(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    at.radio(key="f_resolution").set_value("minute").run()
    assert any("showing per hour" in w.value for w in at.warning)
    assert export(at).query("view == 'footfall_over_time'")["period"].nunique() == 30 * 24


def test_sites_group_the_camera_filter(known_db, app_test):
    at = app_test(known_db, sites="Berlin/Entrance=cam-a,cam-b;Hamburg=cam-c")
    at.multiselect(key="f_sites").set_value(["Berlin/Entrance"]).run()
    assert_no_crash(at)
    assert list(camera_table(at).index) == ["cam-a", "cam-b"]
    assert camera_table(at).loc["cam-a", "Site / zone"] == "Berlin/Entrance"
    expected = expected_headline(*LAST_7, cameras=["cam-a", "cam-b"])
    assert metrics(at)["Visitors"].value == expected["Visitors"]


def test_live_mode_keeps_the_filters(known_db, app_test):
    at = app_test(known_db, refresh_s="5")
    at.multiselect(key="f_cameras").set_value(["cam-b"]).run()
    at.toggle(key="f_live").set_value(True).run()
    at.run()  # a refresh
    assert_no_crash(at)
    assert at.multiselect(key="f_cameras").value == ["cam-b"]
    assert metrics(at)["Visitors"].value == expected_headline(*LAST_7, cameras=["cam-b"])["Visitors"]
    assert "live, updated" in texts(at)


def test_printable_view_is_static(known_db, app_test):
    at = app_test(known_db)
    at.toggle(key="f_print").set_value(True).run()
    assert_no_crash(at)
    assert at.title[0].value == "Footfall report"
    assert not at.tabs and not at.get("download_button")
    assert all(json.loads(el.proto.config).get("staticPlot") for el in at.get("plotly_chart"))
    assert metrics(at)["Visitors"].value == expected_headline(*LAST_7)["Visitors"]


# --------------------------------------------------------------------------- privacy settings


def test_race_hidden_by_default(known_db, app_test):
    at = app_test(known_db)
    assert "race" not in export(at).columns
    assert "Race" not in texts(at)
    assert not any(t.get("name") in {"white", "asian"} for f in figures(at) for t in f["data"])


def test_race_shown_when_enabled(known_db, app_test):
    at = app_test(known_db, enable_race="true")
    assert_no_crash(at)
    frame = export(at)
    race = frame[frame.view == "race"].set_index("race")["value"]
    rows = truth.select(KNOWN_ROWS, *LAST_7)
    assert race["white"] == str(truth.by(rows, lambda r: r["race"])["white"])
    assert "### Race" in texts(at)


def test_emotion_hidden_when_disabled(known_db, app_test):
    at = app_test(known_db, enable_emotion="false")
    assert_no_crash(at)
    frame = export(at)
    assert "emotion" not in frame.columns and "valence" not in frame.columns
    assert "Emotion" not in texts(at) and "Valence" not in texts(at)
    assert len(figures(at)) == 3  # footfall, heatmap, pyramid


def test_emotion_and_valence_shown_by_default(known_db, app_test):
    from footfall.labels import VALENCE

    at = app_test(known_db)
    at.radio(key="f_resolution").set_value("day").run()
    frame = export(at)
    rows = truth.select(KNOWN_ROWS, *LAST_7)
    per_day = truth.by(rows, lambda r: (r["bucket_start"].strftime("%Y-%m-%d"), VALENCE[r["emotion"]]))
    valence = frame[(frame.view == "valence_over_time") & ~frame.valence.str.startswith("hidden")]
    assert len(valence) == 7 * 3
    for period, name, value in zip(valence["period"], valence["valence"], valence["value"]):
        expected = per_day.get((period, name), 0)
        if value.startswith("<"):
            assert expected > 0  # hidden: small itself, or the complement of a small one that day
        else:
            assert int(value) == expected, (period, name)
    emotion = frame[frame.view == "emotion_over_time"].set_index(["period", "emotion"])["value"]
    assert emotion[("2024-05-08", "neutral")] == "23"
    assert emotion[("2024-05-08", "happy")] == "30"
    # 2024-05-04: disgust 2 (< k) and, as its complement within that day, happy 60
    assert emotion[("2024-05-04", "disgust")] == "<5"
    assert emotion[("2024-05-04", "happy")] == "<5"


# --------------------------------------------------------------------------- access control


def test_login_is_enforced(known_db, app_test):
    encoded = hash_password("s3cret pass")
    at = app_test(known_db, auth_username="analyst", auth_password_hash=encoded)
    assert not at.metric and not at.dataframe, "nothing but the login form before signing in"
    at.text_input(key="login_user").set_value("analyst")
    at.text_input(key="login_password").set_value("wrong")
    at.button[0].click().run()
    assert "Wrong user name or password." in [e.value for e in at.error]
    assert not at.metric
    at.text_input(key="login_user").set_value("analyst")
    at.text_input(key="login_password").set_value("s3cret pass")
    at.button[0].click().run()
    assert_no_crash(at)
    assert metrics(at)["Visitors"].value == expected_headline(*LAST_7)["Visitors"]


def test_half_configured_login_shows_nothing(known_db, app_test):
    at = app_test(known_db, auth_username="analyst")
    assert not at.metric
    assert "misconfigured" in at.error[0].value


# --------------------------------------------------------------------------- failures


def test_empty_database(empty_db, app_test):
    at = app_test(empty_db)
    assert_no_crash(at)
    assert any("no visitor counts yet" in i.value for i in at.info)
    assert any("No camera has reported" in i.value for i in at.info)


def test_range_without_data(known_db, app_test):
    at = app_test(known_db, now=datetime(2025, 1, 1, 12))
    assert_no_crash(at)
    assert any(i.value.startswith("No visitors counted in") and "2024-03-01" in i.value for i in at.info)


@pytest.mark.parametrize("url, message", [
    ("sqlite:////nonexistent/footfall.db", "does not exist"),
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", "Cannot read the database"),
    ("not a url", "not a database URL"),
])
def test_unreachable_database(url, message, app_test):
    at = app_test(url)
    assert_no_crash(at)
    assert not at.metric
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_bad_settings_are_reported(known_db, app_test):
    at = app_test(known_db, timezone="Mars/Olympus_Mons")
    assert_no_crash(at)
    assert "not a known time zone" in at.error[0].value and not at.metric
    at = app_test(known_db, timezone="UTC", k_anonymity="many")
    assert "FOOTFALL_K_ANONYMITY" in at.error[0].value and not at.metric
    at = app_test(known_db, k_anonymity="5", sites="no-equals-sign")
    assert_no_crash(at)
    assert any("site/zone=cam1,cam2" in e.value for e in at.error)
    assert metrics(at)["Visitors"].value == expected_headline(*LAST_7)["Visitors"]  # still usable


def test_custom_range_must_end_after_it_starts(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Custom").run()
    at.date_input(key="f_to_date").set_value(datetime(2024, 4, 1).date())
    at.button(key="f_apply").click().run()
    assert_no_crash(at)
    assert any("must end after it starts" in w.value for w in at.warning)


def test_database_without_schema(tmp_path, app_test):
    import sqlite3

    path = tmp_path / "blank.db"
    sqlite3.connect(path).close()
    at = app_test(f"sqlite:///{path}")
    assert_no_crash(at)
    assert any("footfall-migrate" in e.value for e in at.error)


# --------------------------------------------------------------------------- operator view


def test_operator_view_flags_cameras(known_db, app_test):
    at = app_test(known_db)
    health = next(d.value for d in at.dataframe if "Status" in d.value.columns).set_index("Camera")
    assert health.loc["cam-a", "Status"] == "OK"
    assert health.loc[SILENT_CAMERA, "Status"] == "OK"
    assert health.loc["cam-b", "Status"].startswith("ALERT: last frame")  # 600 s old
    assert "state reconnecting" in health.loc["cam-c", "Status"]
    assert metrics(at)["Need attention"].value == "2"
    assert any("cam-b, cam-c" in e.value for e in at.error)
