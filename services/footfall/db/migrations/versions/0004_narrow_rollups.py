"""Narrow rollups of visitor_counts: camera-hour totals and daily sums per gender, age band and gender,
emotion and race, backfilled (issue 20 item 8: the dashboard's year of 50 cameras).

The dashboard's weekday x hour map, busiest hours and per-camera figures read these instead of the
full rollups, which keep every attribute combination; the aggregator writes them in the transaction
that writes the cells. The upgrade fills them from the cells already stored.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from footfall.db.store import refill_rollups

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The tables as of this revision: name -> (grain, key columns after camera_id and bucket_start)
NARROW = {
    "visitor_totals_hourly": ("hour", []),
    "visitor_genders_daily": ("day", [("gender", 8)]),
    "visitor_age_genders_daily": ("day", [("age_band", 8), ("gender", 8)]),
    "visitor_emotions_daily": ("day", [("emotion", 16)]),
    "visitor_races_daily": ("day", [("race", 16)]),
}
SUMS = [("visitors", sa.Integer), ("age_sum", sa.Float)]
FINE = sa.table("visitor_counts", *(sa.column(c) for c in ("camera_id", "bucket_start", "age_band", "gender", "race",
                                                            "emotion", "visitors", "age_sum")))


def upgrade() -> None:
    for name, (_, keys) in NARROW.items():
        op.create_table(
            name,
            sa.Column("camera_id", sa.String(64), primary_key=True),
            sa.Column("bucket_start", sa.DateTime(timezone=False), primary_key=True),
            *(sa.Column(k, sa.String(size), primary_key=True) for k, size in keys),
            *(sa.Column(s, kind, nullable=False) for s, kind in SUMS),
        )
        op.create_index(f"ix_{name}_bucket", name, ["bucket_start"])
    bind = op.get_bind()
    for name, (grain, keys) in NARROW.items():
        columns = ["camera_id", "bucket_start", *(k for k, _ in keys)]
        sums = [s for s, _ in SUMS]
        refill_rollups(bind, FINE, {grain: sa.table(name, *(sa.column(c) for c in columns + sums))}, columns, sums)


def downgrade() -> None:
    for name in reversed(list(NARROW)):
        op.drop_index(f"ix_{name}_bucket", name)
        op.drop_table(name)
