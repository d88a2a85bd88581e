"""Initial schema: visitor_counts, counted_tracks, camera_health.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "visitor_counts",
        sa.Column("camera_id", sa.String(64), primary_key=True),
        sa.Column("bucket_start", sa.DateTime(timezone=False), primary_key=True),
        sa.Column("age_band", sa.String(8), primary_key=True),
        sa.Column("gender", sa.String(8), primary_key=True),
        sa.Column("race", sa.String(16), primary_key=True),
        sa.Column("emotion", sa.String(16), primary_key=True),
        sa.Column("visitors", sa.Integer, nullable=False),
        sa.Column("age_sum", sa.Float, nullable=False),
    )
    op.create_index("ix_visitor_counts_bucket", "visitor_counts", ["bucket_start"])
    op.create_table(
        "counted_tracks",
        sa.Column("track_id", sa.String(96), primary_key=True),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=False), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_table(
        "camera_health",
        sa.Column("camera_id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_frame_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("frames_per_s", sa.Float, nullable=False),
        sa.Column("faces_per_s", sa.Float, nullable=False),
        sa.Column("stream_lag", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("camera_health")
    op.drop_table("counted_tracks")
    op.drop_index("ix_visitor_counts_bucket", "visitor_counts")
    op.drop_table("visitor_counts")
