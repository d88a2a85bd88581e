"""The real dashboard in headless Chromium: `footfall-dashboard` on a loopback port, demo data.

Starts the launcher (which execs `streamlit run dashboard/app.py`), drives /usr/bin/chromium with
Playwright, checks the headline figures against the database and that the charts render, saves a
screenshot (tmp_path and test-output/dashboard.png), then stops the server with SIGTERM.

Set UPDATE_DASHBOARD_SCREENSHOT=1 to also write docs/dashboard.png (the README screenshot).
Skips when Chromium or Playwright is missing; with CI=true that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from footfall.config import PROJECT_ROOT
from footfall.embedded_redis import free_port
from footfall_dash import demo

from ..support import missing_requirement
from .conftest import DASHBOARD_ENV, output_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHART_TITLES = ("Footfall over time", "Weekday × hour of day", "Age and gender", "Emotion mix over time",
                "Valence over time", "Camera comparison")


def _require_browser():
    problems = []
    if not CHROMIUM.exists():
        problems.append("no /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        problems.append("playwright is not installed (pip install playwright)")
    if problems:
        missing_requirement("browser test needs: " + "; ".join(problems))


def _wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"footfall-dashboard exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the dashboard did not become healthy in time")


def _visitors_last_7_days(db: Path) -> int:
    """Truth straight from SQLite: the 7 calendar days (UTC) ending today."""
    today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=6)
    with sqlite3.connect(db) as conn:
        (total,) = conn.execute("SELECT SUM(visitors) FROM visitor_counts WHERE bucket_start >= ?",
                                (start.strftime("%Y-%m-%d %H:%M:%S"),)).fetchone()
    return int(total)


@pytest.fixture
def dashboard_server(tmp_path):
    _require_browser()
    db = tmp_path / "demo.db"
    demo.fill_demo(f"sqlite:///{db}", days=15, seed=3)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DASHBOARD_ENV}
    env.update(FOOTFALL_DATABASE_URL=f"sqlite:///{db}", FOOTFALL_SITES=demo.DEMO_SITES,
               FOOTFALL_TIMEZONE="UTC", HOME=str(tmp_path))  # HOME: no user-level Streamlit config
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "footfall.dashboard_launcher", "--port", str(port),
                                "--address", "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=tmp_path)
    try:
        _wait_healthy(port, process)
        yield port, db, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()


def test_dashboard_in_chromium(dashboard_server, tmp_path):
    from playwright.sync_api import sync_playwright

    port, db, process = dashboard_server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector('[data-testid="stMetric"]', timeout=40_000)
            page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=40_000)
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5",
                                   timeout=40_000)

            metrics = {
                m.locator('[data-testid="stMetricLabel"]').inner_text().strip():
                m.locator('[data-testid="stMetricValue"]').inner_text().strip()
                for m in page.locator('[data-testid="stMetric"]').all() if m.is_visible()}
            assert metrics["Visitors"] == f"{_visitors_last_7_days(db):,}"
            for label in ("Previous period", "Busiest hour", "Median / hour", "Female / male", "Mean age"):
                assert metrics.get(label), f"headline figure {label!r} missing"
            body = page.locator("section.main, [data-testid='stMain']").first.inner_text()
            for title in CHART_TITLES:
                assert title in body, f"{title!r} missing"
            assert "Race" not in body  # switched off by default
            assert page.locator(".js-plotly-plot .bars, .js-plotly-plot .hm, .js-plotly-plot image").count() > 0
            assert page.get_by_text("Download CSV").is_visible()

            # the whole analytics page in one picture: grow the viewport to the content height
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1440, "height": min(max(int(height) + 40, 1000), 4000)})
            page.wait_for_timeout(800)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot))
            shutil.copy(shot, output_dir() / "dashboard.png")
            if os.environ.get("UPDATE_DASHBOARD_SCREENSHOT") == "1":
                shutil.copy(shot, PROJECT_ROOT / "docs" / "dashboard.png")

            # operator view: the reconnecting demo camera is flagged
            page.get_by_role("tab", name="Cameras (operator)").click()
            alert = page.locator("[data-testid='stAlert']", has_text="attention").first
            alert.wait_for(timeout=10_000)
            assert "hamburg-door" in alert.inner_text()
            page.screenshot(path=str(output_dir() / "dashboard_operator.png"))
        finally:
            browser.close()

    process.send_signal(signal.SIGTERM)  # the launcher exec'd Streamlit: it must stop cleanly
    assert process.wait(15) == 0
