"""Plotly figures drawn from suppressed ``views.View`` tables (hidden cells are never plotted).

Example:
    >>> import pandas as pd
    >>> counts = pd.DataFrame({"camera_id": ["a"] * 2, "time": pd.to_datetime(["2024-05-06 09:00"] * 2),
    ...     "age_band": ["25-34", "35-44"], "gender": ["male", "female"], "visitors": [40, 3],
    ...     "age_sum": [1200.0, 120.0]})
    >>> from footfall_dash.views import pyramid_view
    >>> fig = pyramid_figure(pyramid_view(counts, k=5), k=5)
    >>> [trace.name for trace in fig.data]
    ['male', 'female']
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import data
from .privacy import shown, suppressed_label
from .views import HIDDEN_BAND, View

# One colour means one thing everywhere: gender, emotion and valence colours are fixed, and cameras get
# colours from a palette that none of those use, by the camera's place among all cameras (so a filter
# never recolours a camera).
GENDER_COLORS = {"male": "#3A6EA5", "female": "#D65A7E"}
EMOTION_COLORS = {"angry": "#C8453D", "disgust": "#8C6D31", "fear": "#7E57A6", "happy": "#F2B134",
                  "sad": "#2E4057", "surprise": "#EE8A4B", "neutral": "#9AA3AE", data.NOT_RECORDED_LABEL: "#D5D9DE"}
VALENCE_COLORS = {"positive": "#3FA36B", "neutral": "#9AA3AE", "negative": "#8E2C48",
                  data.NOT_RECORDED_LABEL: "#D5D9DE"}
HIDDEN_COLOR = "#E6E8EB"  # the "hidden (<k)" band of stacked charts
CAMERA_COLORS = ("#1B7F79", "#17BECF", "#7F7F00", "#8FB339", "#2F5233", "#C9A66B", "#4D4D4D", "#7FD1B9",
                 "#A0A0FF", "#B8860B")
RACE_COLOR = "#5B6F8F"
MAX_BARS = 400  # above this many periods, time series are drawn as stacked areas
MAX_BAR_POINTS = 3_000  # or above this many periods x series (a bar carries its date and hover text: ~60 bytes)
_PERIOD_HOVER = {"minute": "%Y-%m-%d %H:%M", "hour": "%a %Y-%m-%d %H:00", "day": "%a %Y-%m-%d",
                 "week": "week of %Y-%m-%d"}


def _style(fig: go.Figure, height: int, legend: bool = True) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=8, r=8, t=36, b=8), showlegend=legend,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, title=None,
                                  traceorder="normal"),
                      font=dict(size=13), hoverlabel=dict(namelength=-1))
    return fig


def camera_colors(all_cameras: list[str]) -> dict[str, str]:
    """{camera: colour} from the camera's place among all cameras, whatever is selected.

    >>> camera_colors(["a", "b"])["b"] == camera_colors(["a", "b", "c"])["b"] == CAMERA_COLORS[1]
    True
    """
    return {cam: CAMERA_COLORS[i % len(CAMERA_COLORS)] for i, cam in enumerate(sorted(all_cameras))}


def _compact(values) -> np.ndarray:
    """Counts as the smallest unsigned integers that hold them (sent base64-encoded); hidden cells are 0
    here, their visitors are in the hidden band."""
    counts = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    return counts.astype(np.uint16 if counts.max(initial=0) < 2**16 else np.uint32)


_PERIOD_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 7 * 86_400_000}


def stacked_time_figure(view: View, k: int, palette: dict[str, str],
                        y_title: str = "visitors", height: int = 360) -> go.Figure:
    """Stacked bars (areas for long series) of ``visitors`` per period and series.

    Suppressed cells go into a grey "hidden (<k)" band on top (drawn where it holds at least k
    visitors), so the stack reaches the true total; the hover shows each series' share of that
    total and the total itself. Long series (areas) are sent compactly: a start and a step instead
    of one date per point, 16-bit counts, no per-point hover text (the hover shows the value).
    """
    table = view.table
    series_column = view.dims[1]
    periods = table["period"].nunique()
    many = periods > MAX_BARS or periods * table[series_column].nunique() > MAX_BAR_POINTS
    hover_time = _PERIOD_HOVER[view.resolution]
    band = view.band.set_index("period") if view.band is not None else None
    traces: list[dict] = []

    def add(name: str, x, y, text, color: str) -> None:
        if many:  # every series covers the same full grid of periods (data.over_time)
            traces.append(dict(type="scatter", x0=pd.Timestamp(x.iloc[0] if hasattr(x, "iloc") else x[0]),
                               dx=_PERIOD_MS[view.resolution], y=_compact(y), name=name,
                               hovertemplate=f"{name}: %{{y:,.0f}}<extra></extra>", mode="lines",
                               stackgroup="one", line=dict(width=0.5, color=color)))
        else:
            traces.append(dict(type="bar", x=x, y=y, name=name, customdata=text, marker=dict(color=color),
                               hovertemplate=f"{name}: %{{customdata}}<extra></extra>"))

    for name, part in table.groupby(series_column, sort=False):
        text = None
        if not many:
            totals = band["total"].reindex(part["period"]).to_numpy() if band is not None else [None] * len(part)
            text = [shown(v, s, k) + ("" if s or pd.isna(t) or not t else f" ({100.0 * v / t:.0f} %)")
                    for v, s, t in zip(part["visitors"], part["suppressed"], totals, strict=True)]
        add(str(name), part["period"], part["visitors"], text, palette[str(name)])
    if band is not None and band["hidden"].gt(0).any():
        label = f"{HIDDEN_BAND} ({suppressed_label(k)})"
        heights = band["hidden"].where(band["band_shown"], 0)
        text = None if many else [
            (f"{int(h):,}" + ("" if pd.isna(t) or not t else f" ({100.0 * h / t:.0f} %)")) if ok else
            (suppressed_label(k) if h else "0")
            for h, ok, t in zip(band["hidden"], band["band_shown"], band["total"], strict=True)]
        add(label, band.index, heights, text, HIDDEN_COLOR)
    if band is not None and not many:  # the period's total in the unified hover (an invisible trace)
        total_text = [f"{int(s):,} + {suppressed_label(k)}" if pd.isna(t) else f"{int(t):,}"
                      for t, s in zip(band["total"], band["shown"], strict=True)]
        traces.append(dict(type="scatter", x=band.index, y=[0] * len(band), mode="markers",
                           marker=dict(opacity=0), name="total", showlegend=False, customdata=total_text,
                           hovertemplate="<b>total: %{customdata}</b><extra></extra>"))
    # traces built here from checked columns: plotly's per-property validation of 50 stacked series
    # took longer than reading them from the database (0.5 s against 0.01 s unvalidated)
    fig = go.Figure(data=traces, _validate=False)
    fig.update_layout(barmode="stack", bargap=0.12, hovermode="x unified",
                      xaxis=dict(hoverformat=hover_time, title=None, type="date"),
                      yaxis=dict(title=y_title, rangemode="tozero"))
    return _style(fig, height)


def heatmap_figure(view: View, k: int, height: int = 320) -> go.Figure:
    """Weekday x hour-of-day heatmap of mean visitors per day; hidden cells are blank and read ``<k``."""
    table = view.table.sort_values(["weekday", "hour"])
    z = table[view.measure].to_numpy(dtype=float).reshape(7, 24)
    hidden = table["suppressed"].to_numpy().reshape(7, 24)
    label = np.where(hidden, suppressed_label(k), "")
    hover = np.array([suppressed_label(k) if s else ("closed (not in the averages)" if pd.isna(m) else
                                                     f"{m:,.1f} per day ({int(v):,} on {d} days)")
                      for m, v, s, d in zip(table[view.measure], table["visitors"], table["suppressed"],
                                            table["days"], strict=True)], dtype=object).reshape(7, 24)
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{h:02d}" for h in range(24)], y=list(data.WEEKDAYS), text=label, texttemplate="%{text}",
        textfont=dict(size=9, color="#8A94A3"),
        customdata=hover, hovertemplate="%{y} %{x}:00: %{customdata}<extra></extra>",
        colorscale=[[0, "#F3F6FA"], [0.35, "#A9C4E4"], [1, "#1F4E8C"]], xgap=2, ygap=2,
        colorbar=dict(title=dict(text="mean / day"), thickness=12)))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=0, dtick=2, title="hour of day")
    return _style(fig, height, legend=False)


def pyramid_figure(view: View, k: int, height: int = 360) -> go.Figure:
    """Population pyramid: age bands, men to the left, women to the right; hidden bars read ``<k``."""
    table = view.table
    bands = data.categories(table, "age_band")
    fig = go.Figure()
    largest = float(np.nanmax(table["visitors"].to_numpy(dtype=float))) if table["visitors"].notna().any() else 0.0
    for gender, sign in (("male", -1), ("female", 1)):
        part = table[table["gender"] == gender].set_index("age_band").reindex(bands)
        values = part["visitors"].fillna(0).to_numpy(dtype=float)
        text = [suppressed_label(k) if s else "" for s in part["suppressed"]]
        fig.add_trace(go.Bar(
            y=bands, x=sign * values, orientation="h", name=gender, marker_color=GENDER_COLORS[gender],
            text=text, textposition="outside", cliponaxis=False,
            customdata=[shown(v, s, k) for v, s in zip(part["visitors"], part["suppressed"], strict=True)],
            hovertemplate=f"{gender} %{{y}}: %{{customdata}}<extra></extra>"))
    ticks = _symmetric_ticks(largest)
    fig.update_layout(barmode="relative", bargap=0.15,
                      xaxis=dict(tickvals=ticks, ticktext=[f"{abs(t):,.0f}" for t in ticks], title="visitors",
                                 range=[-largest * 1.15 - 1, largest * 1.15 + 1]),
                      yaxis=dict(title=None, categoryorder="array", categoryarray=bands))
    return _style(fig, height)


def _symmetric_ticks(largest: float) -> list[float]:
    """Tick positions for a +-largest axis, labelled by absolute value.

    >>> _symmetric_ticks(950)
    [-500.0, 0.0, 500.0]
    """
    if largest <= 0:
        return [0.0]
    raw = largest / 2
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    count = int(largest // step)
    return [float(i * step) for i in range(-count, count + 1)]


def category_bar_figure(view: View, k: int, column: str, height: int = 300) -> go.Figure:
    """Horizontal bars of visitors per category (used for race)."""
    table = view.table
    text = [shown(v, s, k) for v, s in zip(table["visitors"], table["suppressed"], strict=True)]
    fig = go.Figure(go.Bar(y=table[column], x=table["visitors"].fillna(0), orientation="h", marker_color=RACE_COLOR,
                           text=text, textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{text}<extra></extra>"))
    fig.update_layout(yaxis=dict(autorange="reversed", title=None), xaxis=dict(title="visitors"))
    return _style(fig, height, legend=False)


def static_config(printable: bool) -> dict:
    """Plotly config: one toolbar button, "download as PNG" (drawn in the browser, no server or outside
    host involved); fully static (no hover, no zoom, no toolbar) in the printable view."""
    if printable:
        return {"displaylogo": False, "displayModeBar": False, "staticPlot": True}
    return {"displaylogo": False, "displayModeBar": True, "modeBarButtons": [["toImage"]],
            "toImageButtonOptions": {"format": "png", "scale": 2}}


def hidden_note(view: View, k: int) -> str:
    """Caption under a chart saying how many cells are hidden ("" when none)."""
    n = view.hidden_cells
    if not n:
        return ""
    text = f"{n} value{'s' if n != 1 else ''} hidden ({suppressed_label(k)} visitors, or needed to protect one)."
    if view.band is not None:
        text += (f" Stacked charts draw the hidden visitors as the grey \"{HIDDEN_BAND} ({suppressed_label(k)})\" "
                 f"band where a period's hidden cells hold at least {k}, and shares are of the full total.")
    return text


def frame_for_table(table: pd.DataFrame) -> pd.DataFrame:
    """Display copy of a wide text table with a clean index for ``st.dataframe``."""
    return table.reset_index(drop=True)
