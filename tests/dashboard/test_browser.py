"""The real dashboard in headless Chromium: `footfall-dashboard` on a loopback port, demo data.

Starts the launcher (which execs `streamlit run dashboard/app.py`), drives /usr/bin/chromium with
Playwright, checks the headline figures against the database and that the charts render, saves a
screenshot (tmp_path and test-output/dashboard.png), then stops the server with SIGTERM.

Set UPDATE_DASHBOARD_SCREENSHOT=1 to also write docs/dashboard.png (the README screenshot).
Skips when Chromium or Playwright is missing; with CI=true that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
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


NOT_COUNTING = "floor1-escalator"  # marked `~` in demo.DEMO_SITES


def _visitors_last_7_days(db: Path) -> int:
    """Truth straight from SQLite: the 7 calendar days (UTC) ending today, counting cameras only."""
    today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=6)
    with sqlite3.connect(db) as conn:
        (total,) = conn.execute("SELECT SUM(visitors) FROM visitor_counts WHERE bucket_start >= ? AND camera_id "
                                "NOT IN (?)", (start.strftime("%Y-%m-%d %H:%M:%S"), NOT_COUNTING)).fetchone()
    return int(total)


def _start_server(tmp_path, **extra_env: str):
    _require_browser()
    db = tmp_path / "demo.db"
    demo.fill_demo(f"sqlite:///{db}", days=15, seed=3)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DASHBOARD_ENV}
    env.update(FOOTFALL_DATABASE_URL=f"sqlite:///{db}", FOOTFALL_SITES=demo.DEMO_SITES,
               FOOTFALL_TIMEZONE="UTC", HOME=str(tmp_path), **extra_env)  # HOME: no user-level Streamlit config
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "footfall.dashboard_launcher", "--port", str(port),
                                "--address", "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=tmp_path)
    return port, db, process, log


@pytest.fixture
def dashboard_server(tmp_path):
    port, db, process, log = _start_server(tmp_path)
    try:
        _wait_healthy(port, process)
        yield port, db, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()


def _record_requests(page, port: int) -> list[str]:
    """Every URL the page asks for; anything not on this server is refused (and stays in the list)."""
    seen: list[str] = []
    local = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")

    def route(request_route):
        seen.append(request_route.request.url)
        if request_route.request.url.startswith(local):
            request_route.continue_()
        else:
            request_route.abort()

    page.route("**/*", route)
    page.on("websocket", lambda ws: seen.append(ws.url))
    return seen


def _outside(seen: list[str], port: int) -> list[str]:
    local = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/", "data:", "blob:")
    return [url for url in seen if not url.startswith(local)]


@contextlib.contextmanager
def _dashboard_page(port: int, query: str = ""):
    """(page, requests seen) of headless Chromium on the dashboard, charts drawn; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            seen = _record_requests(page, port)
            page.goto(f"http://127.0.0.1:{port}/{query}", wait_until="domcontentloaded")
            _wait_for_charts(page)
            yield page, seen
        finally:
            browser.close()


def _wait_for_charts(page) -> None:
    page.wait_for_selector('[data-testid="stMetric"]', timeout=40_000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=40_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5", timeout=40_000)


def test_dashboard_in_chromium(dashboard_server, tmp_path):
    port, db, process = dashboard_server
    with _dashboard_page(port) as (page, seen):
        page.wait_for_timeout(500)
        assert seen and not _outside(seen, port), _outside(seen, port)  # e.g. an icon font from Google

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
        # no card label is cut off with an ellipsis (e.g. "Previous per...")
        page.set_viewport_size({"width": 1100, "height": 1000})
        page.wait_for_timeout(500)
        cut = page.evaluate("""[...document.querySelectorAll('[data-testid="stMetricLabel"] *')]
            .filter(e => getComputedStyle(e).textOverflow === "ellipsis" && e.clientWidth > 0
                         && e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")
        assert not cut, cut
        page.set_viewport_size({"width": 1440, "height": 1000})

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
        page.get_by_role("tab", name="Help & privacy").click()
        page.wait_for_timeout(500)
        # no font server, CDN or anything else outside: the page only ever talks to this server
        assert seen and not _outside(seen, port), _outside(seen, port)

    process.send_signal(signal.SIGTERM)  # the launcher exec'd Streamlit: it must stop cleanly
    assert process.wait(15) == 0


PRINT_WIDTH_PX = 794  # A4 portrait at 96 px per inch (8.27 in); page.pdf prints without margins by default


def test_printable_view_fits_a4(dashboard_server, tmp_path):
    """The printable view (opened from its URL) draws every chart and table within an A4 portrait page.

    The PDFs (portrait and landscape) are kept in test-output/ to look at.
    """
    port, _, _ = dashboard_server
    with _dashboard_page(port, "?print=1&period=Last+30+days") as (page, seen):
        assert page.get_by_text("Footfall report").is_visible()
        page.wait_for_timeout(500)
        # plotly fixes a chart's width in pixels when it draws it: a screen-wide chart is cut on paper
        widths = page.evaluate("[...document.querySelectorAll('.js-plotly-plot .main-svg')]"
                               ".map(svg => svg.getBoundingClientRect().width)")
        assert widths and max(widths) <= PRINT_WIDTH_PX, widths
        # the interactive table grid would lose columns at the page edge: printed tables are HTML
        assert page.locator('[data-testid="stDataFrame"]').count() == 0
        assert page.locator('[data-testid="stTable"]').count() >= 1
        page.emulate_media(media="print")
        for landscape in (False, True):
            name = f"dashboard_print_{'landscape' if landscape else 'portrait'}.pdf"
            page.pdf(path=str(tmp_path / name), format="A4", landscape=landscape, print_background=True)
            shutil.copy(tmp_path / name, output_dir() / name)
            assert (tmp_path / name).stat().st_size > 10_000
        assert not _outside(seen, port), _outside(seen, port)


def test_login_survives_reload_and_the_csv_needs_the_session(tmp_path):
    """Signed in once, a reload and a new tab stay signed in (signed cookie); another browser is asked to
    sign in. The CSV exists only after a signed-in click, under a new unguessable URL each time, and is
    gone within the session's next reruns (two as a rule: Streamlit marks it, then deletes it)."""
    from playwright.sync_api import sync_playwright

    from footfall.dashboard_launcher import hash_password

    port, _, process, log = _start_server(tmp_path, FOOTFALL_AUTH_USERNAME="analyst",
                                          FOOTFALL_AUTH_PASSWORD_HASH=hash_password("s3cret pass", n=2**10))
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_healthy(port, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
                page = context.new_page()
                seen = _record_requests(page, port)
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_label("User name").fill("analyst")
                page.get_by_role("textbox", name="Password").fill("s3cret pass")
                page.get_by_role("button", name="Sign in").click()
                _wait_for_charts(page)

                urls = []
                for _ in range(2):
                    with page.expect_download(timeout=30_000) as info:
                        page.get_by_role("button", name="Download CSV").click()
                    download = info.value
                    text = Path(download.path()).read_text()
                    assert "# time zone: UTC" in text and "# export id: " in text
                    urls.append(download.url)
                assert urls[0] != urls[1], "the same selection must not give the same (guessable) URL"
                with urllib.request.urlopen(urls[1], timeout=5) as reply:  # right after the click: there
                    assert reply.status == 200
                gone_after = None
                for rerun, resolution in enumerate(("Day", "Hour", "Day", "Hour"), start=1):  # reruns drop it
                    page.get_by_text(resolution, exact=True).click()
                    page.wait_for_timeout(1000)
                    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=40_000)
                    try:
                        urllib.request.urlopen(urls[1], timeout=5).close()
                    except urllib.error.HTTPError as error:
                        assert error.code == 404
                        gone_after = rerun
                        break
                assert gone_after is not None and gone_after <= 4, "the CSV stays fetchable"

                cookie = next(c for c in context.cookies() if c["name"] == "footfall_session")
                assert cookie["sameSite"] == "Strict" and cookie["expires"] > time.time() + 11 * 3600
                page.reload(wait_until="domcontentloaded")
                _wait_for_charts(page)  # no sign-in form after a reload
                second = context.new_page()
                second.goto(url, wait_until="domcontentloaded")
                _wait_for_charts(second)  # nor in a new tab
                stranger = browser.new_page()
                stranger.goto(url, wait_until="domcontentloaded")
                stranger.get_by_label("User name").wait_for(timeout=40_000)
                assert not stranger.locator('[data-testid="stMetric"]').count()
                assert not _outside(seen, port), _outside(seen, port)
            finally:
                browser.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        log.close()
