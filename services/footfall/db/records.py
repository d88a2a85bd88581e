"""What the aggregate tables count: one finished visitor, and the time bucket it falls in.

The aggregator builds these records; ``footfall.db.store`` writes them.

Example:
    >>> bucket_start(125.0, 60).isoformat()
    '1970-01-01T00:02:00'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class VisitorRecord:
    """One finished visitor, as the aggregate tables count it."""

    camera_id: str
    track_id: str
    bucket_start: datetime  # naive UTC
    first_ts: float
    last_ts: float
    faces: int
    age: float
    age_band: str
    gender: str
    race: str
    emotion: str
    # Footfall meaning, from the track_end entry (without one: dwell from the crops, no crossing or zones).
    dwell_s: float = 0.0
    crossing: str = ""  # entry / exit / passer-by, or "" when the camera has no counting line
    zones: tuple[tuple[str, float], ...] = ()  # (zone, seconds in it)
    end_bucket_start: datetime | None = None  # bucket of the last sighting (where an exit is counted)


def bucket_start(ts: float, bucket_s: int) -> datetime:
    """Start of the time bucket holding ``ts`` (seconds since the epoch), naive UTC."""
    start = int(ts // bucket_s) * bucket_s
    return datetime.fromtimestamp(start, tz=timezone.utc).replace(tzinfo=None)
