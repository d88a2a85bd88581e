"""The tables behind each chart, k-anonymity suppressed, and the CSV export of exactly them.

A ``View`` is what one chart or table shows. Count views carry ``visitors`` (NaN where hidden) and
``suppressed``; metric views (headline, camera table) carry display strings in ``value``. The app
draws every chart from a View and builds the CSV from the same list, so the export holds exactly
the numbers on screen.

Example:
    >>> import pandas as pd
    >>> from datetime import datetime
    >>> from footfall_dash.data import TimeRange
    >>> counts = pd.DataFrame({"camera_id": ["a", "b"],
    ...     "time": pd.to_datetime(["2024-05-06 09:00", "2024-05-06 10:00"]),
    ...     "age_band": ["25-34", "25-34"], "gender": ["male", "female"],
    ...     "visitors": [40, 3], "age_sum": [1200.0, 90.0]})
    >>> v = footfall_view(counts, TimeRange(datetime(2024, 5, 6), datetime(2024, 5, 7)), "day", "camera_id",
    ...                   ["a", "b"], k=5)
    >>> export_frame([v], k=5)[["view", "period", "camera", "value"]].values.tolist()
    [['footfall_over_time', '2024-05-06', 'a', '40'], ['footfall_over_time', '2024-05-06', 'b', '<5']]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from footfall.labels import GENDERS

from . import data
from .privacy import is_small, shown, suppress, suppressed_label

# Export column names of the dimensions, in the order they appear in the CSV.
EXPORT_DIMENSIONS = {"period": "period", "camera_id": "camera", "site": "site", "gender": "gender",
                     "age_band": "age_band", "emotion": "emotion", "valence": "valence", "race": "race",
                     "weekday": "weekday", "hour": "hour", "metric": "metric",
                     "movement": "movement", "zone": "zone", "dwell_band": "dwell_band"}  # the flow views


@dataclass
class View:
    """One chart's or table's content: ``dims`` columns plus ``visitors``/``suppressed`` or ``value``."""

    key: str
    title: str
    table: pd.DataFrame
    dims: tuple[str, ...]
    resolution: str = "day"  # how ``period`` is written in the export
    notes: list[str] = field(default_factory=list)

    @property
    def hidden_cells(self) -> int:
        return int(self.table["suppressed"].sum()) if "suppressed" in self.table else 0


# --------------------------------------------------------------------------- count views


def footfall_view(counts: pd.DataFrame, rng: data.TimeRange, resolution: str, stack_by: str,
                  cameras: list[str], k: int) -> View:
    """Visitors per period stacked by camera or gender; each series' total is shown elsewhere."""
    table = data.over_time(counts, rng, resolution, stack_by, cameras if stack_by == "camera_id" else None)
    return View("footfall_over_time", "Footfall over time", suppress(table, k, within=stack_by),
                ("period", stack_by), resolution)


def heatmap_view(counts: pd.DataFrame, k: int) -> View:
    """Visitors per weekday x hour of day; the cells add up to the headline total."""
    return View("hour_weekday", "Weekday x hour of day", suppress(data.hour_weekday(counts), k), ("weekday", "hour"))


def pyramid_view(counts: pd.DataFrame, k: int) -> View:
    """Visitors per age band and gender; each gender's column adds up to its headline share."""
    table = data.totals_by(counts, ["age_band", "gender"])
    return View("age_gender", "Age and gender", suppress(table, k, within="gender"), ("age_band", "gender"))


def mix_view(counts: pd.DataFrame, rng: data.TimeRange, resolution: str, column: str, k: int) -> View:
    """Emotion (or valence) mix per period; each period's total is shown in the footfall chart."""
    table = data.over_time(counts, rng, resolution, column)
    title = "Emotion mix over time" if column == "emotion" else "Valence over time"
    return View(f"{column}_over_time", title, suppress(table, k, within="period"), ("period", column), resolution)


def race_view(counts: pd.DataFrame, k: int) -> View:
    """Visitors per race (only built when race is enabled)."""
    return View("race", "Race", suppress(data.totals_by(counts, ["race"]), k), ("race",))


# --------------------------------------------------------------------------- metric views


def _hidden(k: int) -> str:
    return f"hidden ({suppressed_label(k)})"


def headline_view(h: data.Headline, k: int) -> View:
    """Display strings of the headline figures, suppressed where they would reveal < k visitors."""
    total_small = is_small(h.visitors, k)
    genders = suppress(pd.DataFrame({"gender": list(GENDERS), "visitors": [h.by_gender[g] for g in GENDERS]}), k)
    rows: list[tuple[str, str]] = [("Visitors", shown(h.visitors, total_small, k))]
    if h.change_pct is None:
        change = "no data before"
    elif total_small or is_small(h.previous_visitors, k) or is_small(h.current_visitors, k):
        change = _hidden(k)
    else:
        change = f"{h.change_pct:+.1f} %"
    rows.append(("Change vs previous period", change))
    previous_hidden = is_small(h.previous_visitors, k)
    rows.append(("Previous period", shown(h.previous_visitors, previous_hidden, k)))
    rows.append(("Busiest hour", _hidden(k) if total_small else
                 ("–" if h.busiest_hour is None else f"{h.busiest_hour:02d}:00")))
    rows.append(("Median visitors per active hour", _hidden(k) if total_small else
                 ("–" if h.median_per_hour is None else f"{h.median_per_hour:,.1f}")))
    for gender, hidden in zip(genders["gender"], genders["suppressed"], strict=True):
        share = 100.0 * h.by_gender[gender] / h.visitors if h.visitors else None
        text = _hidden(k) if hidden or total_small else ("–" if share is None else f"{share:.0f} %")
        rows.append((f"{gender.capitalize()} share", text))
    rows.append(("Mean age", _hidden(k) if total_small else ("–" if h.mean_age is None else f"{h.mean_age:.1f}")))
    return View("headline", "Headline figures", pd.DataFrame(rows, columns=["metric", "value"]), ("metric",))


CAMERA_COLUMNS = ("Camera", "Site / zone", "Visitors", "Share", "Previous period", "Change",
                  "Female share", "Mean age", "Busiest hour")


def camera_view(summary: pd.DataFrame, groups: dict[str, str], k: int) -> View:
    """Per-camera comparison table as display strings (all columns text, suppressed as ``<k``)."""
    current = suppress(summary[["camera_id", "visitors"]], k)
    previous = suppress(summary[["camera_id", "previous"]], k, value="previous")
    total = summary["visitors"].sum()
    rows = []
    for i, row in summary.iterrows():
        hidden = bool(current.at[i, "suppressed"])
        prev_hidden = bool(previous.at[i, "suppressed"])
        # a two-way split is hidden when either side is small
        gender_hidden = is_small(row["female"], k) or is_small(row["male"], k) or hidden
        if row["previous"] == 0:
            change = "–"
        elif hidden or prev_hidden:
            change = _hidden(k)
        else:
            change = f"{100.0 * (row['current'] - row['previous']) / row['previous']:+.1f} %"
        visitors = row["visitors"]
        rows.append({
            "Camera": row["camera_id"],
            "Site / zone": groups.get(row["camera_id"], ""),
            "Visitors": shown(visitors, hidden, k),
            "Share": _hidden(k) if hidden else ("–" if not total else f"{100.0 * visitors / total:.1f} %"),
            "Previous period": shown(row["previous"], prev_hidden, k),
            "Change": change,
            "Female share": _hidden(k) if gender_hidden else
            ("–" if not visitors else f"{100.0 * row['female'] / visitors:.1f} %"),
            "Mean age": _hidden(k) if hidden else ("–" if not visitors else f"{row['age_sum'] / visitors:.1f}"),
            "Busiest hour": _hidden(k) if hidden else _hour_text(row["busiest_hour"]),
        })
    table = pd.DataFrame(rows, columns=list(CAMERA_COLUMNS))
    if not any(groups.values()):
        table = table.drop(columns="Site / zone")
    return View("cameras", "Camera comparison", table, ("camera_id", "metric"))


def _hour_text(hour) -> str:
    return "–" if hour is None or pd.isna(hour) else f"{int(hour):02d}:00"


# --------------------------------------------------------------------------- export


def _period_text(periods: pd.Series, resolution: str) -> pd.Series:
    fmt = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00"}.get(resolution, "%Y-%m-%d")
    return pd.to_datetime(periods).dt.strftime(fmt)


def _export_part(view: View, k: int) -> pd.DataFrame:
    table = view.table
    if view.key == "cameras":  # wide display table -> long rows (camera, site, metric, value)
        id_columns = [c for c in ("Camera", "Site / zone") if c in table]
        long = table.melt(id_vars=id_columns, var_name="metric", value_name="value")
        part = long.rename(columns={"Camera": "camera", "Site / zone": "site"})
    elif "value" in table:
        part = table.rename(columns=EXPORT_DIMENSIONS)[[EXPORT_DIMENSIONS[d] for d in view.dims] + ["value"]]
    else:
        part = pd.DataFrame({EXPORT_DIMENSIONS[d]: table[d] for d in view.dims})
        if "period" in part:
            part["period"] = _period_text(part["period"], view.resolution)
        if "weekday" in part:
            part["weekday"] = part["weekday"].map(dict(enumerate(data.WEEKDAYS)))
        if "hour" in part:
            part["hour"] = part["hour"].map(lambda h: f"{h:02d}:00")
        part["value"] = [suppressed_label(k) if hidden else str(int(v))
                         for v, hidden in zip(table["visitors"], table["suppressed"], strict=True)]
    part.insert(0, "view", view.key)
    return part


def export_frame(views: list[View], k: int) -> pd.DataFrame:
    """One long table of every view shown: view, the dimension columns in use, value (text).

    Dimension columns that no shown view uses (e.g. race when it is switched off) are absent.
    """
    if not views:
        return pd.DataFrame(columns=["view", "value"])
    parts = [_export_part(v, k) for v in views]
    merged = pd.concat(parts, ignore_index=True)
    order = ["view"] + [c for c in EXPORT_DIMENSIONS.values() if c in merged] + ["value"]
    return merged[order].astype(object).where(merged[order].notna(), "")


def export_csv(frame: pd.DataFrame) -> bytes:
    r"""The CSV bytes the download button serves, from ``export_frame``'s table.

    >>> export_csv(export_frame([], k=5))
    b'view,value\n'
    """
    return frame.to_csv(index=False).encode("utf-8")
