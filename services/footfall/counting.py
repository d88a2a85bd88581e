"""Footfall semantics of a track: did the visitor enter, leave or pass by, how long did they stay, where.

Per camera, optionally (settings of the ingest, coordinates normalized to the frame, 0..1):

- a counting line ``FOOTFALL_COUNT_LINES="door=x1,y1,x2,y2;till=..."``: crossing it from its left
  to its right side, as seen on the image walking from (x1, y1) to (x2, y2), is an *entry*; the other
  way an *exit*; a visitor whose crossings cancel out (or who never crossed) is a *passer-by*. E.g.
  ``door=0.5,1,0.5,0`` (drawn upwards through the middle): walking left to right enters;
- polygon zones ``FOOTFALL_COUNT_ZONES="door/queue=x1,y1,x2,y2,x3,y3,...;door/shelf=..."``: per zone,
  whether the visitor's face was in it and for how long (first to last match inside).

Dwell is first to last seen of the track, so within one processed frame of the truth at each end.

Example:
    >>> lines = parse_count_lines("door=0.5,1,0.5,0")
    >>> lines["door"].crossing([(0.0, 0.1, 0.5), (0.2, 0.4, 0.5), (0.4, 0.7, 0.5)])
    'entry'
    >>> lines["door"].crossing([(0.0, 0.7, 0.5), (0.2, 0.3, 0.5)]), lines["door"].crossing([(0.0, 0.1, 0.5)])
    ('exit', 'passer-by')
    >>> zones = parse_count_zones("door/queue=0,0,0.5,0,0.5,1,0,1")
    >>> zones["door"][0].dwell([(0.0, 0.1, 0.5), (1.5, 0.4, 0.5), (2.0, 0.9, 0.5)])
    1.5
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from footfall.schema import CROSSINGS, MAX_ZONE_NAME

ENTRY, EXIT, PASSER_BY = CROSSINGS
Path = list[tuple[float, float, float]]  # (time, x, y) of a track's matches, x and y normalized to the frame


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what}: coordinates must be numbers, got {text!r}") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{what}: coordinates are normalized to the frame (0..1), got {text!r}")
    return values


def _items(spec: str, what: str) -> list[tuple[str, str]]:
    items = []
    for item in (p.strip() for p in spec.split(";") if p.strip()):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{what}: expected name=coordinates, got {item!r}")
        items.append((name.strip(), value.strip()))
    return items


@dataclass(frozen=True)
class CountingLine:
    x1: float
    y1: float
    x2: float
    y2: float

    def _side(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Positive on the line's right side (image coordinates, y down), negative on its left."""
        return (self.x2 - self.x1) * (y - self.y1) - (self.y2 - self.y1) * (x - self.x1)

    def crossing(self, path: Path) -> str:
        """entry / exit / passer-by: the net count of the path's steps through the segment."""
        if len(path) < 2:
            return PASSER_BY
        p = np.asarray(path, np.float64)[:, 1:]
        side = self._side(p[:, 0], p[:, 1])
        # A step crosses the segment when its ends lie on both sides of the line and the line's ends lie on
        # both sides of the step.
        a, b = p[:-1], p[1:]
        ex, ey = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
        end1 = ex * (self.y1 - a[:, 1]) - ey * (self.x1 - a[:, 0])
        end2 = ex * (self.y2 - a[:, 1]) - ey * (self.x2 - a[:, 0])
        through = (np.sign(side[:-1]) * np.sign(side[1:]) < 0) & (np.sign(end1) * np.sign(end2) <= 0)
        net = int(np.sum(through & (side[1:] > 0))) - int(np.sum(through & (side[1:] < 0)))
        return ENTRY if net > 0 else EXIT if net < 0 else PASSER_BY


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[tuple[float, float], ...]

    def contains(self, x: float, y: float) -> bool:
        return cv2.pointPolygonTest(np.array(self.polygon, np.float32), (float(x), float(y)), False) >= 0

    def dwell(self, path: Path) -> float | None:
        """First to last match inside the zone, seconds; None when the visitor never was in it."""
        times = [t for t, x, y in path if self.contains(x, y)]
        return (max(times) - min(times)) if times else None


def parse_count_lines(spec: str) -> dict[str, CountingLine]:
    """``"door=0.5,1,0.5,0;till=0,0.6,1,0.6"`` -> {camera id: line}."""
    lines = {}
    for camera, value in _items(spec, "FOOTFALL_COUNT_LINES"):
        values = _numbers(value, f"FOOTFALL_COUNT_LINES {camera}")
        if len(values) != 4:
            raise ValueError(f"FOOTFALL_COUNT_LINES {camera}: a line is x1,y1,x2,y2, got {value!r}")
        if values[:2] == values[2:]:
            raise ValueError(f"FOOTFALL_COUNT_LINES {camera}: the line's two points are the same")
        if camera in lines:
            raise ValueError(f"FOOTFALL_COUNT_LINES: camera {camera!r} has two lines")
        lines[camera] = CountingLine(*values)
    return lines


def parse_count_zones(spec: str) -> dict[str, list[Zone]]:
    """``"door/queue=0,0,0.5,0,0.5,1;door/shelf=..."`` -> {camera id: zones}."""
    zones: dict[str, list[Zone]] = {}
    for key, value in _items(spec, "FOOTFALL_COUNT_ZONES"):
        camera, sep, name = key.partition("/")
        if not sep or not camera or not name:
            raise ValueError(f"FOOTFALL_COUNT_ZONES: expected camera/zone=x1,y1,..., got {key!r}")
        if len(name) > MAX_ZONE_NAME:
            raise ValueError(f"FOOTFALL_COUNT_ZONES: zone name {name!r} is over {MAX_ZONE_NAME} characters")
        values = _numbers(value, f"FOOTFALL_COUNT_ZONES {key}")
        if len(values) < 6 or len(values) % 2:
            raise ValueError(f"FOOTFALL_COUNT_ZONES {key}: a polygon is at least 3 x,y points, got {value!r}")
        if any(z.name == name for z in zones.get(camera, [])):
            raise ValueError(f"FOOTFALL_COUNT_ZONES: camera {camera!r} has two zones named {name!r}")
        zones.setdefault(camera, []).append(Zone(name, tuple(zip(values[::2], values[1::2]))))
    return zones
