"""Independent plain-Python truth over inserted rows (no pandas, no dashboard code)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta


def select(rows: list[dict], start: datetime, end: datetime, cameras: list[str] | None = None) -> list[dict]:
    return [r for r in rows if start <= r["bucket_start"] < end and (cameras is None or r["camera_id"] in cameras)]


def total(rows: list[dict]) -> int:
    return sum(r["visitors"] for r in rows)


def by(rows: list[dict], key) -> dict:
    out: dict = defaultdict(int)
    for r in rows:
        out[key(r)] += r["visitors"]
    return dict(out)


def busiest_hour(rows: list[dict]) -> int:
    hours = by(rows, lambda r: r["bucket_start"].hour)
    return min(hours, key=lambda h: (-hours[h], h))


def median_active_hour(rows: list[dict]) -> float:
    hourly = by(rows, lambda r: r["bucket_start"].replace(minute=0, second=0))
    return statistics.median(v for v in hourly.values() if v > 0)


def share(rows: list[dict], gender: str) -> float:
    return 100.0 * sum(r["visitors"] for r in rows if r["gender"] == gender) / total(rows)


def mean_age(rows: list[dict]) -> float:
    return sum(r["age_sum"] for r in rows) / total(rows)


def comparison(rows: list[dict], start: datetime, end: datetime, now: datetime,
               cameras: list[str] | None = None) -> tuple[int, int]:
    """(current, previous) totals: same-length previous period, both cut at ``now`` while running."""
    cut = now if start < now < end else end
    length = end - start
    return (total(select(rows, start, cut, cameras)),
            total(select(rows, start - length, cut - length, cameras)))


def days(first: datetime, count: int) -> tuple[datetime, datetime]:
    return first, first + timedelta(days=count)
