"""Footfall flow: flow_counts (visitors, entries, exits, passers-by per zone) and dwell_counts (issue 19).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_counts",
        sa.Column("camera_id", sa.String(64), primary_key=True),
        sa.Column("bucket_start", sa.DateTime(timezone=False), primary_key=True),
        sa.Column("zone", sa.String(32), primary_key=True),
        sa.Column("visitors", sa.Integer, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("exits", sa.Integer, nullable=False),
        sa.Column("passers_by", sa.Integer, nullable=False),
    )
    op.create_index("ix_flow_counts_bucket", "flow_counts", ["bucket_start"])
    op.create_table(
        "dwell_counts",
        sa.Column("camera_id", sa.String(64), primary_key=True),
        sa.Column("bucket_start", sa.DateTime(timezone=False), primary_key=True),
        sa.Column("zone", sa.String(32), primary_key=True),
        sa.Column("dwell_band", sa.String(8), primary_key=True),
        sa.Column("visitors", sa.Integer, nullable=False),
    )
    op.create_index("ix_dwell_counts_bucket", "dwell_counts", ["bucket_start"])


def downgrade() -> None:
    op.drop_index("ix_dwell_counts_bucket", "dwell_counts")
    op.drop_table("dwell_counts")
    op.drop_index("ix_flow_counts_bucket", "flow_counts")
    op.drop_table("flow_counts")
