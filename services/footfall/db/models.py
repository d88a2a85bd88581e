"""The aggregate database (SQLAlchemy 2). It holds counts, never faces or per-person attributes.

Tables:
- ``visitor_counts``: unique visitors per camera, time bucket (UTC start), age band, gender,
  race and emotion. An attribute switched off by the privacy settings is stored as ``""``
  (not recorded), so the row says nothing about it.
- ``counted_tracks``: opaque ids of the tracks already counted, so a message processed twice
  is never counted twice (idempotent writes). No attributes.
- ``camera_health``: the ingest workers' last reported state per camera (operator view).
- ``flow_counts``: per camera, time bucket and zone (``""``: the whole camera view) the visitors
  counted, and of them those who entered, left or passed by the camera's counting line (an
  exit is counted in the bucket of the visitor's last sighting, the rest in that of the first).
  Occupancy over time is the running sum of entries minus exits.
- ``dwell_counts``: visitors per camera, time bucket, zone and dwell band (``footfall.counting``).
- Rollups ``<table>_hourly`` and ``<table>_daily`` of those three: the same cells summed per UTC hour and
  UTC day (``ROLLUPS``), written in the transaction that writes the fine cells (``footfall.db.store``), so
  the dashboard sums long ranges from fewer rows (each UTC day once, not every minute of it).
- Narrow rollups of ``visitor_counts`` (``NARROW_ROLLUPS``): the same sums keyed by camera, bucket and
  only one view's dimensions (``visitor_totals_hourly``: no attribute; ``visitor_genders_daily``,
  ``visitor_age_genders_daily``, ``visitor_emotions_daily``, ``visitor_races_daily``), written alike. A
  year of 50 cameras holds 2.2 M hourly cells but 0.3 M camera-hour totals: the weekday x hour map and
  the busiest hours read those.

The schema is created and upgraded by Alembic migrations (``footfall-migrate``); these models
are its one definition (a test compares them with a migrated database, index included), and the
id columns' sizes are the message schema's limits (``footfall.schema.MAX_CAMERA_ID``/``MAX_TRACK_ID``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import DateTime, Float, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from footfall.schema import MAX_CAMERA_ID, MAX_TRACK_ID, MAX_ZONE_NAME

NOT_RECORDED = ""  # value of a dimension switched off by the privacy settings


class Base(DeclarativeBase):
    pass


class _VisitorCellColumns:
    """Camera, bucket and the sums of every visitor table; ``_VisitorCells`` and each narrow rollup add the
    dimensions they keep (``sort_order``: camera_id and bucket_start lead the primary key, the sums come last)."""

    camera_id: Mapped[str] = mapped_column(String(MAX_CAMERA_ID), primary_key=True, sort_order=-2)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True, sort_order=-1,
                                                   doc="UTC start of the time bucket")
    visitors: Mapped[int] = mapped_column(Integer, nullable=False, default=0, sort_order=1)
    # Sum of the visitors' mean ages, so mean age per cell = age_sum / visitors.
    age_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0, sort_order=1)


class _VisitorCells(_VisitorCellColumns):
    age_band: Mapped[str] = mapped_column(String(8), primary_key=True)
    gender: Mapped[str] = mapped_column(String(8), primary_key=True)
    race: Mapped[str] = mapped_column(String(16), primary_key=True)
    emotion: Mapped[str] = mapped_column(String(16), primary_key=True)


class VisitorCount(_VisitorCells, Base):
    __tablename__ = "visitor_counts"
    # The dashboard selects time ranges over all cameras: bucket_start leads no primary-key prefix.
    __table_args__ = (Index("ix_visitor_counts_bucket", "bucket_start"),)


class VisitorCountHourly(_VisitorCells, Base):
    __tablename__ = "visitor_counts_hourly"
    __table_args__ = (Index("ix_visitor_counts_hourly_bucket", "bucket_start"),)


class VisitorCountDaily(_VisitorCells, Base):
    __tablename__ = "visitor_counts_daily"
    __table_args__ = (Index("ix_visitor_counts_daily_bucket", "bucket_start"),)


class CountedTrack(Base):
    __tablename__ = "counted_tracks"

    track_id: Mapped[str] = mapped_column(String(MAX_TRACK_ID), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(MAX_CAMERA_ID), nullable=False)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)
    counted_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)


class CameraHealth(Base):
    __tablename__ = "camera_health"

    camera_id: Mapped[str] = mapped_column(String(MAX_CAMERA_ID), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, doc="connecting / live / reconnecting / ended")
    last_frame_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    frames_per_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    faces_per_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    stream_lag: Mapped[int] = mapped_column(Integer, nullable=False, default=0, doc="entries not yet counted")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)


class _FlowCells:
    camera_id: Mapped[str] = mapped_column(String(MAX_CAMERA_ID), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True)
    zone: Mapped[str] = mapped_column(String(MAX_ZONE_NAME), primary_key=True, doc='"" for the whole camera view')
    visitors: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    entries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    exits: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    passers_by: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class FlowCount(_FlowCells, Base):
    __tablename__ = "flow_counts"
    __table_args__ = (Index("ix_flow_counts_bucket", "bucket_start"),)


class FlowCountHourly(_FlowCells, Base):
    __tablename__ = "flow_counts_hourly"
    __table_args__ = (Index("ix_flow_counts_hourly_bucket", "bucket_start"),)


class FlowCountDaily(_FlowCells, Base):
    __tablename__ = "flow_counts_daily"
    __table_args__ = (Index("ix_flow_counts_daily_bucket", "bucket_start"),)


class _DwellCells:
    camera_id: Mapped[str] = mapped_column(String(MAX_CAMERA_ID), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True)
    zone: Mapped[str] = mapped_column(String(MAX_ZONE_NAME), primary_key=True, doc='"" for the whole camera view')
    dwell_band: Mapped[str] = mapped_column(String(8), primary_key=True)
    visitors: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class DwellCount(_DwellCells, Base):
    __tablename__ = "dwell_counts"
    __table_args__ = (Index("ix_dwell_counts_bucket", "bucket_start"),)


class DwellCountHourly(_DwellCells, Base):
    __tablename__ = "dwell_counts_hourly"
    __table_args__ = (Index("ix_dwell_counts_hourly_bucket", "bucket_start"),)


class DwellCountDaily(_DwellCells, Base):
    __tablename__ = "dwell_counts_daily"
    __table_args__ = (Index("ix_dwell_counts_daily_bucket", "bucket_start"),)


GRAINS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}  # rollup time grains (UTC), finest first
# fine table -> {grain: its rollup}; a rollup has the fine table's columns, bucket_start floored to the grain
ROLLUPS: dict[type[Base], dict[str, type[Base]]] = {
    VisitorCount: {"hour": VisitorCountHourly, "day": VisitorCountDaily},
    FlowCount: {"hour": FlowCountHourly, "day": FlowCountDaily},
    DwellCount: {"hour": DwellCountHourly, "day": DwellCountDaily},
}


class VisitorTotalHourly(_VisitorCellColumns, Base):
    __tablename__ = "visitor_totals_hourly"
    __table_args__ = (Index("ix_visitor_totals_hourly_bucket", "bucket_start"),)


class VisitorGenderDaily(_VisitorCellColumns, Base):
    __tablename__ = "visitor_genders_daily"
    __table_args__ = (Index("ix_visitor_genders_daily_bucket", "bucket_start"),)
    gender: Mapped[str] = mapped_column(String(8), primary_key=True)


class VisitorAgeGenderDaily(_VisitorCellColumns, Base):
    __tablename__ = "visitor_age_genders_daily"
    __table_args__ = (Index("ix_visitor_age_genders_daily_bucket", "bucket_start"),)
    age_band: Mapped[str] = mapped_column(String(8), primary_key=True)
    gender: Mapped[str] = mapped_column(String(8), primary_key=True)


class VisitorEmotionDaily(_VisitorCellColumns, Base):
    __tablename__ = "visitor_emotions_daily"
    __table_args__ = (Index("ix_visitor_emotions_daily_bucket", "bucket_start"),)
    emotion: Mapped[str] = mapped_column(String(16), primary_key=True)


class VisitorRaceDaily(_VisitorCellColumns, Base):
    __tablename__ = "visitor_races_daily"
    __table_args__ = (Index("ix_visitor_races_daily_bucket", "bucket_start"),)
    race: Mapped[str] = mapped_column(String(16), primary_key=True)


# fine table -> (grain, rollup) pairs whose keys are camera_id, bucket_start and a subset of the fine table's
# dimensions: the fine cells summed over the others (a reader takes the narrowest that has its dimensions)
NARROW_ROLLUPS: dict[type[Base], tuple[tuple[str, type[Base]], ...]] = {
    VisitorCount: (("hour", VisitorTotalHourly), ("day", VisitorGenderDaily), ("day", VisitorAgeGenderDaily),
                   ("day", VisitorEmotionDaily), ("day", VisitorRaceDaily)),
}


def rollups_of(model) -> list[tuple[str, type[Base]]]:
    """Every rollup of a fine table as (grain, rollup model): the full ones (``ROLLUPS``), then the narrow ones."""
    return [*ROLLUPS[model].items(), *NARROW_ROLLUPS.get(model, ())]


def cell_keys(model) -> tuple[str, ...]:
    """The key columns of a cell table (its primary key, bucket_start included)."""
    return tuple(c.name for c in model.__table__.primary_key.columns)


def cell_sums(model) -> tuple[str, ...]:
    """The summed columns of a cell table (all but the key)."""
    return tuple(c.name for c in model.__table__.columns if not c.primary_key)
