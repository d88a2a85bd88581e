"""Writing aggregates: idempotent visitor counting and camera health, SQLite or PostgreSQL.

``count_visitors`` adds each visitor to ``visitor_counts`` (and its entry / exit / passing-by,
dwell and zones to ``flow_counts`` and ``dwell_counts``) in the same transaction that records
its track id in ``counted_tracks``; a track already recorded is skipped, so a
message processed twice (redelivery after a crash) is never counted twice.

Example:
    >>> import tempfile
    >>> from datetime import datetime
    >>> from footfall.db.migrate import upgrade
    >>> from footfall.aggregator.folding import VisitorRecord
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

from footfall.aggregator.folding import VisitorRecord
from footfall.counting import ENTRY, EXIT, PASSER_BY
from footfall.labels import dwell_band
from footfall.db.models import CameraHealth, CountedTrack, DwellCount, FlowCount, VisitorCount


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
    """Count the visitors not counted before, in one transaction; returns those newly counted."""
    insert = _insert(engine)
    new: list[VisitorRecord] = []
    with Session(engine) as session, session.begin():
        for v in visitors:
            claimed = session.execute(
                insert(CountedTrack).values(track_id=v.track_id, camera_id=v.camera_id, bucket_start=v.bucket_start,
                                            counted_at=_utcnow())
                .on_conflict_do_nothing(index_elements=["track_id"]).returning(CountedTrack.track_id)
            ).first()
            if claimed is None:
                continue  # counted before
            stmt = insert(VisitorCount).values(camera_id=v.camera_id, bucket_start=v.bucket_start, age_band=v.age_band,
                                               gender=v.gender, race=v.race, emotion=v.emotion, visitors=1,
                                               age_sum=v.age)
            session.execute(stmt.on_conflict_do_update(
                index_elements=["camera_id", "bucket_start", "age_band", "gender", "race", "emotion"],
                set_={"visitors": VisitorCount.visitors + 1, "age_sum": VisitorCount.age_sum + v.age}))
            _count_flow(session, insert, v)
            new.append(v)
    return new


def _add(session: Session, insert, model, keys: dict, counts: dict) -> None:
    """Add ``counts`` to the row of ``model`` at ``keys`` (created when missing)."""
    stmt = insert(model).values(**keys, **counts)
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys),
                                               set_={k: getattr(model, k) + n for k, n in counts.items()}))


def _count_flow(session: Session, insert, v: VisitorRecord) -> None:
    """The visitor's entry / exit / passing-by, dwell band and zones (flow_counts, dwell_counts)."""
    first = {"camera_id": v.camera_id, "bucket_start": v.bucket_start}
    _add(session, insert, FlowCount, {**first, "zone": ""},
         {"visitors": 1, "entries": int(v.crossing == ENTRY), "exits": 0, "passers_by": int(v.crossing == PASSER_BY)})
    if v.crossing == EXIT:  # counted when the visitor left: occupancy drops then
        _add(session, insert, FlowCount, {"camera_id": v.camera_id, "bucket_start": v.end_bucket_start or v.bucket_start,
                                          "zone": ""}, {"visitors": 0, "entries": 0, "exits": 1, "passers_by": 0})
    _add(session, insert, DwellCount, {**first, "zone": "", "dwell_band": dwell_band(v.dwell_s)}, {"visitors": 1})
    for zone, seconds in v.zones:
        _add(session, insert, FlowCount, {**first, "zone": zone},
             {"visitors": 1, "entries": 0, "exits": 0, "passers_by": 0})
        _add(session, insert, DwellCount, {**first, "zone": zone, "dwell_band": dwell_band(seconds)}, {"visitors": 1})


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
