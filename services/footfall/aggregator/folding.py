"""Folding the predictions of one track's crops into one visitor.

Age is the mean of the crops' ages; gender, race and emotion are the arg-max of the mean
probabilities (a soft vote). Attributes switched off by the privacy settings are not kept
at all (stored as ``NOT_RECORDED``).

Example:
    >>> import numpy as np
    >>> from footfall.predictions import Predictions
    >>> v = OpenVisitor(camera_id="door", track_id="door:a:1")
    >>> v.add(["1-0", "2-0"], [100.0, 100.4], Predictions(np.array([30., 34.]), np.array([.8, .6]),
    ...       np.eye(5)[[2, 2]], np.eye(7)[[3, 6]] * .6 + .4 / 7))
    >>> r = v.finalize(bucket_s=60, enable_race=False, enable_emotion=True)
    >>> r.age, r.age_band, r.gender, r.race, r.emotion, r.bucket_start.isoformat()
    (32.0, '25-34', 'female', '', 'happy', '1970-01-01T00:01:00')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from footfall.db.models import NOT_RECORDED
from footfall.db.records import VisitorRecord, bucket_start
from footfall.labels import EMOTIONS, GENDERS, RACES, age_band
from footfall.predictions import Predictions
from footfall.schema import TrackEnd


@dataclass
class OpenVisitor:
    camera_id: str
    track_id: str
    entry_ids: list[str] = field(default_factory=list)  # stream entries to acknowledge when counted
    timestamps: list[float] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)
    gender_sum: float = 0.0
    race_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(RACES)))
    emotion_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS)))
    ended: bool = False
    end: TrackEnd | None = None  # the track_end entry (dwell, crossing, zones)
    last_update: float = 0.0  # monotonic time of the last entry (idle detection)
    _seen: set[str] = field(default_factory=set)

    def add(self, entry_ids: list[str], timestamps: list[float], preds: Predictions) -> None:
        """Fold crops in; an entry delivered twice (redelivery after a crash) counts once."""
        for i, entry_id in enumerate(entry_ids):
            if entry_id in self._seen:
                continue
            self._seen.add(entry_id)
            self.entry_ids.append(entry_id)
            self.timestamps.append(timestamps[i])
            self.ages.append(float(preds.age[i]))
            self.gender_sum += float(preds.gender[i])
            self.race_sum += preds.race[i]
            self.emotion_sum += preds.emotion[i]

    def add_end(self, entry_id: str, end: TrackEnd | None = None) -> None:
        self.ended = True
        self.end = end or self.end
        if entry_id not in self._seen:
            self._seen.add(entry_id)
            self.entry_ids.append(entry_id)

    @property
    def faces(self) -> int:
        return len(self.ages)

    def finalize(self, bucket_s: int, enable_race: bool, enable_emotion: bool) -> VisitorRecord:
        n = self.faces
        if n == 0:
            raise ValueError(f"track {self.track_id} has no faces")
        age = float(np.mean(self.ages))
        return VisitorRecord(
            camera_id=self.camera_id, track_id=self.track_id, bucket_start=bucket_start(min(self.timestamps), bucket_s),
            first_ts=min(self.timestamps), last_ts=max(self.timestamps), faces=n, age=round(age, 2),
            age_band=age_band(age), gender=GENDERS[int(self.gender_sum / n >= 0.5)],
            race=RACES[int(np.argmax(self.race_sum))] if enable_race else NOT_RECORDED,
            emotion=EMOTIONS[int(np.argmax(self.emotion_sum))] if enable_emotion else NOT_RECORDED,
            dwell_s=self.end.dwell if self.end else max(self.timestamps) - min(self.timestamps),
            crossing=self.end.crossing if self.end else "", zones=self.end.zones if self.end else (),
            end_bucket_start=bucket_start(max(self.end.ts if self.end else 0.0, max(self.timestamps)), bucket_s),
        )
