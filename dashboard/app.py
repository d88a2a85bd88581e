"""Footfall analysts' dashboard (Streamlit). Layout only: the figures come from ``footfall_dash``.

Run it with ``footfall-dashboard`` (or ``streamlit run dashboard/app.py``). Settings are the
FOOTFALL_* variables of ``footfall.config.DashboardSettings``. The database is only read.
"""

from __future__ import annotations

import logging
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # footfall_dash lives beside this file
    sys.path.insert(0, _HERE)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from footfall.config import DashboardSettings  # noqa: E402
from footfall.labels import GENDERS  # noqa: E402
from footfall.observability import ctx  # noqa: E402
from footfall.dashboard_launcher import (LoginThrottle, check_login, is_valid_hash,  # noqa: E402
                                         read_session_token, session_secret, session_token)
from footfall_dash import charts, data, flow, views  # noqa: E402
from footfall_dash.privacy import POLICY  # noqa: E402

LOG = logging.getLogger("footfall.dashboard")
NOW_KEY = "footfall_now"  # optional session value (local naive datetime) that pins "now": tests, reports
# A function that builds the frame behind the CSV download (exactly what is shown): built on the click only
EXPORT_KEY = "footfall_export"
STACK_LABELS = {"camera_id": "Camera", "gender": "Gender"}
MAX_HIDDEN_SHARE = 0.2  # above this share of hidden visitors a time resolution is too fine to be useful
SESSION_COOKIE = "footfall_session"  # signed login token (see footfall.dashboard_launcher.session_token)
COOKIE_KEY = "footfall_set_cookie"  # session value: a cookie to write in the browser on the next run

# No page_icon: a material icon is fetched from Google's font server on every page load (a request to
# an outside host); Streamlit's own favicon is served by this server.
st.set_page_config(page_title="Footfall analytics", layout="wide")

CSS = """
<style>
.block-container {padding-top: 2.2rem; padding-bottom: 2rem;}
div[data-testid="stMetricValue"] {font-size: 1.55rem;}
/* a long card label ("Same weekdays last week") wraps instead of ending in "..." */
[data-testid="stMetricLabel"] * {white-space: normal !important; overflow: visible !important;
                                 text-overflow: clip !important; word-break: normal !important;}
h3 {font-size: 1.12rem !important; margin-bottom: 0 !important;}
@media print {
  section[data-testid="stSidebar"], header[data-testid="stHeader"], div[data-testid="stToolbar"],
  div[data-testid="stStatusWidget"] {display: none !important;}
  .block-container {padding: 0 !important; max-width: 100% !important;}
  /* keep each chart, table and card row whole; not the page's outer block (it would start on page 2) */
  div[data-testid="stElementContainer"], div[data-testid="stHorizontalBlock"] {break-inside: avoid;}
  div[data-testid="stElementContainer"]:has(h3) {break-after: avoid;}  /* a heading stays with its chart */
}
</style>
"""

HELP = """\
**Visitors** are unique people counted by the cameras (each tracked face once), summed over the
selected cameras and period (cameras marked not counting in the site settings are left out unless
picked by name). **Compare with**: the previous period (the same length immediately before), the
same weekdays a week earlier, or 52 weeks earlier; while the period is still running both stop at
the same time of day. The change reads **not comparable** when a selected camera has no data yet
at the start of the earlier span. **Busiest hour** is the hour of day with the most visitors in the
period. **Median per active hour** is the median of the hourly counts over the open hours with at
least one visitor. The **weekday × hour** map shows the mean visitors per day: the sum over the
period divided by how many of that weekday it holds. **Mean age** is the average estimated age.
Times are shown in {tz}.

{policy}
"""


# --------------------------------------------------------------------------- settings and login


def load_settings() -> DashboardSettings:
    try:
        settings = DashboardSettings()
        if settings.timezone != "UTC":
            ZoneInfo(settings.timezone)
    except ValidationError as exc:
        fields = ", ".join(f"FOOTFALL_{'_'.join(str(p) for p in e['loc']).upper()}" for e in exc.errors())
        st.error(f"Invalid dashboard settings: {fields}. Check the environment variables.")
        st.stop()
    except (ZoneInfoNotFoundError, ValueError):
        st.error(f"FOOTFALL_TIMEZONE is not a known time zone: {settings.timezone!r} (e.g. Europe/Berlin).")
        st.stop()
    return settings


@st.cache_resource(show_spinner=False)
def login_throttle() -> LoginThrottle:
    return LoginThrottle()  # one per server process: parallel browser sessions share it


@st.cache_resource(show_spinner=False)
def signing_secret(configured: str) -> str:
    return session_secret(configured)  # FOOTFALL_SESSION_SECRET, else one random secret per process


def write_cookie(value: str, max_age_s: int) -> None:
    """Set (or with max_age 0 delete) the session cookie in the browser: JavaScript, as Streamlit has no API."""
    st.html(f"""<script>document.cookie = "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age_s}; SameSite=Strict"
            + (location.protocol === "https:" ? "; Secure" : "");</script>""", unsafe_allow_javascript=True)


def require_login(settings: DashboardSettings) -> str | None:
    """Show the sign-in form and stop the script until the user has signed in (when configured).

    A signed-in browser holds a signed, expiring token in a cookie, so a reload or a new tab needs
    no new sign-in. Failed attempts are throttled per user name and for the whole server.
    """
    user, password_hash = settings.auth_username, settings.auth_password_hash
    if not user and not password_hash:
        return None
    if not user or not is_valid_hash(password_hash):
        st.error("The login is misconfigured: set FOOTFALL_AUTH_USERNAME and a FOOTFALL_AUTH_PASSWORD_HASH made "
                 "by `footfall-dashboard-hash`. Nothing is shown until then.")
        st.stop()
    secret = signing_secret(settings.session_secret)
    pending = st.session_state.pop(COOKIE_KEY, None)
    if pending is not None:
        write_cookie(*pending)
    if st.session_state.get("auth_user") == user:
        return user
    # the cookie is read once per browser session: after "Sign out" the old cookie of this tab's
    # connection (Streamlit sees the cookies of the websocket handshake) must not sign it in again
    if (not st.session_state.get("signed_out")
            and read_session_token(st.context.cookies.get(SESSION_COOKIE), secret) == user):
        st.session_state["auth_user"] = user
        return user
    _, middle, _ = st.columns([1, 1.1, 1])
    with middle:
        st.title("Footfall")
        st.caption("Sign in to see the visitor analytics.")
        with st.form("login"):
            name = st.text_input("User name", key="login_user")
            password = st.text_input("Password", type="password", key="login_password")
            submitted = st.form_submit_button("Sign in", type="primary")
        if submitted:
            throttle = login_throttle()
            wait_s = throttle.wait_s(name)
            if wait_s > 0:  # refused without checking the password: guessing gains nothing
                LOG.warning("dashboard login refused while locked", **ctx(user=name[:64], wait_s=round(wait_s)))
                st.error(f"Too many failed sign-ins. Try again in {wait_s:.0f} s.")
            elif check_login(name, password, user, password_hash):
                throttle.succeeded(name)
                ttl_s = int(settings.session_hours * 3600)
                st.session_state["auth_user"] = user
                st.session_state.pop("signed_out", None)
                st.session_state[COOKIE_KEY] = (session_token(user, secret, ttl_s), ttl_s)
                st.rerun()
            else:
                throttle.failed(name)
                st.error("Wrong user name or password.")
    st.stop()


def sign_out() -> None:
    st.session_state.pop("auth_user", None)
    st.session_state["signed_out"] = True
    st.session_state[COOKIE_KEY] = ("", 0)  # the browser forgets its token too


# --------------------------------------------------------------------------- cached reads


@st.cache_resource(show_spinner=False)
def engine_for(url: str):
    return data.open_engine(url)


# Cached per filter and data version (``data.data_version``: it changes when visitors are counted, so live
# mode reads new counts while an unchanged database is served from the cache); the TTL bounds the memory.
@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def cached_counts(url: str, start: datetime, end: datetime, cameras: tuple[str, ...], tz: str, dims: tuple[str, ...],
                  grain: str, by_time: bool, version: tuple) -> pd.DataFrame:
    return data.load_counts(engine_for(url), data.TimeRange(start, end), list(cameras), tz=tz, dims=list(dims),
                            grain=grain, by_time=by_time)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def cached_by_camera(url: str, start: datetime, end: datetime, cameras: tuple[str, ...], tz: str,
                     version: tuple) -> pd.Series:
    return data.visitors_by_camera(engine_for(url), data.TimeRange(start, end), list(cameras), tz=tz)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def cached_hours_of_day(url: str, start: datetime, end: datetime, cameras: tuple[str, ...], tz: str,
                        version: tuple) -> pd.DataFrame:
    return data.hours_of_day(engine_for(url), data.TimeRange(start, end), list(cameras), tz=tz)


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def cached_span(url: str, tz: str, version: tuple) -> tuple[datetime, datetime] | None:
    return data.data_span(engine_for(url), tz)


def freshness(settings: DashboardSettings, url: str, version: tuple) -> None:
    """Every tab says how recent its data is: the last minute counted, and when the page read it."""
    try:
        span = cached_span(url, settings.timezone, version)
    except data.DatabaseError:
        return
    last = f"{span[1]:%Y-%m-%d %H:%M}" if span else "no counts yet"
    st.caption(f"Data up to {last} ({settings.timezone}; last counted minute) · read "
               f"{data.local_now(settings.timezone):%Y-%m-%d %H:%M:%S}")


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def cached_first_counts(url: str, cameras: tuple[str, ...], tz: str, version: tuple) -> dict[str, datetime]:
    return data.first_counts(engine_for(url), list(cameras), tz=tz)


# --------------------------------------------------------------------------- filters


def compare_mode() -> str:
    return st.session_state.get("f_compare") or next(iter(data.COMPARISONS))


def now_local(settings: DashboardSettings) -> datetime:
    return st.session_state.get(NOW_KEY) or data.local_now(settings.timezone)


def initial(key: str, default, name: str = "value") -> dict:
    """The widget's default, unless its value is in the session already (the URL set it): both at once
    make Streamlit warn."""
    return {} if key in st.session_state else {name: default}


# Filters <-> URL query parameters, so a view can be bookmarked and shared (the login is not in it).
URL_CHOICES = {"period": ("f_preset", data.PRESETS), "compare": ("f_compare", tuple(data.COMPARISONS)),
               "resolution": ("f_resolution", data.RESOLUTIONS), "stack": ("f_stack", tuple(STACK_LABELS))}
URL_LISTS = {"site": "f_sites", "camera": "f_cameras"}
URL_TIMES = {"from": ("f_from_date", "f_from_time"), "until": ("f_to_date", "f_to_time")}


def filters_from_url(cameras: list[str], groups: dict[str, str]) -> None:
    """Once per browser session: filters named in the URL become the widgets' values (bad values are ignored)."""
    state, params = st.session_state, st.query_params
    if state.get("url_read"):
        return
    state["url_read"] = True
    for name, (key, allowed) in URL_CHOICES.items():
        if params.get(name) in allowed:
            state[key] = params.get(name)
    known = {"site": set(groups.values()) - {""}, "camera": set(cameras)}
    for name, key in URL_LISTS.items():
        values = [v for v in params.get_all(name) if v in known[name]]
        if values:
            state[key] = values
    for name, (date_key, time_key) in URL_TIMES.items():
        try:
            when = datetime.fromisoformat(params.get(name, ""))
        except ValueError:
            continue
        state[date_key], state[time_key] = when.date(), when.time().replace(second=0, microsecond=0)
    if params.get("print") == "1":
        state["f_print"] = True


def filters_to_url() -> None:
    state = st.session_state
    params: dict[str, str | list[str]] = {name: state[key] for name, (key, _) in URL_CHOICES.items() if state.get(key)}
    params.update({name: list(state[key]) for name, key in URL_LISTS.items() if state.get(key)})
    if state.get("f_preset") == "Custom":
        for name, (date_key, time_key) in URL_TIMES.items():
            if state.get(date_key) and state.get(time_key) is not None:
                params[name] = datetime.combine(state[date_key], state[time_key]).strftime("%Y-%m-%dT%H:%M")
    if state.get("f_print"):
        params["print"] = "1"
    st.query_params.from_dict(params)


def sidebar(settings: DashboardSettings, cameras: list[str], sites: dict[str, tuple[str, ...]],
            groups: dict[str, str], user: str | None) -> None:
    """Filter widgets; their values live in st.session_state (keys f_*), so refreshes keep them."""
    today = now_local(settings).date()
    with st.sidebar:
        st.markdown("### Filters")
        preset = st.selectbox("Period", data.PRESETS, **initial("f_preset", 1, "index"), key="f_preset")
        if preset == "Custom":
            # a form: typed dates apply with "Apply" (a click), not only when the field loses focus
            with st.form("custom_range", border=False):
                left, right = st.columns([3, 2])  # a date needs the wider field
                left.date_input("From", **initial("f_from_date", today - timedelta(days=6)), key="f_from_date")
                right.time_input("From time", **initial("f_from_time", time(0, 0)), key="f_from_time")
                left.date_input("Until", **initial("f_to_date", today + timedelta(days=1)), key="f_to_date")
                right.time_input("Until time", **initial("f_to_time", time(0, 0)), key="f_to_time")
                st.form_submit_button("Apply", key="f_apply", width="stretch")
            st.caption("Until is not included.")
        camera_options = cameras
        if sites:
            group_names = sorted(set(groups.values()))
            chosen_groups = st.multiselect("Sites / zones", group_names, key="f_sites", placeholder="All sites")
            if chosen_groups:
                camera_options = [c for c in cameras if groups[c] in chosen_groups]
        # drop cameras that left the options (another site chosen) before the widget is drawn
        st.session_state["f_cameras"] = [c for c in st.session_state.get("f_cameras", []) if c in camera_options]
        st.multiselect("Cameras", camera_options, key="f_cameras", placeholder="All cameras",
                       format_func=lambda c: f"{c}  ·  {groups[c]}" if groups.get(c) else c)
        st.radio("Resolution", data.RESOLUTIONS, **initial("f_resolution", 1, "index"), key="f_resolution",
                 horizontal=True,
                 format_func=str.capitalize)
        st.radio("Stack footfall by", list(STACK_LABELS), key="f_stack", horizontal=True,
                 format_func=STACK_LABELS.get)
        st.selectbox("Compare with", list(data.COMPARISONS), key="f_compare", format_func=str.capitalize,
                     help="The earlier span the change is computed against. Where it reaches back before a "
                          "camera's first data, the change reads \"not comparable\".")
        st.divider()
        st.toggle(f"Live (refresh every {settings.refresh_s} s)", key="f_live")
        st.toggle("Printable view", key="f_print", help="A clean static layout for printing (Ctrl+P).")
        with st.expander("Help & privacy"):
            st.markdown(HELP.format(tz=settings.timezone, policy=POLICY.format(k=settings.k_anonymity)))
        if user:
            st.caption(f"Signed in as **{user}**")
            st.button("Sign out", on_click=sign_out)


def selected_range(settings: DashboardSettings) -> data.TimeRange:
    state = st.session_state
    custom = None
    if state.get("f_preset") == "Custom":
        parts = [state.get(k) for k in ("f_from_date", "f_from_time", "f_to_date", "f_to_time")]
        if any(p is None for p in parts):
            raise ValueError("Choose a start and an end for the custom period")
        custom = (datetime.combine(parts[0], parts[1]), datetime.combine(parts[2], parts[3]))
    return data.preset_range(state.get("f_preset", "Last 7 days"), now_local(settings), custom)


def selected_cameras(cameras: list[str], groups: dict[str, str], skip: frozenset[str] = frozenset()) -> list[str]:
    """The cameras the figures add up: the ones picked by name, else those of the chosen sites (all when
    none) less the ``skip`` cameras marked not counting in FOOTFALL_SITES (no visitor counted twice)."""
    chosen = st.session_state.get("f_cameras") or []
    if chosen:
        return [c for c in cameras if c in chosen]
    chosen_groups = st.session_state.get("f_sites") or []
    return [c for c in cameras if (not chosen_groups or groups[c] in chosen_groups) and c not in skip]


# --------------------------------------------------------------------------- analytics


@dataclass(frozen=True)
class Filters:
    """Everything the figures depend on besides the database (hashable: the per-filter cache key)."""

    url: str
    start: datetime
    end: datetime
    current_end: datetime
    previous_start: datetime
    previous_end: datetime
    cameras: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]
    tz: str
    k: int
    resolution: str
    stack_by: str
    compare: str
    opening_hours: str
    race: bool
    emotion: bool
    version: tuple  # data.data_version: changes when visitors are counted, so live mode reads fresh rows


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def build_views(f: Filters) -> tuple[dict[str, views.View], list[tuple[str, str]]]:
    """The views of one filter state, cached per filter; plus (kind, text) notes for the page."""
    notes: list[tuple[str, str]] = []
    rng = data.TimeRange(f.start, f.end)
    cameras, groups, k = list(f.cameras), dict(f.groups), f.k
    def read(dims: tuple[str, ...], grain: str, by_time: bool = True) -> pd.DataFrame:
        # the database sums away what a view does not show, from the coarsest table that serves it
        return cached_counts(f.url, f.start, f.end, f.cameras, f.tz, dims, grain, by_time, f.version)

    previous = cached_by_camera(f.url, f.previous_start, f.previous_end, f.cameras, f.tz, f.version)
    current_by_camera = cached_by_camera(f.url, f.start, f.current_end, f.cameras, f.tz, f.version)
    first = cached_first_counts(f.url, f.cameras, f.tz, f.version)
    comparable = {cam: start <= f.previous_start for cam, start in first.items()}
    series = len(cameras) if f.stack_by == "camera_id" else len(GENDERS)
    resolution = data.coarsest_needed(rng, f.resolution, series=series)
    # Each figure reads only what it shows, summed by the database from the narrowest rollup that holds
    # it: the chart's series at its resolution, the hourly totals of all cameras (weekday x hour, busiest
    # and median hour), each camera's visitors per gender and per hour of day (the camera table). The
    # camera-hour time line of a year of 50 cameras would be 300,000 rows.
    counts = read((f.stack_by,), data.coarsest_grain(resolution))
    hourly = read((), "hour")
    totals = read(("camera_id", "gender"), "day", by_time=False)
    hours = cached_hours_of_day(f.url, f.start, f.end, f.cameras, f.tz, f.version)
    if resolution != f.resolution:
        notes.append(("warning", f"Too many points per {f.resolution} for this period: showing per {resolution}. "
                                 "Choose a shorter period for a finer resolution."))
    footfall = views.footfall_view(counts, rng, resolution, f.stack_by, cameras, k)
    finest = resolution
    # a resolution that hides many visitors (cells below k) shows little: take the next coarser one
    while views.hidden_share(footfall) > MAX_HIDDEN_SHARE and resolution != data.RESOLUTIONS[-1]:
        resolution = data.RESOLUTIONS[data.RESOLUTIONS.index(resolution) + 1]
        footfall = views.footfall_view(counts, rng, resolution, f.stack_by, cameras, k)
    if resolution != finest:
        notes.append(("info", f"Per {finest}, more than {MAX_HIDDEN_SHARE:.0%} of the visitors would sit in cells "
                              f"below k = {k} and be hidden: showing per {resolution}, where "
                              f"{views.hidden_share(footfall):.0%} are hidden (the grey band)."))
    try:
        opening = data.open_hours(f.opening_hours)
    except ValueError as exc:
        notes.append(("warning", f"{exc}: ignored, every hour counts as open."))
        opening = None
    h = data.headline(hourly, totals, int(current_by_camera.sum()), int(previous.sum()),
                      comparable=all(comparable.values()), opening=opening)
    shown = {
        "headline": views.headline_view(h, k, f.compare),
        "footfall": footfall,
        "heatmap": views.heatmap_view(hourly, rng, k, opening),
        "pyramid": views.pyramid_view(read(("age_band", "gender"), "day", by_time=False), k),
    }
    if f.emotion:
        emotions = read(("emotion",), data.coarsest_grain(resolution))
        shown["emotion"] = views.mix_view(emotions, rng, resolution, "emotion", k)
        shown["valence"] = views.mix_view(emotions, rng, resolution, "valence", k)
    if f.race:
        shown["race"] = views.race_view(read(("race",), "day", by_time=False), k)
    summary = data.camera_summary(totals, hours, current_by_camera, cameras, previous, comparable)
    shown["cameras"] = views.camera_view(summary, groups, k)
    if len({data.site_of(groups.get(c) or "Other") for c in cameras}) > 1 and any(groups.values()):
        shown["sites"] = views.site_view(totals, hours, current_by_camera, cameras, groups, previous, comparable,
                                         k)
    shown.update(flow.flow_views(engine_for(f.url), rng, cameras, f.tz, resolution, k))
    return shown, notes


def page_export(f: Filters) -> pd.DataFrame:
    """The CSV export's frame of one filter state: exactly the views shown (from the per-filter cache)."""
    return views.export_frame(list(build_views(f)[0].values()), f.k)


@st.cache_resource(ttl=600, max_entries=32, show_spinner=False)
def page_figures(f: Filters, all_cameras: tuple[str, ...], printable: bool) -> dict:
    """The charts of one filter state, by key. Building plotly figures takes longer than reading the
    rollups, so they are built once per filter and shared (never changed afterwards: the printable width
    is set here)."""
    shown, k = build_views(f)[0], f.k
    foot = shown["footfall"]
    palette = charts.GENDER_COLORS if foot.dims[1] == "gender" else charts.camera_colors(list(all_cameras))
    figs = {"chart_footfall": charts.stacked_time_figure(foot, k, palette),
            "chart_heatmap": charts.heatmap_figure(shown["heatmap"], k),
            "chart_pyramid": charts.pyramid_figure(shown["pyramid"], k)}
    if "emotion" in shown:
        figs["chart_emotion"] = charts.stacked_time_figure(shown["emotion"], k, charts.EMOTION_COLORS)
        figs["chart_valence"] = charts.stacked_time_figure(shown["valence"], k, charts.VALENCE_COLORS)
    if "race" in shown:
        figs["chart_race"] = charts.category_bar_figure(shown["race"], k, "race")
    figs.update(flow.figures(shown, k))
    if printable:  # a fixed width: a chart laid out for a wide screen would be cut off at the page edge
        for fig in figs.values():
            fig.update_layout(width=PRINT_WIDTH_PX)
    return figs


def headline_cards(view: views.View, previous_range: data.TimeRange) -> None:
    values = dict(zip(view.table["metric"], view.table["value"], strict=True))
    compare = compare_mode()
    change = values[f"Change vs {compare}"]
    cards = [*st.columns(3), *st.columns(3)]  # two rows: six cards in one row cut their labels short
    cards[0].metric("Visitors", values["Visitors"], delta=change if change.endswith("%") else None,
                    border=True, help=f"Unique visitors in the period (selected cameras); the arrow compares "
                                      f"with the {compare}. Change: {change}.")
    cards[1].metric(compare.capitalize(), values["Previous period"], border=True,
                    help=f"{previous_range.label()}. Change: {change}"
                         + (" (a selected camera has no data for part of it)." if change == views.NOT_COMPARABLE
                            else "."))
    if change == views.NOT_COMPARABLE:
        cards[0].caption("Change: not comparable (no data for part of the earlier span)")
    cards[2].metric("Busiest hour", values["Busiest hour"], border=True,
                    help="Start of the hour of day with the most visitors.")
    cards[3].metric("Median / hour", values["Median visitors per active hour"], border=True,
                    help="Median of the hourly counts over the open hours (FOOTFALL_OPENING_HOURS) with at "
                         "least one visitor.")
    female, male = values["Female share"], values["Male share"]
    gender_text = female if female.startswith("hidden") else f"{female.removesuffix(' %')} / {male}"
    cards[4].metric("Female / male", gender_text, border=True, help="Share of visitors by gender, percent.")
    cards[5].metric("Mean age", values["Mean age"], border=True, help="Average estimated age, years.")


PRINT_WIDTH_PX = 680  # fits the printable width of A4 portrait (794 px less margins); landscape has room to spare


def chart(fig, printable: bool, key: str) -> None:
    if printable:  # page_figures set the printable width
        st.plotly_chart(fig, config=charts.static_config(printable), key=key, width="content")
    else:
        st.plotly_chart(fig, config=charts.static_config(printable), key=key)


def side_by_side(printable: bool, spec, **kwargs) -> list:
    """Columns on screen; one below the other in the printable view (a page is too narrow for two charts)."""
    if printable:
        return [st.container() for _ in (spec if isinstance(spec, list) else range(spec))]
    return st.columns(spec, **kwargs)


def table(frame: pd.DataFrame, printable: bool, key: str) -> None:
    if printable:  # an HTML table wraps to the page; the interactive grid would be cut at the page edge
        st.table(charts.frame_for_table(frame).set_index(frame.columns[0]))
    else:
        st.dataframe(charts.frame_for_table(frame), hide_index=True, key=key)


def note(view: views.View, k: int) -> None:
    text = charts.hidden_note(view, k)
    if text:
        st.caption(text)


def render_views(shown: dict[str, views.View], figs: dict, settings: DashboardSettings, printable: bool,
                 previous_range: data.TimeRange, foot_range: data.TimeRange) -> None:
    k = max(1, settings.k_anonymity)
    headline_cards(shown["headline"], previous_range)
    foot = shown["footfall"]
    stack_label = STACK_LABELS[foot.dims[1]].lower()
    st.markdown(f"### Footfall over time · by {stack_label} · per {foot.resolution}")
    chart(figs["chart_footfall"], printable, "chart_footfall")
    note(foot, k)
    partial = data.partial_periods(foot.table["period"], foot.resolution, foot_range)
    if partial:
        st.caption(f"Partial {foot.resolution}s (only part of them lies in the period, so their bars are lower): "
                   + ", ".join(partial) + ".")
    left, right = side_by_side(printable, [3, 2], gap="large")
    with left:
        st.markdown("### Weekday × hour of day · mean visitors per day")
        chart(figs["chart_heatmap"], printable, "chart_heatmap")
        note(shown["heatmap"], k)
    with right:
        st.markdown("### Age and gender")
        chart(figs["chart_pyramid"], printable, "chart_pyramid")
        note(shown["pyramid"], k)
    if "emotion" in shown:
        left, right = side_by_side(printable, 2, gap="large")
        with left:
            st.markdown("### Emotion mix over time")
            chart(figs["chart_emotion"], printable, "chart_emotion")
            note(shown["emotion"], k)
        with right:
            st.markdown("### Valence over time")
            chart(figs["chart_valence"], printable, "chart_valence")
            note(shown["valence"], k)
    if "race" in shown:
        st.markdown("### Race")
        chart(figs["chart_race"], printable, "chart_race")
        note(shown["race"], k)
    if "sites" in shown:
        st.markdown("### Site comparison")
        table(shown["sites"].table, printable, "table_sites")
    st.markdown("### Camera comparison")
    table(shown["cameras"].table, printable, "table_cameras")
    flow.render(st, shown, figs, lambda fig, key: chart(fig, printable, key), lambda view: note(view, k))


def export_header(settings: DashboardSettings, rng: data.TimeRange, selection: list[str], cameras: list[str],
                  groups: dict[str, str]) -> dict[str, str]:
    """The CSV's header lines: what was selected, in which time zone, under which privacy threshold."""
    state = st.session_state
    return {
        "Footfall export": f"generated {now_local(settings):%Y-%m-%d %H:%M} ({settings.timezone})",
        "period": f"{rng.label()} (start included, end excluded; preset {state.get('f_preset', 'Last 7 days')})",
        "time zone": settings.timezone,
        "sites": ", ".join(state.get("f_sites") or []) or "all",
        "cameras": ", ".join(selection) + ("" if len(selection) < len(cameras) else " (all)"),
        "resolution": state.get("f_resolution", "hour"),
        "k-anonymity": f"k = {settings.k_anonymity}: values below k are empty with hidden = True",
    }


def render_analytics(settings: DashboardSettings, url: str, cameras: list[str], groups: dict[str, str],
                     printable: bool, version: tuple, skip: frozenset[str] = frozenset()) -> None:
    tz = settings.timezone
    try:
        rng = selected_range(settings)
    except ValueError as exc:
        st.warning(f"{exc}.")
        return
    selection = selected_cameras(cameras, groups, skip)
    left_out = sorted(skip & set(selected_cameras(cameras, groups)))
    if left_out:
        st.caption(f"Not added to the totals (marked not counting in FOOTFALL_SITES: they see visitors an "
                   f"entrance has counted already): {', '.join(left_out)}. Pick a camera by name to see it alone.")
    now = now_local(settings)
    engine = engine_for(url)
    if not data.has_counts(engine):
        st.info("The database holds no visitor counts yet. They appear here once the aggregator has counted "
                "the first visitors (start the pipeline, e.g. `footfall-local`).")
        st.session_state[EXPORT_KEY] = partial(views.export_frame, [], settings.k_anonymity)
        return
    present = cached_by_camera(url, rng.start, rng.end, tuple(selection), tz, version)
    if present.empty:
        span = data.data_span(engine, tz)
        hint = f" The database has counts from {span[0]:%Y-%m-%d %H:%M} to {span[1]:%Y-%m-%d %H:%M}." if span else ""
        st.info(f"No visitors counted in {rng.label()} for the selected cameras.{hint}")
        st.session_state[EXPORT_KEY] = partial(views.export_frame, [], settings.k_anonymity)
        return
    silent = [c for c in selection if c not in set(present.index)]
    if silent:
        st.info(f"No data in this period for camera{'s' if len(silent) > 1 else ''}: {', '.join(silent)}.")
    current, previous_range = data.comparison_ranges(rng, now, compare_mode())
    k = max(1, settings.k_anonymity)
    state = st.session_state
    filters = Filters(url, rng.start, rng.end, current.end, previous_range.start, previous_range.end,
                      tuple(selection), tuple(sorted(groups.items())), tz, k, state.get("f_resolution", "hour"),
                      state.get("f_stack", "camera_id"), compare_mode(), settings.opening_hours,
                      settings.enable_race, settings.enable_emotion, version)
    shown, notes = build_views(filters)
    for kind, text in notes:
        (st.warning if kind == "warning" else st.info)(text)
    st.session_state[EXPORT_KEY] = partial(page_export, filters)  # built on the click, not on every run
    if not printable:
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        left.caption(f"{rng.label()} · {len(selection)} of {len(cameras)} cameras · times in {tz}"
                     + (f" · live, updated {now:%H:%M:%S}" if st.session_state.get("f_live") else ""))
        header = export_header(settings, rng, selection, cameras, groups)
        # Deferred: the CSV is made only when a signed-in session clicks (nothing is stored before), and
        # its random export id makes the one-off /media/<hash>.csv URL unguessable (see the README).
        def csv_bytes() -> bytes:
            return views.export_csv(page_export(filters), {**header, "export id": secrets.token_hex(16)})

        right.download_button("Download CSV", csv_bytes,
                              file_name=f"footfall_{rng.start:%Y%m%d}_{rng.end:%Y%m%d}.csv", mime="text/csv",
                              on_click="ignore", key="download_csv")
    render_views(shown, page_figures(filters, tuple(cameras), printable), settings, printable, previous_range, rng)


# --------------------------------------------------------------------------- operator view


# The aggregator measures the lag of its consumer group on the one face stream that all cameras share:
# it cannot be split by camera, so each row carries the same number.
STREAM_LAG_HELP = ("one figure for the whole face stream, not per camera (the same value on every row): "
                   "crops the aggregator has not read yet, so not yet counted.")


def health_style(frame: pd.DataFrame):
    def row_style(row):
        bad = row["Status"] != "OK"
        return ["background-color: #FDE2E1; color: #8A1C1C" if bad else ""] * len(row)

    formats = {"Age (s)": "{:,.0f}", "Frames/s": "{:.1f}", "Faces/s": "{:.2f}", "Stream lag": "{:,}"}
    return frame.style.apply(row_style, axis=1).format(formats, na_rep="–")


def render_operator(settings: DashboardSettings, url: str, groups: dict[str, str]) -> None:
    now_utc = datetime.now(timezone.utc).replace(tzinfo=None)
    health = data.load_health(engine_for(url), now_utc, settings.timezone)
    if health.empty:
        st.info("No camera has reported its health yet (the ingest workers write it every few seconds).")
        return
    flagged = int((~health["ok"]).sum())
    cards = st.columns(4)
    cards[0].metric("Cameras", len(health), border=True)
    cards[1].metric("Healthy", int(health["ok"].sum()), border=True,
                    help=f"State live and a frame in the last {data.HEALTH_STALE_S:.0f} s (the Status column).")
    cards[2].metric("Need attention", flagged, border=True)
    cards[3].metric("Faces / s (all)", f"{health['faces_per_s'].sum():.1f}", border=True)
    table = pd.DataFrame({
        "Camera": health["camera_id"],
        "Site / zone": health["camera_id"].map(groups).fillna(""),
        "State": health["state"],
        # next to the camera: the column that matters is never the one cut off on a narrow screen
        "Status": ["OK" if ok else f"ALERT: {problem}" for ok, problem in zip(health["ok"], health["problem"],
                                                                                strict=True)],
        "Last frame": health["last_frame_at"].dt.strftime("%Y-%m-%d %H:%M:%S").fillna("never"),
        "Age (s)": health["last_frame_age_s"].round(0),
        "Frames/s": health["frames_per_s"].round(1),
        "Faces/s": health["faces_per_s"].round(2),
        "Stream lag": health["stream_lag"],
    })
    if not any(groups.values()):
        table = table.drop(columns="Site / zone")
    if flagged:
        st.error(f"{flagged} camera{'s need' if flagged > 1 else ' needs'} attention: "
                 + ", ".join(health.loc[~health["ok"], "camera_id"]) + ".")
    st.dataframe(health_style(table), hide_index=True, key="table_health",
                 column_config={"Stream lag": st.column_config.NumberColumn(help=STREAM_LAG_HELP),
                                "Status": st.column_config.TextColumn(width="large")})
    st.caption(f"Flagged red: state not `live`, or no frame for more than {data.HEALTH_STALE_S:.0f} s. "
               f"Stream lag: {STREAM_LAG_HELP}")


# --------------------------------------------------------------------------- page


def page_body(settings: DashboardSettings, url: str, cameras: list[str], groups: dict[str, str],
              skip: frozenset[str] = frozenset()) -> None:
    """Everything below the filters; rerun alone on the live-mode interval."""
    try:
        version = data.data_version(engine_for(url))  # once per run: the per-filter caches' key
        if st.session_state.get("f_print"):
            rng_text = ""
            try:
                rng_text = selected_range(settings).label()
            except ValueError:
                pass
            st.title("Footfall report")
            st.caption(f"{rng_text} · cameras: {', '.join(selected_cameras(cameras, groups, skip))} · times in "
                       f"{settings.timezone} · generated {now_local(settings):%Y-%m-%d %H:%M} · k = "
                       f"{settings.k_anonymity} (values below k shown as <{settings.k_anonymity})")
            freshness(settings, url, version)
            render_analytics(settings, url, cameras, groups, printable=True, version=version, skip=skip)
            return
        st.title("Footfall")
        st.caption("Visitor analytics from aggregated camera counts. No images or individual records are stored.")
        analytics, operator, about = st.tabs(["Analytics", "Cameras (operator)", "Help & privacy"])
        with analytics:
            freshness(settings, url, version)
            render_analytics(settings, url, cameras, groups, printable=False, version=version, skip=skip)
        with operator:
            freshness(settings, url, version)
            render_operator(settings, url, groups)
        with about:
            freshness(settings, url, version)
            st.markdown(HELP.format(tz=settings.timezone, policy=POLICY.format(k=settings.k_anonymity)))
    except data.DatabaseError as exc:
        st.error(str(exc))
    except Exception as exc:  # never show a stack trace to the analyst; the log has it
        LOG.exception("dashboard failed")
        st.error(f"Something went wrong while building the dashboard ({type(exc).__name__}: {exc}).")


def main() -> None:
    st.html(CSS)  # style only: st.html keeps a <style> block (st.markdown may drop it)
    settings = load_settings()
    user = require_login(settings)
    url = settings.database_url
    try:
        sites = data.parse_sites(settings.sites)
        skip = frozenset(data.not_counting(settings.sites))
    except ValueError as exc:
        st.error(f"{exc}.")
        sites, skip = {}, frozenset()
    try:
        cameras = data.list_cameras(engine_for(url))
    except data.DatabaseError as exc:
        st.title("Footfall")
        st.error(str(exc))
        return
    cameras = sorted(set(cameras) | {c for cams in sites.values() for c in cams})
    groups = data.camera_groups(cameras, sites)
    filters_from_url(cameras, groups)
    sidebar(settings, cameras, sites, groups, user)
    filters_to_url()
    live = bool(st.session_state.get("f_live")) and not st.session_state.get("f_print")
    body = st.fragment(page_body, run_every=max(1, settings.refresh_s) if live else None)
    body(settings, url, cameras, groups, skip)


main()
