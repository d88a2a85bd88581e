"""Helpers shared by the test folders (``from ..support import ...`` inside a subfolder).

- ``missing_requirement``: the one rule for a test whose requirement (dataset, tool, server) is
  absent: skip with the reason, but fail under ``CI=true`` (CI must never pass by skipping).
- ``postgres_schema``: a throwaway, migrated schema in the test PostgreSQL
  (``FOOTFALL_TEST_POSTGRES_URL``; CI sets it through .ci/run).
- ``import_file``: a script of the repository (``scripts/``, ``benchmarks/``, ``docker/``), which
  is no package module, imported by its path.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

POSTGRES_URL_VARIABLE = "FOOTFALL_TEST_POSTGRES_URL"


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` is 1, true or yes, any case)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_requirement(reason: str) -> NoReturn:
    """Skip the calling test, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement is a failure)")
    pytest.skip(reason)


def import_file(path: Path) -> ModuleType:
    """The Python file at ``path`` imported as a module named after its stem."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def with_search_path(url: str, schema: str) -> str:
    """``url`` with the PostgreSQL ``search_path`` set to ``schema`` (libpq ``options``).

    >>> with_search_path("postgresql+psycopg://u@h/db", "s1")
    'postgresql+psycopg://u@h/db?options=-csearch_path%3Ds1'
    >>> with_search_path("postgresql+psycopg://u@h/db?sslmode=disable", "s1")
    'postgresql+psycopg://u@h/db?sslmode=disable&options=-csearch_path%3Ds1'
    """
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def postgres_schema(prefix: str = "fftest") -> Iterator[str]:
    """A fresh schema ``<prefix>_<random>`` with the footfall tables (migrated); yields a URL whose
    search_path points at it, and drops the schema afterwards.

    Not configured (``FOOTFALL_TEST_POSTGRES_URL`` unset): ``missing_requirement``. Configured but
    unreachable: a failure, since whoever set the variable expects the server to be there.
    """
    import sqlalchemy as sa

    from footfall.db.migrate import upgrade

    base = os.environ.get(POSTGRES_URL_VARIABLE)
    if not base:
        missing_requirement(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} "
                            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(base, connect_args={"connect_timeout": 3})
    try:
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            first_line = str(exc.orig).strip().partition("\n")[0]
            pytest.fail(f"PostgreSQL at {base} unreachable: {first_line}", pytrace=False)
        try:
            url = with_search_path(base, schema)
            upgrade(url)
            yield url
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
