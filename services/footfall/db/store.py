"""Writing aggregates: idempotent visitor counting and camera health, SQLite or PostgreSQL.

``count_visitors`` adds each visitor to ``visitor_counts`` (and its entry / exit / passing-by,
dwell and zones to ``flow_counts`` and ``dwell_counts``) in the same transaction that records
its track id in ``counted_tracks``; a track already recorded is skipped, so a
message processed twice (redelivery after a crash) is never counted twice. The same transaction adds
the cells to the hourly and daily rollups (``footfall.db.models.rollups_of``: the full ones and the narrow
ones, which sum some dimensions away), so a rollup always equals
the sum of its fine cells; ``refill_rollups`` recomputes them from the fine cells (the migration's
backfill, and bulk loaders such as the demo data).

Example:
    >>> import tempfile
    >>> from datetime import datetime
    >>> from footfall.db.migrate import upgrade
    >>> from footfall.db.records import VisitorRecord
    >>> url = f"sqlite:///{tempfile.mkdtemp()}/f.db"; upgrade(url); engine = make_engine(url)
    >>> v = VisitorRecord("door", "door:a:1", datetime(2026, 1, 1), 0, 1, 3, 30.0, "25-34", "male", "", "happy")
    >>> len(count_visitors(engine, [v])), len(count_visitors(engine, [v]))
    (1, 0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from footfall.counting import ENTRY, EXIT, PASSER_BY
from footfall.db.models import (GRAINS, ROLLUPS, CameraHealth, CountedTrack, DwellCount, FlowCount, VisitorCount,
                                cell_keys, cell_sums, rollups_of)
from footfall.db.records import VisitorRecord
from footfall.labels import dwell_band


def make_engine(url: str) -> Engine:
    kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    return create_engine(url, **kwargs)


def _insert(engine: Engine):
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def count_visitors(engine: Engine, visitors: Iterable[VisitorRecord]) -> list[VisitorRecord]:
    """Count the visitors not counted before, in one transaction; returns those newly counted.

    Fifteen statements whatever the number of visitors: one multi-row insert of the track ids that
    returns those not recorded before, then one multi-row upsert each of their visitor, flow and
    dwell cells and of those cells' rollups (hourly and daily, and the visitors' narrow ones; summed
    here first: a statement may update a row only once).
    """
    visitors = list({v.track_id: v for v in visitors}.values())
    if not visitors:
        return []
    insert = _insert(engine)
    now = _utcnow()
    with Session(engine) as session, session.begin():
        claimed = set(session.execute(
            insert(CountedTrack).values([{"track_id": v.track_id, "camera_id": v.camera_id,
                                          "bucket_start": v.bucket_start, "counted_at": now} for v in visitors])
            .on_conflict_do_nothing(index_elements=["track_id"]).returning(CountedTrack.track_id)).scalars())
        new = [v for v in visitors if v.track_id in claimed]  # the others were counted before
        visits: dict[tuple, dict] = {}
        flow: dict[tuple, dict] = {}
        dwell: dict[tuple, dict] = {}
        for v in new:
            _sum(visits, (v.camera_id, v.bucket_start, v.age_band, v.gender, v.race, v.emotion),
                 visitors=1, age_sum=v.age)
            _count_flow(flow, dwell, v)
        _upsert_cells(session, insert, VisitorCount, visits)
        _upsert_cells(session, insert, FlowCount, flow)
        _upsert_cells(session, insert, DwellCount, dwell)
    return new


def floor_time(when: datetime, grain: str) -> datetime:
    """Start of the UTC hour or day holding ``when`` (a rollup's bucket).

    >>> floor_time(datetime(2026, 1, 1, 13, 45), "hour"), floor_time(datetime(2026, 1, 1, 13, 45), "day")
    (datetime.datetime(2026, 1, 1, 13, 0), datetime.datetime(2026, 1, 1, 0, 0))
    """
    if grain == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    if grain == "day":
        return when.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown grain {grain!r}")


def _upsert_cells(session: Session, insert, model, cells: dict[tuple, dict]) -> None:
    """Add ``cells`` (keyed like ``model``'s primary key) to ``model`` and to each of its rollups (a narrow
    rollup keeps only its key columns: the cells that differ in the others add up)."""
    keys = cell_keys(model)
    _upsert_sums(session, insert, model, keys, cells)
    for grain, rollup in rollups_of(model):
        rollup_keys = cell_keys(rollup)
        picks = [keys.index(k) for k in rollup_keys]
        at = rollup_keys.index("bucket_start")
        coarse: dict[tuple, dict] = {}
        for key, counts in cells.items():
            projected = [key[i] for i in picks]
            projected[at] = floor_time(projected[at], grain)
            _sum(coarse, tuple(projected), **{n: counts[n] for n in cell_sums(rollup)})
        _upsert_sums(session, insert, rollup, rollup_keys, coarse)


def _sum(cells: dict[tuple, dict], key: tuple, **counts) -> None:
    """Add ``counts`` to the cell at ``key`` (summed here: one statement may update a row only once)."""
    cell = cells.setdefault(key, dict.fromkeys(counts, 0))
    for name, n in counts.items():
        cell[name] += n


def _upsert_sums(session: Session, insert, model, keys: tuple[str, ...], cells: dict[tuple, dict]) -> None:
    """One multi-row upsert adding each cell's counts to the row of ``model`` at its key."""
    if not cells:
        return
    names = list(next(iter(cells.values())))
    stmt = insert(model).values([{**dict(zip(keys, key)), **counts} for key, counts in cells.items()])
    session.execute(stmt.on_conflict_do_update(
        index_elements=list(keys), set_={n: getattr(model, n) + getattr(stmt.excluded, n) for n in names}))


def _count_flow(flow: dict[tuple, dict], dwell: dict[tuple, dict], v: VisitorRecord) -> None:
    """The visitor's entry / exit / passing-by, dwell band and zones (flow_counts, dwell_counts)."""
    zero = {"visitors": 0, "entries": 0, "exits": 0, "passers_by": 0}
    _sum(flow, (v.camera_id, v.bucket_start, ""),
         **{**zero, "visitors": 1, "entries": int(v.crossing == ENTRY), "passers_by": int(v.crossing == PASSER_BY)})
    if v.crossing == EXIT:  # counted when the visitor left: occupancy drops then
        _sum(flow, (v.camera_id, v.end_bucket_start or v.bucket_start, ""), **{**zero, "exits": 1})
    _sum(dwell, (v.camera_id, v.bucket_start, "", dwell_band(v.dwell_s)), visitors=1)
    for zone, seconds in v.zones:
        _sum(flow, (v.camera_id, v.bucket_start, zone), **{**zero, "visitors": 1})
        _sum(dwell, (v.camera_id, v.bucket_start, zone, dwell_band(seconds)), visitors=1)


def _floor_sql(column, grain: str, dialect: str):
    """SQL for the start of the UTC hour / day of ``column`` (constants inline: GROUP BY repeats the expression)."""
    if dialect == "postgresql":
        return sa.func.date_trunc(sa.literal_column(f"'{grain}'"), column)
    # SQLite holds SQLAlchemy's text 'YYYY-MM-DD HH:MM:SS.ffffff': cut and pad it to the same text that
    # Python datetimes are written as, so rows refilled here and rows upserted later share one key
    keep, pad = {"hour": (13, ":00:00.000000"), "day": (10, " 00:00:00.000000")}[grain]
    return sa.func.substr(column, sa.literal_column("1"), sa.literal_column(str(keep)), type_=sa.String) + \
        sa.literal_column(f"'{pad}'", sa.String)


def refill_rollups(connection: Connection, fine: sa.Table, rollups: dict[str, sa.Table], keys: Sequence[str],
                   sums: Sequence[str], start: datetime | None = None, end: datetime | None = None) -> None:
    """Recompute ``rollups`` ({grain: table}) of ``fine`` from its cells: the whole UTC days that overlap
    ``[start, end)``, or everything. ``keys`` are the rollups' key columns: the fine table's, or a subset
    of them (a narrow rollup: the other dimensions summed away). One DELETE and one INSERT ... SELECT ...
    GROUP BY per rollup, in the caller's transaction. Tables are passed in, so a migration can name its own (frozen) definitions."""
    dialect = connection.dialect.name
    first = None if start is None else floor_time(start, "day")
    last = None if end is None else floor_time(end - timedelta(microseconds=1), "day") + GRAINS["day"]
    for grain, rollup in rollups.items():
        delete = rollup.delete()
        where = []
        if first is not None:
            delete = delete.where(rollup.c.bucket_start >= first)
            where.append(fine.c.bucket_start >= first)
        if last is not None:
            delete = delete.where(rollup.c.bucket_start < last)
            where.append(fine.c.bucket_start < last)
        connection.execute(delete)
        floored = _floor_sql(fine.c.bucket_start, grain, dialect)
        dims = [floored if k == "bucket_start" else fine.c[k] for k in keys]
        query = sa.select(*dims, *(sa.func.sum(fine.c[s]) for s in sums)).where(*where).group_by(*dims)
        connection.execute(rollup.insert().from_select([*keys, *sums], query))


def refresh_rollups(connection: Connection, start: datetime | None = None, end: datetime | None = None) -> None:
    """``refill_rollups`` for every rollup (after cells were written in bulk, not by ``count_visitors``)."""
    for model in ROLLUPS:
        for grain, rollup in rollups_of(model):
            refill_rollups(connection, model.__table__, {grain: rollup.__table__}, cell_keys(rollup),
                           cell_sums(rollup), start, end)


def upsert_camera_health(engine: Engine, rows: list[dict]) -> None:
    """Rows with the CameraHealth columns (camera_id, state, last_frame_at, ...)."""
    if not rows:
        return
    insert = _insert(engine)
    with Session(engine) as session, session.begin():
        for row in rows:
            stmt = insert(CameraHealth).values(**row)
            session.execute(stmt.on_conflict_do_update(index_elements=["camera_id"],
                                                       set_={k: v for k, v in row.items() if k != "camera_id"}))


def total_visitors(engine: Engine, camera_id: str | None = None) -> int:
    """Sum of stored visitors (all cameras, or one)."""
    query = select(func.coalesce(func.sum(VisitorCount.visitors), 0))
    if camera_id is not None:
        query = query.where(VisitorCount.camera_id == camera_id)
    with Session(engine) as session:
        return int(session.execute(query).scalar_one())
