"""Realistic demo aggregates with a known truth: several cameras, a daily and a weekly rhythm.

Visitors are drawn per camera and time bucket from a Poisson rate (opening hours with a lunch and
an evening peak, busier Fridays and Saturdays, quiet Sundays), each with a gender, an age, an
emotion (and a race when asked), then folded into ``visitor_counts`` rows exactly as the
aggregator stores them. Used by the tests, the README screenshot and for trying the dashboard:

    .venv/bin/python dashboard/footfall_dash/demo.py --url sqlite:///.footfall/demo.db --days 35

Example:
    >>> import tempfile
    >>> url = f"sqlite:///{tempfile.mkdtemp()}/demo.db"
    >>> summary = fill_demo(url, days=2, seed=1)
    >>> summary.visitors > 1000, summary.cameras[0]
    (True, 'entrance-north')
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import sqlalchemy as sa

from footfall.db.migrate import upgrade
from footfall.db.models import CameraHealth, VisitorCount
from footfall.db.store import refresh_rollups
from footfall.labels import GENDERS, age_band

# camera -> (relative traffic, share of women, mean age)
DEMO_CAMERAS = {
    "entrance-north": (1.0, 0.54, 37.0),
    "entrance-south": (0.7, 0.50, 41.0),
    "floor1-escalator": (0.45, 0.61, 33.0),
    "hamburg-door": (0.8, 0.47, 39.0),
}
# the escalator sees visitors the Berlin entrances counted already: `~` keeps it out of the totals
DEMO_SITES = ("Berlin/Entrance=entrance-north,entrance-south;Berlin/Floor 1=~floor1-escalator;"
              "Hamburg/Store=hamburg-door")
# Relative traffic per local hour of day: closed at night, lunch and after-work peaks.
HOURLY = np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.01, 0.03, 0.12, 0.35, 0.55, 0.65, 0.75,
                   0.95, 0.9, 0.7, 0.7, 0.8, 1.0, 0.95, 0.7, 0.45, 0.2, 0.06, 0.02])
WEEKDAY = np.array([0.8, 0.85, 0.9, 1.0, 1.2, 1.45, 0.3])  # Monday .. Sunday
EMOTION_P = {"angry": 0.05, "disgust": 0.03, "fear": 0.05, "happy": 0.27, "sad": 0.1, "surprise": 0.06,
             "neutral": 0.44}
RACE_P = {"white": 0.62, "black": 0.08, "asian": 0.12, "indian": 0.08, "others": 0.10}


@dataclass(frozen=True)
class DemoSummary:
    rows: int
    visitors: int
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    cameras: tuple[str, ...]


def demo_frame(start: datetime, end: datetime, seed: int = 0, tz: str = "UTC", peak_per_hour: float = 70.0,
               bucket_s: int = 60, with_race: bool = False, with_emotion: bool = True) -> pd.DataFrame:
    """``visitor_counts`` rows (UTC bucket starts) for the demo cameras in ``[start, end)``."""
    rng = np.random.default_rng(seed)
    buckets = pd.date_range(start, end, freq=f"{bucket_s}s", inclusive="left")
    local = buckets.tz_localize("UTC").tz_convert(tz).tz_localize(None) if tz != "UTC" else buckets
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    profile = np.interp(hour, np.arange(24) + 0.5, HOURLY, period=24)
    day_noise = rng.lognormal(0.0, 0.12, size=int((end - start).days) + 2)
    day_index = ((buckets - buckets[0]).days).to_numpy()
    base = peak_per_hour * bucket_s / 3600.0 * profile * WEEKDAY[local.day_of_week.to_numpy()] * day_noise[day_index]
    parts = []
    for camera, (traffic, female_share, mean_age) in DEMO_CAMERAS.items():
        per_bucket = rng.poisson(base * traffic)
        bucket_of_visitor = np.repeat(np.arange(len(buckets)), per_bucket)
        n = bucket_of_visitor.size
        ages = np.clip(rng.normal(mean_age, 15.0, size=n), 3.0, 92.0)
        visitors = pd.DataFrame({
            "camera_id": camera,
            "bucket_start": buckets[bucket_of_visitor],
            "age_band": [age_band(a) for a in ages],
            "gender": np.where(rng.random(n) < female_share, GENDERS[1], GENDERS[0]),
            "race": rng.choice(list(RACE_P), size=n, p=list(RACE_P.values())) if with_race else "",
            "emotion": rng.choice(list(EMOTION_P), size=n, p=list(EMOTION_P.values())) if with_emotion else "",
            "age": ages,
        })
        parts.append(visitors)
    every = pd.concat(parts, ignore_index=True)
    keys = ["camera_id", "bucket_start", "age_band", "gender", "race", "emotion"]
    rows = every.groupby(keys, sort=True).agg(visitors=("age", "size"), age_sum=("age", "sum")).reset_index()
    rows["bucket_start"] = rows["bucket_start"].dt.to_pydatetime() if len(rows) else rows["bucket_start"]
    return rows


def demo_health(now: datetime) -> list[dict]:
    """``camera_health`` rows: three live cameras and one reconnecting with a stale last frame.

    ``stream_lag`` is the same on every row, as the aggregator writes it (one face stream for all cameras).
    """
    rows = []
    for i, camera in enumerate(DEMO_CAMERAS):
        stale = camera == "hamburg-door"
        rows.append({"camera_id": camera, "state": "reconnecting" if stale else "live",
                     "last_frame_at": now - timedelta(seconds=312 if stale else 1 + i),
                     "frames_per_s": 0.0 if stale else 5.0 - 0.1 * i,
                     "faces_per_s": 0.0 if stale else round(0.9 - 0.15 * i, 2),
                     "stream_lag": 6, "updated_at": now - timedelta(seconds=2)})
    return rows


def fill_demo(url: str, days: int = 35, seed: int = 0, end: datetime | None = None, tz: str = "UTC",
              with_race: bool = False, with_emotion: bool = True, health: bool = True,
              peak_per_hour: float = 70.0) -> DemoSummary:
    """Create the schema at ``url`` if needed and write ``days`` of demo counts ending at ``end``.

    ``end`` (UTC naive, default: now, to the minute) is exclusive; existing demo-camera rows in
    the range are replaced, so running it twice gives the same database.
    """
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    end = end or now.replace(second=0)
    start = end - timedelta(days=days)
    rows = demo_frame(start, end, seed=seed, tz=tz, with_race=with_race, with_emotion=with_emotion,
                      peak_per_hour=peak_per_hour)
    upgrade(url)
    engine = sa.create_engine(url)
    counts, health_table = VisitorCount.__table__, CameraHealth.__table__
    with engine.begin() as conn:
        conn.execute(counts.delete().where(counts.c.camera_id.in_(list(DEMO_CAMERAS)),
                                           counts.c.bucket_start >= start, counts.c.bucket_start < end))
        if len(rows):
            conn.execute(counts.insert(), rows.to_dict("records"))
        refresh_rollups(conn, start, end)  # the hourly and daily sums of what was replaced
        if health:
            conn.execute(health_table.delete().where(health_table.c.camera_id.in_(list(DEMO_CAMERAS))))
            conn.execute(health_table.insert(), demo_health(now))
    engine.dispose()
    return DemoSummary(rows=len(rows), visitors=int(rows["visitors"].sum()), start=start, end=end,
                       cameras=tuple(DEMO_CAMERAS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write demo footfall aggregates to a database.")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL, e.g. sqlite:///.footfall/demo.db")
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timezone", default="UTC", help="local time zone of the opening hours")
    parser.add_argument("--race", action="store_true", help="also record race (off by default)")
    parser.add_argument("--no-emotion", action="store_true")
    args = parser.parse_args(argv)
    summary = fill_demo(args.url, days=args.days, seed=args.seed, tz=args.timezone, with_race=args.race,
                        with_emotion=not args.no_emotion)
    print(f"{summary.visitors} visitors in {summary.rows} rows, {summary.start} – {summary.end} UTC; "
          f"cameras {', '.join(summary.cameras)}; FOOTFALL_SITES='{DEMO_SITES}'")


if __name__ == "__main__":
    main()
