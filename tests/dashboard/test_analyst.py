"""What an analyst relies on (issue 20), each checked with AppTest on the known aggregates.

Comparisons only where both spans have data, one colour per meaning, the hidden (<k) band and
shares of the true total, the heatmap as a mean per day, non-counting cameras, URL filters, the
CSV header, and the login's throttling and signed session (issue 17 item 5).
"""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta

import pandas as pd
import pytest

from footfall import dashboard_launcher as launcher
from footfall.dashboard_launcher import hash_password

from . import truth
from .conftest import KNOWN_ROWS, TODAY
from .test_dashboard_app import array, assert_no_crash, camera_table, export, figures, metrics, texts


def traces_by_name(figure: dict) -> dict[str, dict]:
    return {t["name"]: t for t in figure["data"] if t.get("name")}


def footfall_figure(at) -> dict:
    return figures(at)[0]


def colour(trace: dict) -> str:
    return (trace.get("marker") or {}).get("color") or (trace.get("line") or {}).get("color")


# --------------------------------------------------------------------------- 1. comparisons


def test_change_only_where_both_spans_have_data(known_db, app_test):
    at = app_test(known_db)
    assert_no_crash(at)
    # Last 7 days vs the 7 before: every camera has data since before 2024-04-25: a real change
    assert metrics(at)["Visitors"].delta.endswith("%")
    # Last 30 days: the previous 30 days start 2024-03-10, before cam-b's first count (2024-04-12)
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    assert not metrics(at)["Visitors"].delta, "no change % against a span half without data"
    assert "not comparable" in texts(at)
    table = camera_table(at)
    assert table.loc["cam-b", "Change"] == "not comparable"
    assert table.loc["cam-a", "Change"] == "–"  # counted since 2024-03-01: comparable, but 0 before
    frame = export(at)
    assert frame.loc[frame.metric == "Change vs previous period", "value"].tolist() == ["not comparable"]


def test_the_three_comparisons(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_compare").set_value("same weekdays last week").run()
    # Last 7 days a week earlier is the previous period itself: 2024-04-25 .. 2024-05-01
    assert metrics(at)["Same weekdays last week"].value == "70"
    at.selectbox(key="f_preset").set_value("Today").run()
    # Wednesday 2024-05-01 until 15:30: cam-c's 9 visitors came at 23:59, so none yet
    assert metrics(at)["Same weekdays last week"].value == "0"
    at.selectbox(key="f_compare").set_value("same period last year").run()
    assert "not comparable" in texts(at)  # 2023: before any data
    assert not metrics(at)["Visitors"].delta


# --------------------------------------------------------------------------- 2. colours


def test_one_colour_per_camera_whatever_the_filter(known_db, app_test):
    at = app_test(known_db)
    everywhere = {name: colour(t) for name, t in traces_by_name(footfall_figure(at)).items() if name != "total"}
    at.multiselect(key="f_cameras").set_value(["cam-c"]).run()
    alone = traces_by_name(footfall_figure(at))
    assert colour(alone["cam-c"]) == everywhere["cam-c"]
    # no colour means two things anywhere on the page (camera, gender, emotion, valence, hidden band)
    at.multiselect(key="f_cameras").set_value([]).run()
    meaning: dict[str, set[str]] = {}
    for figure in figures(at):
        for trace in figure["data"]:
            if trace.get("name") and trace["name"] != "total" and isinstance(colour(trace), str):
                meaning.setdefault(colour(trace).upper(), set()).add(trace["name"])
    at.radio(key="f_stack").set_value("gender").run()
    for trace in footfall_figure(at)["data"]:
        if trace.get("name") not in (None, "total") and isinstance(colour(trace), str):
            meaning.setdefault(colour(trace).upper(), set()).add(trace["name"])
    shared = {c: names for c, names in meaning.items() if len(names - {"neutral"}) > 1}
    assert not shared, shared  # "neutral" is the same meaning in the emotion and the valence chart


# --------------------------------------------------------------------------- 4 and 5. hidden cells


def test_minute_view_picks_a_resolution_that_shows_most_visitors(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Today").run()
    at.radio(key="f_resolution").set_value("minute").run()
    assert any("Per minute, more than 20%" in i.value for i in at.info), [i.value for i in at.info]
    frame = export(at)
    footfall = frame[frame.view == "footfall_over_time"]
    hidden = footfall.camera.str.startswith("hidden")
    shown_total = sum(int(v) for v in footfall.loc[~hidden, "value"] if not v.startswith("<"))
    assert shown_total >= 0.8 * truth.total(truth.select(KNOWN_ROWS, TODAY, TODAY + timedelta(days=1)))


def test_stacks_reach_the_true_total_and_shares_are_of_it(known_db, app_test):
    at = app_test(known_db)
    at.radio(key="f_resolution").set_value("day").run()
    emotion = next(f for f in figures(at) if "disgust" in traces_by_name(f))
    # 2024-05-04: happy 60 and disgust 2 (< k): both hidden; the band carries their 62 visitors
    day = "2024-05-04"
    stacked = 0.0
    for trace in emotion["data"]:
        if trace.get("name") in (None, "total"):
            continue
        xs = [str(x)[:10] for x in array(trace["x"])]
        ys = array(trace["y"])
        if day in xs and ys[xs.index(day)] == ys[xs.index(day)]:  # not NaN
            stacked += ys[xs.index(day)]
    truth_day = truth.total(truth.select(KNOWN_ROWS, datetime(2024, 5, 4), datetime(2024, 5, 5)))
    assert stacked == truth_day == 62
    band = traces_by_name(emotion)["hidden (<5)"]
    xs = [str(x)[:10] for x in array(band["x"])]
    assert array(band["customdata"])[xs.index(day)] == "62 (100 %)"
    # shares in the hover are of the period's full total: 2024-05-08 neutral 23 of 105
    neutral = traces_by_name(emotion)["neutral"]
    xs = [str(x)[:10] for x in array(neutral["x"])]
    assert array(neutral["customdata"])[xs.index("2024-05-08")] == "23 (22 %)"
    frame = export(at)
    band_rows = frame[(frame.view == "emotion_over_time") & frame.emotion.str.startswith("hidden")]
    assert band_rows.set_index("period").loc[day, "value"] == "62"
    assert "grey" in texts(at)  # the band is explained under the chart


# --------------------------------------------------------------------------- 6. heatmap


def test_heatmap_is_the_mean_per_day_of_each_weekday(known_db, app_test):
    at = app_test(known_db)
    at.selectbox(key="f_preset").set_value("Last 30 days").run()
    heat = export(at).query("view == 'hour_weekday'").set_index(["weekday", "hour"])["value"]
    # 2024-04-09 .. 2024-05-08 holds five Wednesdays: 15 visitors at 14:00 on one of them
    assert heat[("Wed", "14:00")] == "3.0"
    # four Fridays: cam-b's 33 at 13:00 on 2024-04-12
    assert heat[("Fri", "13:00")] == "8.2"
    assert "mean visitors per day" in texts(at)


# --------------------------------------------------------------------------- 7. the small items


def test_non_counting_cameras_stay_out_of_site_totals(known_db, app_test):
    at = app_test(known_db, sites="Berlin/Entrance=cam-a;Berlin/Floor 1=~cam-b;Hamburg=cam-c,cam-d")
    assert_no_crash(at)
    counted = truth.total(truth.select(KNOWN_ROWS, TODAY - timedelta(days=6), TODAY + timedelta(days=1),
                                       ["cam-a", "cam-c"]))
    assert metrics(at)["Visitors"].value == f"{counted:,}"
    assert "Not added to the totals" in texts(at) and "cam-b" in texts(at)
    sites = next(d.value for d in at.dataframe if "Site" in d.value.columns).set_index("Site")
    assert list(sites.index) == ["Berlin", "Hamburg"]
    berlin = truth.total(truth.select(KNOWN_ROWS, TODAY - timedelta(days=6), TODAY + timedelta(days=1), ["cam-a"]))
    assert sites.loc["Berlin", "Visitors"] == f"{berlin:,}"  # the escalator is not added to the entrance
    # picked by name, a non-counting camera is shown on its own
    at.multiselect(key="f_cameras").set_value(["cam-b"]).run()
    alone = truth.total(truth.select(KNOWN_ROWS, TODAY - timedelta(days=6), TODAY + timedelta(days=1), ["cam-b"]))
    assert metrics(at)["Visitors"].value == f"{alone:,}"


def test_operator_cards_agree_with_the_status_column(known_db, app_test):
    at = app_test(known_db)
    health = next(d.value for d in at.dataframe if "Status" in d.value.columns)
    assert list(health.columns[:3]) == ["Camera", "State", "Status"]  # never cut off at the right
    assert metrics(at)["Healthy"].value == str((health["Status"] == "OK").sum())


def test_partial_weeks_are_named(known_db, app_test):
    at = app_test(known_db)
    at.radio(key="f_resolution").set_value("week").run()
    # 2024-05-02 .. 2024-05-08: Thursday to Wednesday
    assert "week of 2024-04-29 (4 of 7 days)" in texts(at)
    assert "week of 2024-05-06 (3 of 7 days)" in texts(at)


def test_hover_shows_the_period_total(known_db, app_test):
    at = app_test(known_db)
    at.radio(key="f_resolution").set_value("day").run()
    total = traces_by_name(footfall_figure(at))["total"]
    xs = [str(x)[:10] for x in array(total["x"])]
    assert array(total["customdata"])[xs.index("2024-05-08")] == "105"


# --------------------------------------------------------------------------- 9. what analysts expect


def test_filters_live_in_the_url(known_db, app_test):
    at = app_test(known_db, run=False)
    at.query_params["period"] = "Today"
    at.query_params["camera"] = ["cam-a", "cam-b"]
    at.query_params["resolution"] = "day"
    at.query_params["compare"] = "nonsense"  # ignored
    at.run()
    assert_no_crash(at)
    expected = truth.total(truth.select(KNOWN_ROWS, TODAY, TODAY + timedelta(days=1), ["cam-a", "cam-b"]))
    assert metrics(at)["Visitors"].value == f"{expected:,}"
    at.radio(key="f_stack").set_value("gender").run()
    assert at.query_params["stack"] == "gender"
    assert at.query_params["camera"] == ["cam-a", "cam-b"] and at.query_params["period"] == "Today"


def test_freshness_on_every_tab(known_db, app_test):
    at = app_test(known_db)
    for tab in at.tabs:
        assert any(c.value.startswith("Data up to 2024-05-08 14:30") for c in tab.caption), tab.label


def test_png_download_of_every_chart(known_db, app_test):
    at = app_test(known_db)
    configs = [json.loads(el.proto.config) for el in at.get("plotly_chart")]
    assert configs and all(c["modeBarButtons"] == [["toImage"]] and c["displayModeBar"] for c in configs)


def test_csv_header_and_numbers(known_db, app_test):
    from footfall_dash import views  # the function the download button calls

    at = app_test(known_db)
    header = {"period": "2024-05-02 – 2024-05-08", "time zone": "UTC"}
    raw = views.export_csv(export(at), header).decode()
    assert raw.startswith("# period: 2024-05-02 – 2024-05-08\n# time zone: UTC\n")
    frame = pd.read_csv(io.StringIO(raw), comment="#")
    assert pd.api.types.is_float_dtype(frame["value"])  # numbers as numbers
    visitors = frame[(frame.view == "headline") & (frame.metric == "Visitors")]
    assert visitors["value"].iloc[0] == truth.total(truth.select(KNOWN_ROWS, TODAY - timedelta(days=6),
                                                                 TODAY + timedelta(days=1)))
    assert frame.loc[frame["hidden"], "value"].isna().all() and frame["hidden"].any()


# --------------------------------------------------------------------------- login (issue 17 item 5)


def test_login_is_throttled_and_failures_logged(known_db, app_test, caplog):
    encoded = hash_password("s3cret pass", n=2**10)
    at = app_test(known_db, auth_username="analyst", auth_password_hash=encoded)
    caplog.set_level(logging.WARNING, logger="footfall.dashboard")
    for _ in range(6):  # five free failures, the sixth locks the name
        at.text_input(key="login_user").set_value("analyst")
        at.text_input(key="login_password").set_value("guess-123")
        at.button[0].click().run()
    assert "Wrong user name or password." in [e.value for e in at.error]
    # locked: even the right password is refused, without being checked
    at.text_input(key="login_user").set_value("analyst")
    at.text_input(key="login_password").set_value("s3cret pass")
    at.button[0].click().run()
    assert any(e.value.startswith("Too many failed sign-ins") for e in at.error)
    assert not at.metric
    failures = [r for r in caplog.records if r.getMessage() == "dashboard login failed"]
    assert len(failures) == 6 and failures[-1].ctx_locked_s > 0
    assert not any("guess-123" in r.getMessage() + str(r.__dict__) for r in caplog.records)  # no password logged


def test_throttle_limits_the_whole_server():
    throttle = launcher.LoginThrottle(free_failures=100, global_failures=3, global_window_s=60)
    for name in ("a", "b", "c"):  # other names each time: per-name locks alone would never trigger
        assert throttle.failed(name, now=0.0) == 0.0
    assert throttle.wait_s("d", now=1.0) == pytest.approx(59.0)
    assert throttle.wait_s("d", now=61.0) == 0.0


def test_backoff_doubles_and_is_capped():
    throttle = launcher.LoginThrottle(free_failures=1, base_lock_s=2, max_lock_s=10, global_failures=1000)
    locks = [throttle.failed("x", now=float(i)) for i in range(6)]
    assert locks == [0.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_signed_session_survives_a_reload(known_db, app_test, dash_env):
    encoded = hash_password("s3cret pass", n=2**10)
    dash_env.setenv("FOOTFALL_SESSION_SECRET", "k" * 64)
    at = app_test(known_db, auth_username="analyst", auth_password_hash=encoded)
    at.text_input(key="login_user").set_value("analyst")
    at.text_input(key="login_password").set_value("s3cret pass")
    at.button[0].click().run()
    assert at.metric
    # the browser is told to keep a signed, expiring token (HTML with the cookie-setting script)
    html = " ".join(h.proto.body for h in at.get("html"))
    token = html.split("footfall_session=")[1].split(";")[0]
    assert launcher.read_session_token(token, "k" * 64) == "analyst"
    assert launcher.read_session_token(token, "x" * 64) is None  # another server's secret
    assert int(token.split(".")[1]) > datetime.now().timestamp() + 11 * 3600  # FOOTFALL_SESSION_HOURS 12


# --------------------------------------------------------------------------- 8. payload


def test_chart_payload_stays_small_at_minute_resolution():
    """3 days per minute (the most periods drawn, data.MAX_PERIODS), 4 cameras: all time charts < 500 KB."""
    import plotly.io as pio

    from footfall_dash import charts, data, demo, views

    rng = data.TimeRange(datetime(2024, 5, 6), datetime(2024, 5, 9))
    assert data.coarsest_needed(rng, "minute") == "minute"
    counts = demo.demo_frame(rng.start, rng.end, seed=2).rename(columns={"bucket_start": "time"})
    counts["time"] = pd.to_datetime(counts["time"])
    counts["emotion"] = counts["emotion"].replace("", data.NOT_RECORDED_LABEL)
    cameras = sorted(counts["camera_id"].unique())
    footfall = views.footfall_view(counts, rng, "minute", "camera_id", cameras, k=2)
    emotion = views.mix_view(counts, rng, "minute", "emotion", k=2)
    valence = views.mix_view(counts, rng, "minute", "valence", k=2)
    sizes = []
    for view, palette in ((footfall, charts.camera_colors(cameras)), (emotion, charts.EMOTION_COLORS),
                          (valence, charts.VALENCE_COLORS)):
        figure = charts.stacked_time_figure(view, 2, palette)
        assert len(figure.data[0].y) == 3 * 24 * 60
        sizes.append(len(pio.to_json(figure, validate=False)))  # what st.plotly_chart sends
    assert sum(sizes) < 500_000, sizes


def test_page_payload_under_500_kb(tmp_path, app_test):
    from footfall_dash import demo

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo.fill_demo(url, days=7, seed=2, end=datetime(2024, 5, 9))
    at = app_test(url, now=datetime(2024, 5, 8, 23, 0))
    for resolution in ("minute", "hour"):
        at.radio(key="f_resolution").set_value(resolution).run()
        assert_no_crash(at)
        payload = sum(len(el.proto.spec) for el in at.get("plotly_chart"))
        assert payload < 500_000, (resolution, payload)


def test_opening_hours_leave_closed_hours_out_of_the_averages(known_db, app_test):
    at = app_test(known_db, opening_hours="10:00-18:00")
    at.selectbox(key="f_preset").set_value("Today").run()
    assert_no_crash(at)
    # today per hour: 09:00 50 (closed), 10:00 25, 11:00 15, 14:00 15 -> median of the open hours 15
    assert metrics(at)["Median / hour"].value == "15.0"
    heat = export(at).query("view == 'hour_weekday'").set_index(["weekday", "hour"])["value"]
    assert heat[("Wed", "09:00")] == "closed" and heat[("Wed", "10:00")] == "25.0"
    assert metrics(at)["Visitors"].value == "105"  # visitors outside the hours still count
    at = app_test(known_db, opening_hours="nine to five")
    assert_no_crash(at)
    assert any("FOOTFALL_OPENING_HOURS" in w.value for w in at.warning)
