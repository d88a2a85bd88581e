"""Dashboard benchmark: server time per interaction and chart payload, printed (no asserts).

Builds SQLite databases of demo aggregates (``footfall_dash.demo``; the hourly and daily rollups, full
and narrow, filled from them by the migrations' backfill, ``footfall.db.store.refresh_rollups``; a kept
database made before a migration is upgraded on reuse), then drives the
real ``dashboard/app.py`` with Streamlit's AppTest: each interaction is one script run, the time the
server spends before the browser gets anything (no network, no drawing). Every interaction is run
twice: "new" (first time with that filter: database read + build) and "again" (the same filter:
``st.cache_data`` per filter and data version), each as wall time and as this process's CPU time
(the server's work whatever else shares the machine). "charts" is the size of the plotly specs the
page sends. Switching tabs runs nothing on the server (``st.tabs`` is drawn in the browser).

    .venv/bin/python benchmarks/dashboard.py                       # 35 days x 4 cameras, minute buckets
    .venv/bin/python benchmarks/dashboard.py --days 365 --cameras 50 --bucket-s 3600 --peak 20

Before / after on one database: ``--keep DB`` writes the database there (reused when it exists), and
``--dashboard DIR`` drives another checkout's dashboard, e.g. the one before the rollups:
``git archive 9b4634e dashboard | tar -x -C /tmp/before``, then ``--dashboard /tmp/before/dashboard``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = Path(sys.argv[sys.argv.index("--dashboard") + 1]).resolve() if "--dashboard" in sys.argv \
    else ROOT / "dashboard"  # read before argparse: footfall_dash is imported from there
sys.path.insert(0, str(DASHBOARD))

import pandas as pd  # noqa: E402

from footfall.db.migrate import upgrade  # noqa: E402
from footfall.db.store import make_engine, refresh_rollups  # noqa: E402
from footfall_dash import demo  # noqa: E402

END = datetime(2024, 6, 1)  # exclusive; "now" is pinned to the last hour of data


def build_database(path: Path, days: int, cameras: int, bucket_s: int, peak: float) -> tuple[int, int]:
    """``days`` of demo counts for ``cameras`` cameras (groups of the 4 demo cameras, renamed); (rows, visitors)."""
    url = f"sqlite:///{path}"
    upgrade(url)
    start = END - timedelta(days=days)
    rows = visitors = 0
    with sqlite3.connect(path) as conn:
        for group in range((cameras + 3) // 4):
            frame = demo.demo_frame(start, END, seed=group, peak_per_hour=peak, bucket_s=bucket_s)
            names = {cam: f"cam-{group * 4 + i:02d}" for i, cam in enumerate(demo.DEMO_CAMERAS)}
            frame["camera_id"] = frame["camera_id"].map(names)
            frame = frame[frame["camera_id"].isin({f"cam-{i:02d}" for i in range(cameras)})]
            frame["bucket_start"] = pd.to_datetime(frame["bucket_start"]).dt.strftime("%Y-%m-%d %H:%M:%S.000000")
            columns = ["camera_id", "bucket_start", "age_band", "gender", "race", "emotion", "visitors", "age_sum"]
            conn.executemany(f"INSERT INTO visitor_counts ({', '.join(columns)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             frame[columns].itertuples(index=False, name=None))
            rows += len(frame)
            visitors += int(frame["visitors"].sum())
    engine = make_engine(url)
    with engine.begin() as conn:  # the hourly and daily sums, as migration 0003's backfill computes them
        refresh_rollups(conn)
    engine.dispose()
    return rows, visitors


def payload(at) -> int:
    return sum(len(el.proto.spec) for el in at.get("plotly_chart"))


def run_interactions(url: str, days: int, whole: bool = True) -> Iterator[tuple]:
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest, local_script_runner

    # AppTest compiles the script anew on every run (a fresh ScriptCache); a server compiles it once
    shared_cache = ScriptCache()
    local_script_runner.ScriptCache = lambda: shared_cache
    os.environ["FOOTFALL_DATABASE_URL"] = url
    for name in ("FOOTFALL_SITES", "FOOTFALL_AUTH_USERNAME", "FOOTFALL_AUTH_PASSWORD_HASH"):
        os.environ.pop(name, None)
    at = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=900)
    at.session_state["footfall_now"] = END - timedelta(hours=1)
    steps = [
        ("first load (last 7 days, per hour)", lambda: None),
        ("period: last 30 days", lambda: at.selectbox(key="f_preset").set_value("Last 30 days")),
        ("resolution: day", lambda: at.radio(key="f_resolution").set_value("day")),
        ("stack by gender", lambda: at.radio(key="f_stack").set_value("gender")),
        ("compare: same weekdays last week",
         lambda: at.selectbox(key="f_compare").set_value("same weekdays last week")),
        ("period: today, per minute", lambda: (at.selectbox(key="f_preset").set_value("Today"),
                                               at.radio(key="f_resolution").set_value("minute"))),
    ]
    if days > 30 and whole:  # (all cameras: the camera filter comes last)
        start = (END - timedelta(days=days)).date()
        steps.append((f"custom: all {days} days, per week", lambda: (
            at.selectbox(key="f_preset").set_value("Custom"), at.run(),
            at.date_input(key="f_from_date").set_value(start), at.date_input(key="f_to_date").set_value(END.date()),
            at.radio(key="f_resolution").set_value("week"), at.button(key="f_apply").click())))
    steps.append(("cameras: the first two", lambda: at.multiselect(key="f_cameras").set_value(
        at.multiselect(key="f_cameras").options[:2])))
    for label, act in steps:
        act()
        timings = []
        for _ in ("new", "again"):  # again: the same filters, served from the per-filter cache
            wall, cpu = time.perf_counter(), time.process_time()
            at.run()
            timings += [time.perf_counter() - wall, time.process_time() - cpu]
            if at.exception:
                raise SystemExit(f"{label}: {at.exception[0].value}")
        yield label, *timings, payload(at)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--bucket-s", type=int, default=60, help="stored bucket width (the aggregator's: 60)")
    parser.add_argument("--peak", type=float, default=70.0, help="visitors per hour per camera at the busiest hour")
    parser.add_argument("--keep", type=Path, help="database file to write (or reuse when it exists)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="the dashboard folder to drive")
    parser.add_argument("--no-whole", action="store_true", help="leave out the whole-range interaction")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.db"
        if path.exists():
            upgrade(f"sqlite:///{path}")  # tables added since it was built are created and backfilled
            print(f"database: {path} (reused)")
        else:
            began = time.perf_counter()
            rows, visitors = build_database(path, args.days, args.cameras, args.bucket_s, args.peak)
            built_s = time.perf_counter() - began
            print(f"database: {args.days} days x {args.cameras} cameras, {args.bucket_s} s buckets: {rows:,} rows, "
                  f"{visitors:,} visitors, {path.stat().st_size / 1e6:.0f} MB (built in {built_s:.0f} s)")
        print(f"dashboard: {DASHBOARD}")
        print(f"{'interaction':<40} {'new: wall / CPU (s)':>20} {'again: wall / CPU (s)':>22} {'charts (KB)':>11}")
        for label, new, new_cpu, again, again_cpu, size in run_interactions(f"sqlite:///{path}", args.days,
                                                                            not args.no_whole):
            print(f"{label:<40} {new:11.2f} / {new_cpu:5.2f} {again:13.2f} / {again_cpu:5.2f} {size / 1000:11.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
