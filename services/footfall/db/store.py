"""Writing aggregates: idempotent visitor counting and camera health, SQLite or PostgreSQL.

``count_visitors`` adds each visitor to ``visitor_counts`` (and its entry / exit / passing-by,
dwell and zones to ``flow_counts`` and ``dwell_counts``) in the same transaction that records
its track id in ``counted_tracks``; a track already recorded is skipped, so a
message processed twice (redelivery after a crash) is never counted twice.

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

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from footfall.counting import ENTRY, EXIT, PASSER_BY
from footfall.db.models import CameraHealth, CountedTrack, DwellCount, FlowCount, VisitorCount
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

    Four statements whatever the number of visitors: one multi-row insert of the track ids that
    returns those not recorded before, then one multi-row upsert each of their visitor, flow and
    dwell cells (summed here first: a statement may update a row only once).
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
        _upsert_sums(session, insert, VisitorCount,
                     ("camera_id", "bucket_start", "age_band", "gender", "race", "emotion"), visits)
        _upsert_sums(session, insert, FlowCount, ("camera_id", "bucket_start", "zone"), flow)
        _upsert_sums(session, insert, DwellCount, ("camera_id", "bucket_start", "zone", "dwell_band"), dwell)
    return new


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
