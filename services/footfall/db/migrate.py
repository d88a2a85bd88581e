"""Create or upgrade the aggregate database schema with Alembic (``footfall-migrate``).

Example:
    >>> import tempfile, sqlalchemy as sa
    >>> url = f"sqlite:///{tempfile.mkdtemp()}/f.db"
    >>> upgrade(url)
    >>> sorted(sa.inspect(sa.create_engine(url)).get_table_names())  # doctest: +NORMALIZE_WHITESPACE
    ['alembic_version', 'camera_health', 'counted_tracks', 'dwell_counts', 'dwell_counts_daily',
     'dwell_counts_hourly', 'flow_counts', 'flow_counts_daily', 'flow_counts_hourly', 'visitor_age_genders_daily',
     'visitor_age_genders_weekly', 'visitor_counts', 'visitor_counts_daily', 'visitor_counts_hourly',
     'visitor_emotions_daily', 'visitor_emotions_weekly', 'visitor_genders_daily', 'visitor_genders_weekly',
     'visitor_races_daily', 'visitor_races_weekly', 'visitor_totals_hourly']
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating the SQLite file's folder)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> None:
    from footfall.config import CommonSettings

    parser = argparse.ArgumentParser(description="Create or upgrade the Footfall database schema.")
    parser.add_argument("--url", default=None, help="database URL (default: FOOTFALL_DATABASE_URL)")
    parser.add_argument("--revision", default="head")
    args = parser.parse_args(argv)
    url = args.url or CommonSettings().database_url
    upgrade(url, args.revision)
    print(f"database at revision {args.revision}")


if __name__ == "__main__":
    main()
