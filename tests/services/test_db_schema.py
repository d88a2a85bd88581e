"""The database models are the schema's one definition: a migrated database must match them exactly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from footfall.db.models import Base


def test_models_match_the_migrated_database(db_url):
    # Alembic's autogenerate comparison: any table, column, type, nullability or index that the
    # migrations create differently from db/models.py shows up as a difference.
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
