"""Read-only access to the aggregate database and the pure pandas logic behind every figure.

Everything here is a plain function of its arguments (no Streamlit), so tests call it directly.
Times: the database stores UTC-naive bucket starts; the dashboard works in local naive times of
the configured time zone (``FOOTFALL_TIMEZONE``, default UTC). Ranges are half-open ``[start, end)``.

Example (an in-memory frame shaped like ``load_counts`` output):
    >>> counts = pd.DataFrame({"camera_id": ["a", "a", "b"],
    ...     "time": pd.to_datetime(["2024-05-06 09:00", "2024-05-06 09:30", "2024-05-07 14:00"]),
    ...     "age_band": ["25-34", "35-44", "25-34"], "gender": ["male", "female", "female"],
    ...     "visitors": [10, 6, 4], "age_sum": [300.0, 240.0, 120.0]})
    >>> rng = TimeRange(datetime(2024, 5, 6), datetime(2024, 5, 8))
    >>> over_time(counts, rng, "day", "camera_id", ["a", "b"]).visitors.tolist()
    [16, 0, 0, 4]
    >>> h = headline(counts, counts, current_visitors=20, previous_total=10)
    >>> h.visitors, h.change_pct, h.busiest_hour, h.mean_age
    (20, 100.0, 9, 33.0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from footfall.db.models import GRAINS, ROLLUPS, CameraHealth, VisitorCount, cell_keys, cell_sums, rollups_of
from footfall.db.store import floor_time
from footfall.labels import AGE_BANDS, EMOTIONS, GENDERS, RACES, VALENCE

RESOLUTIONS = ("minute", "hour", "day", "week")
# What "change" compares with; the shift of the comparison span (None: as long as the range, just before)
COMPARISONS = {"previous period": None, "same weekdays last week": timedelta(days=7),
               "same period last year": timedelta(days=364)}  # 52 weeks: the same weekdays
PRESETS = ("Today", "Last 7 days", "Last 30 days", "Custom")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
NOT_RECORDED_LABEL = "not recorded"  # shown for "" (attribute off when the visit was counted)
VALENCES = ("positive", "neutral", "negative")
HEALTH_STALE_S = 60.0  # a camera whose last frame is older than this is flagged
MAX_PERIODS = 4_320  # three days of minutes: finer series are drawn at the next coarser resolution (payload)
MAX_POINTS = 20_000  # periods x series of one time chart (payload): 50 cameras per hour reach it at 16 days
_FREQ = {"minute": "min", "hour": "h", "day": "D"}


class DatabaseError(RuntimeError):
    """A database problem worded for the dashboard's user (no stack trace)."""


# --------------------------------------------------------------------------- time ranges


@dataclass(frozen=True)
class TimeRange:
    """Half-open local-time range ``[start, end)``."""

    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def shifted(self, delta: timedelta) -> TimeRange:
        return TimeRange(self.start + delta, self.end + delta)

    def label(self) -> str:
        """Human-readable range.

        >>> TimeRange(datetime(2024, 5, 1), datetime(2024, 5, 8)).label()
        '2024-05-01 – 2024-05-07'
        """
        last = self.end - timedelta(microseconds=1)
        if self.start.time() == datetime.min.time() and self.end.time() == datetime.min.time():
            if last.date() == self.start.date():
                return f"{self.start:%Y-%m-%d}"
            return f"{self.start:%Y-%m-%d} – {last:%Y-%m-%d}"
        return f"{self.start:%Y-%m-%d %H:%M} – {self.end:%Y-%m-%d %H:%M}"


def local_now(tz: str) -> datetime:
    """Current local wall-clock time (naive) in ``tz``."""
    zone = timezone.utc if tz == "UTC" else ZoneInfo(tz)  # UTC needs no tz database (slim images)
    return datetime.now(zone).replace(tzinfo=None, microsecond=0)


def preset_range(preset: str, now: datetime, custom: tuple[datetime, datetime] | None = None) -> TimeRange:
    """The range a preset names; day presets are whole calendar days ending with today.

    >>> preset_range("Last 7 days", datetime(2024, 5, 8, 15, 30)).label()
    '2024-05-02 – 2024-05-08'
    """
    midnight = datetime.combine(now.date(), datetime.min.time())
    tomorrow = midnight + timedelta(days=1)
    if preset == "Today":
        return TimeRange(midnight, tomorrow)
    if preset == "Last 7 days":
        return TimeRange(tomorrow - timedelta(days=7), tomorrow)
    if preset == "Last 30 days":
        return TimeRange(tomorrow - timedelta(days=30), tomorrow)
    if preset == "Custom":
        if custom is None or custom[1] <= custom[0]:
            raise ValueError("the custom range must end after it starts")
        return TimeRange(*custom)
    raise ValueError(f"unknown preset {preset!r}")


def comparison_ranges(rng: TimeRange, now: datetime, compare: str = "previous period") -> tuple[TimeRange, TimeRange]:
    """(current, earlier): like-for-like spans for "change vs ...".

    ``compare`` names the earlier span (``COMPARISONS``): the previous period (the same length
    immediately before), the same weekdays a week earlier, or 52 weeks earlier (same weekdays last
    year). When the range is still running (it contains ``now``), both spans stop at the same
    point: today until now vs the other day until the same time.

    >>> cur, prev = comparison_ranges(TimeRange(datetime(2024, 5, 8), datetime(2024, 5, 9)),
    ...                               datetime(2024, 5, 8, 12))
    >>> cur.end, prev.start, prev.end
    (datetime.datetime(2024, 5, 8, 12, 0), datetime.datetime(2024, 5, 7, 0, 0), datetime.datetime(2024, 5, 7, 12, 0))
    >>> comparison_ranges(TimeRange(datetime(2024, 5, 8), datetime(2024, 5, 9)), datetime(2024, 6, 1),
    ...                   "same period last year")[1].label()
    '2023-05-10'
    """
    if compare not in COMPARISONS:
        raise ValueError(f"unknown comparison {compare!r}")
    cut = now if rng.start < now < rng.end else rng.end
    current = TimeRange(rng.start, cut)
    return current, current.shifted(-(COMPARISONS[compare] or rng.length))


def to_utc(local: datetime, tz: str) -> datetime:
    """Local naive time in ``tz`` -> UTC naive (the database's convention).

    >>> to_utc(datetime(2024, 7, 1, 12), "Europe/Berlin")
    datetime.datetime(2024, 7, 1, 10, 0)
    """
    if tz == "UTC":
        return local
    stamp = pd.Timestamp(local).tz_localize(tz, ambiguous=False, nonexistent="shift_forward")
    return stamp.tz_convert("UTC").tz_localize(None).to_pydatetime()


def _to_local(utc: pd.Series, tz: str) -> pd.Series:
    times = pd.to_datetime(utc)
    if tz == "UTC" or times.empty:
        return times
    return times.dt.tz_localize("UTC").dt.tz_convert(tz).dt.tz_localize(None)


# --------------------------------------------------------------------------- cameras and sites


NOT_COUNTING_MARK = "~"  # in FOOTFALL_SITES: a camera that sees visitors already counted at an entrance


def _site_entries(spec: str):
    """(group, camera, counting) for every camera of ``FOOTFALL_SITES``."""
    for part in spec.split(";"):
        if not part.strip():
            continue
        name, sep, cams = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"FOOTFALL_SITES entry {part.strip()!r} is not `site/zone=cam1,cam2`")
        for cam in (c.strip() for c in cams.split(",")):
            counting = not cam.startswith(NOT_COUNTING_MARK)
            cam = cam.removeprefix(NOT_COUNTING_MARK).strip()
            if cam:
                yield name.strip(), cam, counting


def parse_sites(spec: str) -> dict[str, tuple[str, ...]]:
    """``FOOTFALL_SITES`` (``site/zone=cam1,cam2;site2=cam3``) -> {group: cameras}.

    A camera written ``~cam`` belongs to its group but is not counted in totals (see ``not_counting``).

    >>> parse_sites("Berlin/Entrance=cam1, cam2; Berlin/Floor 1=~cam4; Hamburg=cam3")
    {'Berlin/Entrance': ('cam1', 'cam2'), 'Berlin/Floor 1': ('cam4',), 'Hamburg': ('cam3',)}
    """
    groups: dict[str, tuple[str, ...]] = {}
    for part in spec.split(";"):  # every group, even one listing no camera
        name = part.partition("=")[0].strip()
        if part.strip() and name:
            groups.setdefault(name, ())
    for group, cam, _ in _site_entries(spec):
        groups[group] += (cam,)
    return groups


def not_counting(spec: str) -> set[str]:
    """Cameras marked ``~`` in ``FOOTFALL_SITES``: they see visitors an entrance camera of the same site
    has counted already (an escalator, a floor), so site and headline totals leave them out.

    >>> not_counting("Berlin/Entrance=cam1;Berlin/Floor 1=~cam4")
    {'cam4'}
    """
    return {cam for _, cam, counting in _site_entries(spec) if not counting}


def site_of(group: str) -> str:
    """The site of a ``site/zone`` group.

    >>> site_of("Berlin/Floor 1"), site_of("Hamburg")
    ('Berlin', 'Hamburg')
    """
    return group.split("/", 1)[0].strip()


def camera_groups(cameras: list[str], sites: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """{camera: its site/zone} for every camera; unlisted cameras go to "Other" ("" without sites).

    >>> camera_groups(["cam1", "cam9"], {"Berlin": ("cam1",)})
    {'cam1': 'Berlin', 'cam9': 'Other'}
    """
    owner = {cam: group for group, cams in sites.items() for cam in cams}
    fallback = "Other" if sites else ""
    return {cam: owner.get(cam, fallback) for cam in cameras}


# --------------------------------------------------------------------------- database access


def _describe(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def open_engine(database_url: str) -> Engine:
    """A read-only engine: SQLite connections are ``query_only``, PostgreSQL sessions READ ONLY.

    Raises ``DatabaseError`` for a malformed URL, an unknown driver or a missing SQLite file
    (SQLite would otherwise silently create an empty one).
    """
    try:
        url = make_url(database_url)
        backend = url.get_backend_name()
    except ArgumentError as exc:
        raise DatabaseError(f"FOOTFALL_DATABASE_URL is not a database URL ({exc}).") from None
    if backend == "sqlite":
        path = url.database or ""
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).is_file():
            raise DatabaseError(f"The database file {path} does not exist. Check FOOTFALL_DATABASE_URL, "
                                "or create it with `footfall-migrate`.")
    connect_args = {"connect_timeout": 5} if backend == "postgresql" else {}
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"Cannot use the database URL {_describe(url)}: {exc}") from None

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection, _record) -> None:  # the dashboard never writes
        cursor = dbapi_connection.cursor()
        if backend == "sqlite":
            cursor.execute("PRAGMA query_only = ON")
        elif backend == "postgresql":
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()
        if backend == "postgresql":
            dbapi_connection.commit()  # a SET inside a rolled-back transaction would be undone

    return engine


def _database_error(engine: Engine, exc: SQLAlchemyError) -> DatabaseError:
    message = str(getattr(exc, "orig", None) or exc).strip()
    text = message.splitlines()[0] if message else type(exc).__name__
    if re.search(r"no such table|relation \S+ does not exist", text, re.IGNORECASE):
        return DatabaseError(f"The database at {_describe(engine.url)} has no Footfall tables yet: "
                             "run `footfall-migrate` (or start the aggregator).")
    return DatabaseError(f"Cannot read the database at {_describe(engine.url)}: {text}")


def _query(engine: Engine, statement) -> list[sa.Row]:
    try:
        with engine.connect() as conn:
            return conn.execute(statement).fetchall()  # one fetch: iterating fetches row by row
    except SQLAlchemyError as exc:
        raise _database_error(engine, exc) from None


_COUNTS = VisitorCount.__table__
_HEALTH = CameraHealth.__table__


def has_counts(engine: Engine) -> bool:
    """True when ``visitor_counts`` holds at least one row."""
    return bool(_query(engine, sa.select(_COUNTS.c.camera_id).limit(1)))


def data_span(engine: Engine, tz: str = "UTC") -> tuple[datetime, datetime] | None:
    """(first, last) local bucket start in the database, or None when it is empty."""
    # two scalar subqueries: each is one index seek (SQLite scans every row for min and max in one SELECT)
    rows = _query(engine, sa.select(sa.select(sa.func.min(_COUNTS.c.bucket_start)).scalar_subquery(),
                                    sa.select(sa.func.max(_COUNTS.c.bucket_start)).scalar_subquery()))
    if not rows or rows[0][0] is None:
        return None
    local = _to_local(pd.Series(list(rows[0])), tz)
    return local.iloc[0].to_pydatetime(), local.iloc[1].to_pydatetime()


def _counted_cameras(engine: Engine) -> list[str]:
    """The camera ids in ``visitor_counts``: a loose index scan (one primary-key seek per camera, SQLite
    and PostgreSQL alike) instead of reading every row for DISTINCT."""
    seek = sa.text("""
        WITH RECURSIVE cams(camera_id) AS (
            SELECT MIN(camera_id) FROM visitor_counts
            UNION ALL
            SELECT (SELECT MIN(v.camera_id) FROM visitor_counts v WHERE v.camera_id > cams.camera_id)
            FROM cams WHERE cams.camera_id IS NOT NULL)
        SELECT camera_id FROM cams WHERE camera_id IS NOT NULL""")
    return [r[0] for r in _query(engine, seek)]


def first_counts(engine: Engine, cameras: list[str] | None = None, tz: str = "UTC") -> dict[str, datetime]:
    """{camera: local start of its first counted bucket}: before it a camera has no data, not zero visitors.

    One primary-key seek per camera (MIN of bucket_start where camera_id = ..., alone in its subquery: SQLite
    seeks only a bare MIN), not a scan of every cell."""
    cameras = _counted_cameras(engine) if cameras is None else list(cameras)
    if not cameras:
        return {}
    seeks = [sa.select(sa.literal(cam, sa.String).label("camera_id"),
                       sa.select(sa.func.min(_COUNTS.c.bucket_start)).where(_COUNTS.c.camera_id == cam)
                       .scalar_subquery().label("first")) for cam in cameras]
    rows = [r for r in _query(engine, seeks[0] if len(seeks) == 1 else sa.union_all(*seeks)) if r[1] is not None]
    if not rows:
        return {}
    local = _to_local(pd.Series([r[1] for r in rows]), tz)
    return {r[0]: t.to_pydatetime() for r, t in zip(rows, local, strict=True)}


def list_cameras(engine: Engine) -> list[str]:
    """Every camera id that has counts or a health record, sorted."""
    with_health = _query(engine, sa.select(_HEALTH.c.camera_id))
    return sorted(set(_counted_cameras(engine)) | {r[0] for r in with_health})


def data_version(engine: Engine) -> tuple:
    """A cheap stamp that changes when visitors are counted: the last bucket, and the visitors of its UTC
    day and the day before (index range reads on the daily rollup). Per-filter caches are keyed on it, so
    live mode reads new counts (also those counted a little late, into an earlier bucket) while an
    unchanged database is served from the cache; counts that arrive more than a day late show once the
    caches expire (10 minutes)."""
    daily = ROLLUPS[VisitorCount]["day"].__table__
    last = _query(engine, sa.select(sa.func.max(_COUNTS.c.bucket_start)))[0][0]
    if last is None:
        return (None, 0)
    since = pd.Timestamp(last).floor("D").to_pydatetime() - timedelta(days=1)
    recent = _query(engine, sa.select(sa.func.sum(daily.c.visitors)).where(daily.c.bucket_start >= since))[0][0]
    return (str(last), int(recent or 0))


# --------------------------------------------------------------------------- reading through the rollups


def rollup_grains(rng: TimeRange, tz: str) -> tuple[str, ...]:
    """Rollup grains whose UTC buckets fall whole into the local periods of ``rng``, coarsest first: hours
    where the zone's offset is whole hours over the range, days only in UTC.

    >>> rollup_grains(TimeRange(datetime(2024, 5, 1), datetime(2024, 6, 1)), "UTC")
    ('day', 'hour')
    >>> rollup_grains(TimeRange(datetime(2024, 5, 1), datetime(2024, 6, 1)), "Asia/Kolkata")
    ()
    """
    if tz == "UTC":
        return ("day", "hour")
    days = pd.date_range(rng.start.date(), rng.end.date() + timedelta(days=1), freq="D")
    offsets = days.tz_localize(tz, ambiguous=False, nonexistent="shift_forward").map(lambda t: t.utcoffset())
    whole_hours = all(o.total_seconds() % 3600 == 0 for o in offsets)
    return ("hour",) if whole_hours else ()


def _ceil(when: datetime, grain: str) -> datetime:
    floor = floor_time(when, grain)
    return floor if floor == when else floor + GRAINS[grain]


def _pieces(start: datetime, end: datetime, grains: tuple[str, ...]) -> list[tuple[str | None, datetime, datetime]]:
    if start >= end:
        return []
    for i, grain in enumerate(grains):
        first, last = _ceil(start, grain), floor_time(end, grain)
        if first < last:
            finer = grains[i + 1:]
            return [*_pieces(start, first, finer), (grain, first, last), *_pieces(last, end, finer)]
    return [(None, start, end)]


def plan_reads(start: datetime, end: datetime, grains: tuple[str, ...],
               cuts: tuple[datetime, ...] = ()) -> list[tuple[str | None, datetime, datetime]]:
    """How to read the UTC range ``[start, end)``: (grain, from, to) pieces, the coarsest rollup of
    ``grains`` (coarsest first) that fits whole buckets in, fine cells (``None``) at the ragged edges.
    A ``cut`` (e.g. "now", where the comparable span stops) is never inside a rollup bucket.

    >>> [(g, f"{a:%d %H:%M}", f"{b:%d %H:%M}") for g, a, b in plan_reads(
    ...     datetime(2024, 5, 1, 22, 30), datetime(2024, 5, 4, 15, 30), ("day", "hour"))]
    ... # doctest: +NORMALIZE_WHITESPACE
    [(None, '01 22:30', '01 23:00'), ('hour', '01 23:00', '02 00:00'), ('day', '02 00:00', '04 00:00'),
     ('hour', '04 00:00', '04 15:00'), (None, '04 15:00', '04 15:30')]
    """
    bounds = sorted({start, end, *(c for c in cuts if start < c < end)})
    plan: list[tuple[str | None, datetime, datetime]] = []
    for a, b in zip(bounds, bounds[1:]):
        for piece in _pieces(a, b, grains):
            if plan and plan[-1][0] == piece[0] and plan[-1][2] == piece[1]:
                plan[-1] = (piece[0], plan[-1][1], piece[2])  # adjacent pieces of one table: one read
            else:
                plan.append(piece)
    return plan


def coarsest_grain(resolution: str) -> str:
    """The coarsest stored grain a chart at ``resolution`` can be drawn from (UTC days make local days only
    in UTC; ``rollup_grains`` checks that)."""
    return {"minute": "minute", "hour": "hour"}.get(resolution, "day")


def _table_for(model, grain: str | None, columns: list[str]) -> sa.Table:
    """The table a piece of ``grain`` is read from: the fine cells, or the narrowest rollup of that grain that
    has ``columns`` (a narrow one has fewer rows: the other dimensions summed away)."""
    if grain is None:
        return model.__table__
    fits = [r for g, r in rollups_of(model) if g == grain and set(columns) <= set(cell_keys(r))]
    return min(fits, key=lambda r: len(cell_keys(r))).__table__


def _piece_selects(model, dims: list[str], plan, cameras: list[str] | None, time_keys, constants=()) -> list:
    """One grouped SELECT per planned piece: sums of ``model``'s summed columns per ``dims`` and the columns
    ``time_keys(table)`` returns (the bucket, an hour of day, ...), after the ``constants`` (not grouped:
    SQLite reads a number in GROUP BY as a column's position)."""
    selects = []
    for piece in plan:
        table = _table_for(model, piece[0], ["camera_id", *dims])
        keys = [table.c[d] for d in dims] + time_keys(table)
        statement = (sa.select(*keys, *constants, *(sa.func.sum(table.c[c]).label(c) for c in cell_sums(model)))
                     .where(table.c.bucket_start >= piece[1], table.c.bucket_start < piece[2]).group_by(*keys))
        if cameras is not None:
            statement = statement.where(table.c.camera_id.in_(list(cameras)))
        selects.append(statement)
    return selects


def _sum_frame(engine: Engine, model, selects: list, names: list[str]) -> pd.DataFrame:
    """The rows of ``selects`` (one statement: UNION ALL) as a frame, the summed columns typed."""
    rows = _query(engine, selects[0] if len(selects) == 1 else sa.union_all(*selects)) if selects else []
    frame = pd.DataFrame([tuple(r) for r in rows], columns=names + list(cell_sums(model)))
    for column in cell_sums(model):
        kind = "float64" if isinstance(model.__table__.c[column].type, sa.Float) else "int64"
        frame[column] = frame[column].fillna(0).astype(kind)
    return frame


def read_cells(engine: Engine, model, dims: list[str], rng: TimeRange, cameras: list[str] | None = None, *,
               tz: str = "UTC", grain: str = "minute", by_time: bool = True,
               cuts: tuple[datetime, ...] = ()) -> pd.DataFrame:
    """Sums of ``model``'s counts (all its summed columns) per ``dims`` (and bucket: column ``time``, local)
    in ``rng`` for ``cameras`` (None: all), read from the coarsest table no coarser than ``grain``
    ("minute", "hour", "day") that fits: ``plan_reads`` over the model's rollups, the narrowest rollup
    holding ``dims`` (``_table_for``); the database groups, one statement (UNION ALL of the pieces).
    ``cuts`` (local) are times the caller splits at."""
    allowed = tuple(g for g in rollup_grains(rng, tz) if GRAINS[g] <= GRAINS.get(grain, timedelta(0)))
    start, end = to_utc(rng.start, tz), to_utc(rng.end, tz)
    plan = plan_reads(start, end, allowed, tuple(to_utc(c, tz) for c in cuts))
    selects = _piece_selects(model, dims, plan, cameras, lambda table: [table.c.bucket_start] if by_time else [])
    frame = _sum_frame(engine, model, selects, dims + (["bucket_start"] if by_time else []))
    if by_time:
        frame.insert(len(dims), "time", _to_local(frame.pop("bucket_start"), tz).astype("datetime64[us]"))
    return frame


def offset_spans(start: datetime, end: datetime, tz: str) -> list[tuple[datetime, datetime, int]]:
    """The UTC range ``[start, end)`` cut where ``tz``'s offset from UTC changes: (from, to, offset in minutes).

    >>> [(f"{a:%m-%d %H:%M}", f"{b:%m-%d %H:%M}", o) for a, b, o in offset_spans(
    ...     datetime(2024, 3, 30), datetime(2024, 4, 2), "Europe/Berlin")]
    [('03-30 00:00', '03-31 01:00', 60), ('03-31 01:00', '04-02 00:00', 120)]
    """
    if tz == "UTC" or start >= end:
        return [(start, end, 0)] if start < end else []

    def offsets(times: pd.DatetimeIndex) -> np.ndarray:  # minutes ahead of UTC at each (naive UTC) time
        local = times.tz_localize("UTC").tz_convert(tz).tz_localize(None)
        return ((local - times) // pd.Timedelta(minutes=1)).to_numpy()

    hours = pd.date_range(pd.Timestamp(start).floor("h"), end, freq="h")
    per_hour = offsets(hours)
    bounds = [start]
    for i in np.flatnonzero(per_hour[1:] != per_hour[:-1]) + 1:  # a change within hour i-1: find its minute
        minutes = pd.date_range(hours[i - 1], hours[i], freq="min")
        change = minutes[int(np.argmax(offsets(minutes) != per_hour[i - 1]))].to_pydatetime()
        if start < change < end:
            bounds.append(change)
    bounds.append(end)
    return [(a, b, int(offsets(pd.DatetimeIndex([a]))[0])) for a, b in zip(bounds, bounds[1:])]


def _utc_time_of_day(column, width: int, dialect: str):
    """SQL for the UTC hour ("HH", width 2) or hour and minute ("HH:MM", width 5) of ``column`` (constants
    inline: GROUP BY repeats the expression)."""
    if dialect == "postgresql":
        return sa.func.to_char(column, sa.literal_column("'HH24:MI'" if width == 5 else "'HH24'"), type_=sa.String)
    return sa.func.substr(column, sa.literal_column("12"), sa.literal_column(str(width)), type_=sa.String)


def hours_of_day(engine: Engine, rng: TimeRange, cameras: list[str] | None = None, *, tz: str = "UTC",
                 dims: tuple[str, ...] = ("camera_id",)) -> pd.DataFrame:
    """Visitors per ``dims`` and local hour of day (``hour``, 0..23) in ``rng``, summed in the database:
    per span of one UTC offset (``offset_spans``) the rows are grouped by their UTC hour (by hour and
    minute where the zone's offset is not whole hours), then shifted by the offset. A year of 50 cameras
    returns 1,200 rows, not the 300,000 camera-hours of the time line."""
    whole_hours = bool(rollup_grains(rng, tz))  # offsets whole hours: hourly rollups and the UTC hour serve
    width = 2 if whole_hours else 5
    start, end = to_utc(rng.start, tz), to_utc(rng.end, tz)
    spans = offset_spans(start, end, tz)
    selects = []
    for a, b, offset in spans:
        plan = plan_reads(a, b, ("hour",) if whole_hours else ())
        selects += _piece_selects(VisitorCount, list(dims), plan, cameras, lambda table: [
            _utc_time_of_day(table.c.bucket_start, width, engine.dialect.name).label("utc_time")],
            [sa.literal_column(str(offset), sa.Integer).label("offset")])
    frame = _sum_frame(engine, VisitorCount, selects, [*dims, "utc_time", "offset"])
    minutes = frame["utc_time"].str[:2].astype("int64") * 60 + (
        frame["utc_time"].str[3:5].astype("int64") if width == 5 else 0)
    frame["hour"] = ((minutes + frame["offset"]) % (24 * 60)) // 60
    summed = frame.groupby([*dims, "hour"], as_index=False)[list(cell_sums(VisitorCount))].sum()
    return summed.astype({"hour": "int64"})


def load_counts(engine: Engine, rng: TimeRange, cameras: list[str] | None = None, *, tz: str = "UTC",
                include_race: bool = False, include_emotion: bool = True, dims: list[str] | None = None,
                grain: str = "minute", by_time: bool = True, cuts: tuple[datetime, ...] = ()) -> pd.DataFrame:
    """Visitor counts in ``rng`` (local times) for ``cameras`` (None: all).

    Columns: camera_id, time (local bucket start), age_band, gender, [race], [emotion], visitors,
    age_sum. A switched-off attribute is not even selected: the database sums it away. ``dims``
    picks other dimensions (the database sums the rest away); ``grain`` lets the rows be hourly or
    daily sums (from the rollups), ``by_time`` False sums over time (see ``read_cells``).
    """
    if dims is None:
        dims = ["camera_id", "age_band", "gender"] + (["race"] if include_race else []) + \
            (["emotion"] if include_emotion else [])
    frame = read_cells(engine, VisitorCount, list(dims), rng, cameras, tz=tz, grain=grain, by_time=by_time,
                       cuts=cuts)
    if "camera_id" in frame and by_time:  # the documented column order: camera_id, time, ...
        frame.insert(1, "time", frame.pop("time"))
    for column in ("race", "emotion"):
        if column in frame:
            frame[column] = frame[column].replace("", NOT_RECORDED_LABEL)
    order = [c for c in ("time", "camera_id") if c in frame]
    return frame.sort_values(order, ignore_index=True) if order else frame


def visitors_by_camera(engine: Engine, rng: TimeRange, cameras: list[str] | None = None,
                       tz: str = "UTC") -> pd.Series:
    """Total visitors per camera in ``rng`` (used for the previous period)."""
    frame = read_cells(engine, VisitorCount, ["camera_id"], rng, cameras, tz=tz, grain="day", by_time=False)
    summed = frame.groupby("camera_id")["visitors"].sum()
    return pd.Series({c: int(v) for c, v in summed.items()}, dtype="int64", name="visitors")


def load_health(engine: Engine, now_utc: datetime, tz: str = "UTC",
                stale_after_s: float = HEALTH_STALE_S) -> pd.DataFrame:
    """Operator view: one row per camera with the age of its last frame and an ``ok`` flag.

    A camera is flagged (``ok`` False, ``problem`` says why) when its state is not ``live`` or
    its last frame is older than ``stale_after_s`` seconds.
    """
    columns = ["camera_id", "state", "last_frame_at", "frames_per_s", "faces_per_s", "stream_lag", "updated_at"]
    frame = pd.DataFrame([tuple(r) for r in _query(engine, sa.select(*(_HEALTH.c[c] for c in columns)))],
                         columns=columns)
    last = pd.to_datetime(frame["last_frame_at"])
    frame["last_frame_age_s"] = (pd.Timestamp(now_utc) - last).dt.total_seconds()
    stale = frame["last_frame_age_s"].isna() | (frame["last_frame_age_s"] > stale_after_s)
    not_live = frame["state"] != "live"
    frame["ok"] = ~(stale | not_live)
    frame["problem"] = [
        "; ".join(p for p in (f"state {s}" if nl else "",
                              ("no frame yet" if pd.isna(age) else f"last frame {age:.0f} s ago") if st else "") if p)
        for s, nl, st, age in zip(frame["state"], not_live, stale, frame["last_frame_age_s"], strict=True)]
    frame["last_frame_at"] = _to_local(last, tz)
    frame["updated_at"] = _to_local(pd.to_datetime(frame["updated_at"]), tz)
    return frame.sort_values("camera_id", ignore_index=True)


# --------------------------------------------------------------------------- pure aggregations


def period_start(times: pd.Series, resolution: str) -> pd.Series:
    """Start of the minute / hour / day / week (Monday) each time falls in."""
    if resolution == "week":
        return times.dt.to_period("W-SUN").dt.start_time.astype(times.dtype)
    return times.dt.floor(_FREQ[resolution])


def periods(rng: TimeRange, resolution: str) -> pd.DatetimeIndex:
    """Every period start overlapping ``rng``.

    >>> list(periods(TimeRange(datetime(2024, 5, 8), datetime(2024, 5, 14)), "week").strftime("%m-%d"))
    ['05-06', '05-13']
    """
    first = period_start(pd.Series([pd.Timestamp(rng.start)]).astype("datetime64[us]"), resolution).iloc[0]
    freq = "7D" if resolution == "week" else _FREQ[resolution]
    index = pd.date_range(first, pd.Timestamp(rng.end) - pd.Timedelta(microseconds=1), freq=freq)
    return index.astype("datetime64[us]")


def partial_periods(period_starts: pd.Series, resolution: str, rng: TimeRange) -> list[str]:
    """Days and weeks (as "2024-04-29 (4 of 7 days)") that the range covers only in part.

    >>> partial_periods(pd.Series(pd.to_datetime(["2024-04-29", "2024-05-06"])), "week",
    ...                 TimeRange(datetime(2024, 5, 2), datetime(2024, 5, 9)))
    ['week of 2024-04-29 (4 of 7 days)', 'week of 2024-05-06 (3 of 7 days)']
    """
    if resolution not in ("day", "week"):
        return []
    span = timedelta(days=7 if resolution == "week" else 1)
    out = []
    for start in sorted(set(pd.to_datetime(period_starts))):
        start = start.to_pydatetime()
        covered = min(start + span, rng.end) - max(start, rng.start)
        if covered < span:
            out.append(f"week of {start:%Y-%m-%d} ({covered.days} of 7 days)" if resolution == "week"
                       else f"{start:%Y-%m-%d} ({covered.total_seconds() / 3600:.0f} of 24 h)")
    return out


def coarsest_needed(rng: TimeRange, resolution: str, max_periods: int = MAX_PERIODS, series: int = 1,
                    max_points: int = MAX_POINTS) -> str:
    """``resolution``, or the next coarser one when the range would have more than ``max_periods``,
    or more than ``max_points`` periods x ``series`` (stacked series of the chart: the payload).

    >>> coarsest_needed(TimeRange(datetime(2024, 4, 1), datetime(2024, 5, 1)), "minute")
    'hour'
    >>> coarsest_needed(TimeRange(datetime(2024, 4, 1), datetime(2024, 5, 1)), "hour", series=51)
    'day'
    """
    seconds = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
    for candidate in RESOLUTIONS[RESOLUTIONS.index(resolution):]:
        count = rng.length.total_seconds() / seconds[candidate]
        if count <= max_periods and count * max(1, series) <= max_points:
            return candidate
    return RESOLUTIONS[-1]


def categories(counts: pd.DataFrame, column: str, selected: list[str] | None = None) -> list[str]:
    """Category order of a dimension: the label vocabulary first, then "not recorded"."""
    if column == "camera_id":
        return list(selected) if selected is not None else sorted(counts["camera_id"].unique())
    vocabulary = {"gender": GENDERS, "age_band": tuple(b[0] for b in AGE_BANDS), "emotion": EMOTIONS,
                  "race": RACES, "valence": VALENCES}[column]
    present = set(counts[column].unique()) if column in counts else set()
    extra = sorted(present - set(vocabulary))
    return list(vocabulary) + extra


def with_valence(counts: pd.DataFrame) -> pd.DataFrame:
    """Counts with a ``valence`` column (labels.VALENCE of the emotion)."""
    out = counts.copy()
    out["valence"] = out["emotion"].map(VALENCE).fillna(NOT_RECORDED_LABEL)
    return out


def over_time(counts: pd.DataFrame, rng: TimeRange, resolution: str, by: str,
              selected: list[str] | None = None) -> pd.DataFrame:
    """Visitors per period and ``by`` category, zeros filled: columns period, <by>, visitors."""
    if by == "valence" and "valence" not in counts:
        counts = with_valence(counts)
    grid = pd.MultiIndex.from_product([periods(rng, resolution), categories(counts, by, selected)],
                                      names=["period", by])
    summed = counts.groupby([period_start(counts["time"], resolution).rename("period"), by])["visitors"].sum()
    table = summed.reindex(grid, fill_value=0).astype("int64").reset_index()
    return table


def open_hours(spec: str) -> frozenset[int] | None:
    """Hours of day (0..23) that overlap ``FOOTFALL_OPENING_HOURS`` (``HH:MM-HH:MM``); None: always open.

    >>> sorted(open_hours("08:30-11:00")), open_hours("")
    ([8, 9, 10], None)
    """
    if not spec.strip():
        return None
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", spec)
    if not match:
        raise ValueError(f"FOOTFALL_OPENING_HOURS {spec!r} is not `HH:MM-HH:MM` (e.g. 09:00-20:00)")
    start_h, start_m, end_h, end_m = (int(g) for g in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if not (0 <= start < end <= 24 * 60 and start_m < 60 and end_m < 60):
        raise ValueError(f"FOOTFALL_OPENING_HOURS {spec!r} must open before it closes, within one day")
    return frozenset(h for h in range(24) if h * 60 < end and (h + 1) * 60 > start)


def weekday_days(rng: TimeRange) -> list[int]:
    """How many days of each weekday (Monday first) the range touches.

    >>> weekday_days(TimeRange(datetime(2024, 4, 9), datetime(2024, 5, 9)))  # 30 days from a Tuesday
    [4, 5, 5, 4, 4, 4, 4]
    """
    days = pd.date_range(rng.start.date(), (rng.end - timedelta(microseconds=1)).date(), freq="D")
    return [int((days.day_of_week == d).sum()) for d in range(7)]


def hour_weekday(counts: pd.DataFrame, rng: TimeRange, opening: frozenset[int] | None = None) -> pd.DataFrame:
    """Visitors per weekday (0 = Monday) and hour of day, all 7 x 24 cells: the sum ``visitors``, the
    ``days`` of that weekday in ``rng`` and ``mean``, visitors per day (a range with five Wednesdays
    and four Thursdays must not make Wednesdays look busier)."""
    grid = pd.MultiIndex.from_product([range(7), range(24)], names=["weekday", "hour"])
    summed = counts.groupby([counts["time"].dt.day_of_week.rename("weekday"),
                             counts["time"].dt.hour.rename("hour")])["visitors"].sum()
    table = summed.reindex(grid, fill_value=0).astype("int64").reset_index()
    table["days"] = table["weekday"].map(dict(enumerate(weekday_days(rng)))).astype("int64")
    table["mean"] = table["visitors"] / table["days"].where(table["days"] > 0)
    table["open"] = True if opening is None else table["hour"].isin(opening)
    table["mean"] = table["mean"].where(table["open"])  # closed hours have no average
    return table


def totals_by(counts: pd.DataFrame, columns: list[str], selected: list[str] | None = None) -> pd.DataFrame:
    """Visitors per combination of ``columns`` over the full category grid (zeros filled)."""
    if "valence" in columns and "valence" not in counts:
        counts = with_valence(counts)
    grid = pd.MultiIndex.from_product([categories(counts, c, selected) for c in columns], names=columns)
    summed = counts.groupby(columns)["visitors"].sum()
    return summed.reindex(grid, fill_value=0).astype("int64").reset_index()


@dataclass(frozen=True)
class Headline:
    """Headline figures of a selection, before suppression (see ``views.headline_view``)."""

    visitors: int
    current_visitors: int  # visitors in the comparable span (see comparison_ranges)
    previous_visitors: int
    change_pct: float | None  # None when the previous period has no visitors or is not comparable
    comparable: bool  # False when a selected camera has no data yet at the start of the earlier span
    busiest_hour: int | None  # hour of day (0..23) with the most visitors
    median_per_hour: float | None  # median over the open hours with at least one visitor
    by_gender: dict[str, int]
    mean_age: float | None


def headline(hourly: pd.DataFrame, totals: pd.DataFrame, current_visitors: int, previous_total: int,
             comparable: bool = True, opening: frozenset[int] | None = None) -> Headline:
    """Headline figures: ``hourly`` holds visitors per ``time`` (hours or finer; any other columns are summed
    away), ``totals`` the range's visitors and ``age_sum`` per ``gender``; ``current_visitors`` are those of
    the comparable span (see ``comparison_ranges``).

    ``comparable`` False (the earlier span reaches back before a camera's first data) gives no
    change: a period half without data is not "fewer visitors".
    """
    visitors = int(totals["visitors"].sum())
    change = (None if previous_total == 0 or not comparable
              else 100.0 * (current_visitors - previous_total) / previous_total)
    by_hour_of_day = hourly.groupby(hourly["time"].dt.hour)["visitors"].sum()
    busiest = int(by_hour_of_day.idxmax()) if visitors else None  # ties: the earliest hour
    per_hour = hourly.groupby(hourly["time"].dt.floor("h"))["visitors"].sum()
    per_hour = per_hour[(per_hour > 0) & (True if opening is None else per_hour.index.hour.isin(opening))]
    by_gender = {g: int(totals.loc[totals["gender"] == g, "visitors"].sum()) for g in GENDERS}
    return Headline(
        visitors=visitors, current_visitors=int(current_visitors), previous_visitors=int(previous_total),
        change_pct=change, comparable=comparable, busiest_hour=busiest,
        median_per_hour=float(np.median(per_hour.to_numpy())) if len(per_hour) else None,
        by_gender=by_gender,
        mean_age=float(totals["age_sum"].sum() / visitors) if visitors else None)


def camera_summary(totals: pd.DataFrame, hours: pd.DataFrame, current: pd.Series, cameras: list[str],
                   previous: pd.Series, comparable: dict[str, bool] | None = None) -> pd.DataFrame:
    """Per-camera figures before suppression, from ``totals`` (visitors and ``age_sum`` per camera_id and
    gender over the range), ``hours`` (visitors per camera_id and local ``hour`` of day: ``hours_of_day``)
    and the visitors per camera in the comparable span (``current``) and the earlier one (``previous``).

    Columns: camera_id, visitors, current, previous, comparable (the camera had data through the whole
    earlier span), female, male, age_sum, busiest_hour.
    """
    def per_camera(values: pd.Series, kind: str = "int64") -> pd.Series:
        return values.reindex(cameras, fill_value=0).astype(kind)

    grouped = totals.groupby("camera_id")
    table = pd.DataFrame(index=pd.Index(cameras, name="camera_id"))
    table["visitors"] = per_camera(grouped["visitors"].sum())
    table["current"] = per_camera(current)
    table["previous"] = per_camera(previous)
    table["comparable"] = [bool((comparable or {}).get(c, True)) for c in cameras]
    for g in GENDERS:
        table[g] = per_camera(totals[totals["gender"] == g].groupby("camera_id")["visitors"].sum())
    table["age_sum"] = per_camera(grouped["age_sum"].sum(), "float64")
    by_hour = hours[hours["visitors"] > 0].groupby(["camera_id", "hour"])["visitors"].sum()
    with_data = set(by_hour.index.get_level_values(0))
    table["busiest_hour"] = pd.Series([int(by_hour[c].idxmax()) if c in with_data else None for c in cameras],
                                      index=table.index, dtype="object")  # ties: the earliest hour
    return table.reset_index()
