"""Hourly and daily rollups of visitor_counts, flow_counts and dwell_counts, backfilled (issue 20 item 8).

The dashboard reads long ranges from these instead of minute cells; the aggregator writes them in the
transaction that writes the cells. The upgrade fills them from the cells already stored.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from footfall.db.store import refill_rollups

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The cell tables as of this revision: (name, key columns after camera_id and bucket_start, summed columns).
CELLS = {
    "visitor_counts": ([("age_band", 8), ("gender", 8), ("race", 16), ("emotion", 16)],
                       [("visitors", sa.Integer), ("age_sum", sa.Float)]),
    "flow_counts": ([("zone", 32)], [("visitors", sa.Integer), ("entries", sa.Integer), ("exits", sa.Integer),
                                     ("passers_by", sa.Integer)]),
    "dwell_counts": ([("zone", 32), ("dwell_band", 8)], [("visitors", sa.Integer)]),
}
GRAINS = {"hour": "hourly", "day": "daily"}


def _lightweight(name: str, keys, sums) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in ["camera_id", "bucket_start", *(k for k, _ in keys),
                                                   *(s for s, _ in sums)]))


def upgrade() -> None:
    for table, (keys, sums) in CELLS.items():
        for suffix in GRAINS.values():
            name = f"{table}_{suffix}"
            op.create_table(
                name,
                sa.Column("camera_id", sa.String(64), primary_key=True),
                sa.Column("bucket_start", sa.DateTime(timezone=False), primary_key=True),
                *(sa.Column(k, sa.String(size), primary_key=True) for k, size in keys),
                *(sa.Column(s, kind, nullable=False) for s, kind in sums),
            )
            op.create_index(f"ix_{name}_bucket", name, ["bucket_start"])
    bind = op.get_bind()
    for table, (keys, sums) in CELLS.items():
        names = ["camera_id", "bucket_start", *(k for k, _ in keys)]
        refill_rollups(bind, _lightweight(table, keys, sums),
                       {grain: _lightweight(f"{table}_{suffix}", keys, sums) for grain, suffix in GRAINS.items()},
                       names, [s for s, _ in sums])


def downgrade() -> None:
    for table in reversed(list(CELLS)):
        for suffix in reversed(list(GRAINS.values())):
            op.drop_index(f"ix_{table}_{suffix}_bucket", f"{table}_{suffix}")
            op.drop_table(f"{table}_{suffix}")
