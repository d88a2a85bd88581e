"""Writing aggregates: idempotent visitor counting and camera health, SQLite or PostgreSQL.

``count_visitors`` adds each visitor to ``visitor_counts`` in the same transaction that
records its track id in ``counted_tracks``; a track already recorded is skipped, so a
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

from footfall.db.models import CameraHealth, CountedTrack, VisitorCount
from footfall.db.records import VisitorRecord


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

    Two statements whatever the number of visitors: one multi-row insert of the track ids that
    returns those not recorded before, and one multi-row upsert of their cells (summed here first:
    a statement may update a row only once).
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
        cells: dict[tuple, list] = {}
        for v in new:
            cell = cells.setdefault((v.camera_id, v.bucket_start, v.age_band, v.gender, v.race, v.emotion), [0, 0.0])
            cell[0] += 1
            cell[1] += v.age
        if cells:
            stmt = insert(VisitorCount).values([
                {"camera_id": k[0], "bucket_start": k[1], "age_band": k[2], "gender": k[3], "race": k[4],
                 "emotion": k[5], "visitors": n, "age_sum": age_sum} for k, (n, age_sum) in cells.items()])
            session.execute(stmt.on_conflict_do_update(
                index_elements=["camera_id", "bucket_start", "age_band", "gender", "race", "emotion"],
                set_={"visitors": VisitorCount.visitors + stmt.excluded.visitors,
                      "age_sum": VisitorCount.age_sum + stmt.excluded.age_sum}))
    return new


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
