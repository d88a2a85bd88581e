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
    ... # doctest: +NORMALIZE_WHITESPACE
    [['footfall_over_time', '2024-05-06', 'a', '40'], ['footfall_over_time', '2024-05-06', 'b', '<5'],
     ['footfall_over_time', '2024-05-06', 'hidden (<5)', '<5']]
"""

from __future__ import annotations

import re
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
    measure: str = "visitors"  # the column shown and exported (suppression always works on ``visitors``)
    band: pd.DataFrame | None = None  # stacked charts: per period the hidden visitors and the total (see hidden_band)
    notes: list[str] = field(default_factory=list)

    @property
    def hidden_cells(self) -> int:
        return int(self.table["suppressed"].sum()) if "suppressed" in self.table else 0


# --------------------------------------------------------------------------- count views


HIDDEN_BAND = "hidden"  # the stacked charts' band of suppressed cells (label: "hidden (<k)")


def hidden_band(raw: pd.DataFrame, suppressed: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per period: ``hidden`` (visitors in suppressed cells), ``band_shown`` (that sum is at least k,
    so it can be disclosed), ``total`` (all visitors; None when the band is hidden and not zero) and
    ``shown`` (the sum of the cells drawn). Stacked bars then add up to the true total and shares
    are taken of it: dropping hidden cells would inflate the shares of the others.

    >>> raw = pd.DataFrame({"period": [1, 1, 1, 2, 2], "x": list("abcab"), "visitors": [50, 3, 4, 0, 2]})
    >>> from .privacy import suppress
    >>> hidden_band(raw, suppress(raw, 5, within="period"), 5).values.tolist()
    [[1, 7, True, 57, 50], [2, 2, False, <NA>, 0]]
    """
    hidden_values = raw["visitors"].where(suppressed["suppressed"].to_numpy(), 0)
    by_period = pd.DataFrame({"period": raw["period"], "hidden": hidden_values,
                              "shown": raw["visitors"].where(~suppressed["suppressed"].to_numpy(), 0)})
    band = by_period.groupby("period", sort=True).sum().reset_index()
    band["band_shown"] = ~is_small(band["hidden"], k)
    band["total"] = (band["shown"] + band["hidden"]).astype("Int64").where(band["band_shown"] | band["hidden"].eq(0))
    return band[["period", "hidden", "band_shown", "total", "shown"]]


def hidden_share(view: View) -> float:
    """Share of the visitors of a stacked view that sit in suppressed cells (0 when nothing is hidden)."""
    if view.band is None:
        return 0.0
    everyone = float(view.band["shown"].sum() + view.band["hidden"].sum())
    return float(view.band["hidden"].sum()) / everyone if everyone else 0.0


def footfall_view(counts: pd.DataFrame, rng: data.TimeRange, resolution: str, stack_by: str,
                  cameras: list[str], k: int) -> View:
    """Visitors per period stacked by camera or gender, with the band of hidden visitors per period."""
    table = data.over_time(counts, rng, resolution, stack_by, cameras if stack_by == "camera_id" else None)
    shown_table = suppress(table, k, within=stack_by)
    return View("footfall_over_time", "Footfall over time", shown_table, ("period", stack_by), resolution,
                band=hidden_band(table, shown_table, k))


def heatmap_view(counts: pd.DataFrame, rng: data.TimeRange, k: int, opening: frozenset[int] | None = None) -> View:
    """Mean visitors per day for each weekday x hour of day (the sum over that weekday's days in the
    range, divided by their number); a cell is hidden when its sum is below k."""
    table = suppress(data.hour_weekday(counts, rng, opening), k)
    table["mean"] = table["mean"].where(~table["suppressed"])
    return View("hour_weekday", "Mean visitors per day, weekday x hour of day", table, ("weekday", "hour"),
                measure="mean")


def pyramid_view(counts: pd.DataFrame, k: int) -> View:
    """Visitors per age band and gender; each gender's column adds up to its headline share."""
    table = data.totals_by(counts, ["age_band", "gender"])
    return View("age_gender", "Age and gender", suppress(table, k, within="gender"), ("age_band", "gender"))


def mix_view(counts: pd.DataFrame, rng: data.TimeRange, resolution: str, column: str, k: int) -> View:
    """Emotion (or valence) mix per period; each period's total is shown in the footfall chart."""
    table = data.over_time(counts, rng, resolution, column)
    title = "Emotion mix over time" if column == "emotion" else "Valence over time"
    shown_table = suppress(table, k, within="period")
    return View(f"{column}_over_time", title, shown_table, ("period", column), resolution,
                band=hidden_band(table, shown_table, k))


def race_view(counts: pd.DataFrame, k: int) -> View:
    """Visitors per race (only built when race is enabled)."""
    return View("race", "Race", suppress(data.totals_by(counts, ["race"]), k), ("race",))


# --------------------------------------------------------------------------- metric views


def _hidden(k: int) -> str:
    return f"hidden ({suppressed_label(k)})"


NOT_COMPARABLE = "not comparable"


def headline_view(h: data.Headline, k: int, compare: str = "previous period") -> View:
    """Display strings of the headline figures, suppressed where they would reveal < k visitors."""
    total_small = is_small(h.visitors, k)
    genders = suppress(pd.DataFrame({"gender": list(GENDERS), "visitors": [h.by_gender[g] for g in GENDERS]}), k)
    rows: list[tuple[str, str]] = [("Visitors", shown(h.visitors, total_small, k))]
    if not h.comparable:
        change = NOT_COMPARABLE
    elif h.change_pct is None:
        change = "no data before"
    elif total_small or is_small(h.previous_visitors, k) or is_small(h.current_visitors, k):
        change = _hidden(k)
    else:
        change = f"{h.change_pct:+.1f} %"
    rows.append((f"Change vs {compare}", change))
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
        if not row["comparable"]:
            change = NOT_COMPARABLE
        elif row["previous"] == 0:
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


def site_view(totals: pd.DataFrame, hours: pd.DataFrame, current: pd.Series, cameras: list[str],
              groups: dict[str, str], previous: pd.Series, comparable: dict[str, bool], k: int) -> View:
    """Site against site: the camera table's figures summed over each site's (counting) cameras."""
    site = {cam: data.site_of(groups.get(cam) or "Other") for cam in cameras}
    sites = sorted(set(site.values()))

    def by_site(per_camera: pd.Series) -> pd.Series:
        return per_camera.groupby(per_camera.index.map(lambda c: site.get(c, "Other"))).sum()

    site_comparable = {s: all(comparable.get(c, True) for c in cameras if site[c] == s) for s in sites}
    summary = data.camera_summary(totals.assign(camera_id=totals["camera_id"].map(site)),
                                  hours.assign(camera_id=hours["camera_id"].map(site)), by_site(current), sites,
                                  by_site(previous), site_comparable)
    view = camera_view(summary, {}, k)
    view.table = view.table.rename(columns={"Camera": "Site"})
    view.key, view.title = "sites", "Site comparison"
    return view


def _hour_text(hour) -> str:
    return "–" if hour is None or pd.isna(hour) else f"{int(hour):02d}:00"


# --------------------------------------------------------------------------- export


def _period_text(periods: pd.Series, resolution: str) -> pd.Series:
    fmt = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00"}.get(resolution, "%Y-%m-%d")
    return pd.to_datetime(periods).dt.strftime(fmt)


def _export_part(view: View, k: int) -> pd.DataFrame:
    table = view.table
    if view.key in ("cameras", "sites"):  # wide display table -> long rows (camera, site, metric, value)
        id_columns = [c for c in ("Camera", "Site", "Site / zone") if c in table]
        long = table.melt(id_vars=id_columns, var_name="metric", value_name="value")
        part = long.rename(columns={"Camera": "camera", "Site": "site", "Site / zone": "site"})
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
        decimals = 0 if view.measure == "visitors" else 1
        part["value"] = [suppressed_label(k) if hidden else ("closed" if pd.isna(v) else f"{v:.{decimals}f}")
                         for v, hidden in zip(table[view.measure], table["suppressed"], strict=True)]
    if view.band is not None and view.band["hidden"].gt(0).any():  # the band is in the CSV as on the chart
        band = view.band[view.band["hidden"] > 0]
        rows = pd.DataFrame({"period": _period_text(band["period"], view.resolution),
                             EXPORT_DIMENSIONS[view.dims[1]]: f"{HIDDEN_BAND} ({suppressed_label(k)})",
                             "value": [f"{int(h)}" if ok else suppressed_label(k)
                                       for h, ok in zip(band["hidden"], band["band_shown"], strict=True)]})
        part = pd.concat([part, rows], ignore_index=True)
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


def numeric_value(text: str) -> float | None:
    """The number a display string stands for (None for a hidden or non-numeric value).

    >>> [numeric_value(t) for t in ("1,234", "+17.1 %", "09:00", "<5", "hidden (<5)", "not comparable")]
    [1234.0, 17.1, 9.0, None, None, None]
    """
    text = str(text).strip()
    if re.fullmatch(r"\d{2}:00", text):
        return float(text[:2])  # an hour of day
    cleaned = text.replace(",", "").removesuffix("%").strip()
    try:
        return float(cleaned)
    except ValueError:
        return None


def export_csv(frame: pd.DataFrame, header: dict[str, str] | None = None) -> bytes:
    r"""The CSV the download button serves: ``# key: value`` header lines, then the rows of ``export_frame``.

    ``value`` holds numbers as numbers (empty where hidden or not a number), ``hidden`` says whether
    k-anonymity hid the value, ``shown`` is the text on screen. Read it back with
    ``pd.read_csv(path, comment="#")``.

    >>> export_csv(export_frame([], k=5), {"time zone": "UTC"})
    b'# time zone: UTC\nview,value,hidden,shown\n'
    """
    out = frame.copy()
    shown_text = out.pop("value").astype(str) if "value" in out else pd.Series(dtype=str)
    out["value"] = [numeric_value(t) for t in shown_text]
    out["hidden"] = [t.startswith("<") or t.startswith("hidden") for t in shown_text]
    out["shown"] = shown_text
    lines = "".join(f"# {key}: {' '.join(str(text).split())}\n" for key, text in (header or {}).items())
    return lines.encode("utf-8") + out.to_csv(index=False).encode("utf-8")
