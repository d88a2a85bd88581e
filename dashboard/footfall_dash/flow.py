"""Footfall flow views: entries vs exits, occupancy over the day, dwell distribution, per zone.

Read from ``flow_counts`` and ``dwell_counts`` (written by the aggregator from the ingest's
counting lines and zones, see ``footfall.counting``). Every figure follows the k-anonymity policy
of ``privacy``: a count of 1 to k-1 visitors reads ``<k``, with complementary suppression within
each series; occupancy (people inside: entries minus exits since the start of the day, per hour) is
hidden while 1 to k-1 people are inside. The views join the CSV export like every other view.
Cameras without a counting line record no entries or exits; without zones, no zone rows: the
section only shows what the database holds.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
from sqlalchemy import Engine

from footfall.db.models import DwellCount, FlowCount
from footfall.labels import DWELL_BANDS

from . import data
from .privacy import is_small, shown, suppress
from .views import View

MOVEMENTS = {"entries": "entries", "exits": "exits", "passers_by": "passers-by"}
MOVEMENT_COLORS = {"entries": "#2e7d32", "exits": "#c62828", "passers-by": "#9e9e9e"}
WHOLE_VIEW = ""  # the zone of a camera's whole view (its counting line)


def load_flow(engine: Engine, rng: data.TimeRange, cameras: list[str] | None = None, tz: str = "UTC",
              grain: str = "minute") -> pd.DataFrame:
    """Columns: camera_id, zone, time (local bucket start), visitors, entries, exits, passers_by; rows
    summed up to ``grain`` from the rollups (``data.read_cells``)."""
    return data.read_cells(engine, FlowCount, ["camera_id", "zone"], rng, cameras, tz=tz, grain=grain)


def load_dwell(engine: Engine, rng: data.TimeRange, cameras: list[str] | None = None, tz: str = "UTC",
               by_time: bool = True) -> pd.DataFrame:
    """Columns: camera_id, zone, dwell_band, [time (local bucket start)], visitors (``by_time`` False: summed
    over the range, from the daily rollup where it fits)."""
    return data.read_cells(engine, DwellCount, ["camera_id", "zone", "dwell_band"], rng, cameras, tz=tz,
                           grain="minute" if by_time else "day", by_time=by_time)


def movement_view(flow: pd.DataFrame, rng: data.TimeRange, resolution: str, k: int) -> View:
    """Entries, exits and passers-by per period (whole camera views, selected cameras summed)."""
    whole = flow[flow["zone"] == WHOLE_VIEW].assign(period=lambda f: data.period_start(f["time"], resolution))
    sums = whole.groupby("period")[list(MOVEMENTS)].sum().reindex(data.periods(rng, resolution), fill_value=0)
    sums.index.name = "period"
    long = sums.rename(columns=MOVEMENTS).reset_index().melt(id_vars="period", var_name="movement",
                                                             value_name="visitors")
    return View("entries_exits", "Entries and exits", suppress(long, k, within="movement"), ("period", "movement"),
                resolution)


def occupancy_view(flow: pd.DataFrame, rng: data.TimeRange, k: int) -> View:
    """People inside at the end of each hour: entries minus exits since the start of that day (never below 0)."""
    whole = flow[flow["zone"] == WHOLE_VIEW].assign(period=lambda f: data.period_start(f["time"], "hour"))
    net = (whole["entries"] - whole["exits"]).groupby(whole["period"]).sum()
    net = net.reindex(data.periods(rng, "hour"), fill_value=0)
    inside = net.groupby(net.index.normalize()).cumsum().clip(lower=0)
    table = pd.DataFrame({"period": inside.index, "visitors": inside.to_numpy(dtype=float)})
    hidden = is_small(table["visitors"].to_numpy(), k)
    table["visitors"] = table["visitors"].where(~hidden)
    table["suppressed"] = hidden
    return View("occupancy", "Occupancy over the day", table, ("period",), "hour")


def dwell_view(dwell: pd.DataFrame, k: int, zone: str = WHOLE_VIEW) -> View:
    """Visitors per dwell band (first to last seen), in the bands' order."""
    part = dwell[dwell["zone"] == zone].groupby("dwell_band")["visitors"].sum()
    bands = [label for label, _, _ in DWELL_BANDS]
    table = pd.DataFrame({"dwell_band": bands, "visitors": part.reindex(bands, fill_value=0).to_numpy()})
    return View("dwell", "Dwell time", suppress(table, k), ("dwell_band",))


def zone_view(flow: pd.DataFrame, dwell: pd.DataFrame, k: int) -> View:
    """Visitors per zone and dwell band (zones of the selected cameras)."""
    zones = sorted(set(flow.loc[flow["zone"] != WHOLE_VIEW, "zone"]))
    bands = [label for label, _, _ in DWELL_BANDS]
    part = dwell[dwell["zone"].isin(zones)].groupby(["zone", "dwell_band"])["visitors"].sum()
    index = pd.MultiIndex.from_product([zones, bands], names=["zone", "dwell_band"])
    table = part.reindex(index, fill_value=0).reset_index()
    return View("zones", "Zones: visitors by time spent", suppress(table, k, within="zone"), ("zone", "dwell_band"))


def flow_views(engine: Engine, rng: data.TimeRange, cameras: list[str] | None, tz: str, resolution: str,
               k: int) -> dict[str, View]:
    """The flow views that have data in ``rng`` (none when the cameras record no flow)."""
    # occupancy is drawn per hour, dwell and zones over the whole range: hours and days from the rollups
    flow = load_flow(engine, rng, cameras, tz, grain="minute" if resolution == "minute" else "hour")
    dwell = load_dwell(engine, rng, cameras, tz, by_time=False)
    out: dict[str, View] = {}
    if (flow[list(MOVEMENTS)].to_numpy().sum() if len(flow) else 0) > 0:
        out["entries_exits"] = movement_view(flow, rng, resolution, k)
        out["occupancy"] = occupancy_view(flow, rng, k)
    if len(dwell):
        out["dwell"] = dwell_view(dwell, k)
    if (flow["zone"] != WHOLE_VIEW).any():
        out["zones"] = zone_view(flow, dwell, k)
    return out


# --------------------------------------------------------------------------- charts


def _style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.15))
    return fig


def movement_figure(view: View, k: int) -> go.Figure:
    fig = go.Figure()
    for name, part in view.table.groupby("movement", sort=False):
        text = [shown(v, s, k) for v, s in zip(part["visitors"], part["suppressed"], strict=True)]
        fig.add_trace(go.Bar(x=part["period"], y=part["visitors"], name=name, customdata=text,
                             marker_color=MOVEMENT_COLORS[name], hovertemplate=f"{name}: %{{customdata}}<extra></extra>"))
    fig.update_layout(barmode="group", hovermode="x unified", yaxis=dict(title="visitors", rangemode="tozero"))
    return _style(fig, 320)


def occupancy_figure(view: View, k: int) -> go.Figure:
    table = view.table
    text = [shown(v, s, k) for v, s in zip(table["visitors"], table["suppressed"], strict=True)]
    fig = go.Figure(go.Scatter(x=table["period"], y=table["visitors"], mode="lines", line_shape="hv",
                               customdata=text, hovertemplate="%{x|%a %d %b %H:00}: %{customdata} inside<extra></extra>",
                               line=dict(color="#1565c0")))
    fig.update_layout(yaxis=dict(title="people inside", rangemode="tozero"))
    return _style(fig, 300)


def band_figure(view: View, k: int, column: str = "dwell_band") -> go.Figure:
    fig = go.Figure()
    groups = view.table.groupby("zone", sort=False) if "zone" in view.table else [("", view.table)]
    for name, part in groups:
        text = [shown(v, s, k) for v, s in zip(part["visitors"], part["suppressed"], strict=True)]
        fig.add_trace(go.Bar(x=part[column], y=part["visitors"].fillna(0), name=name or "visitors", text=text,
                             textposition="outside", cliponaxis=False, hovertemplate="%{x}: %{text}<extra></extra>"))
    fig.update_layout(barmode="group", yaxis=dict(title="visitors", rangemode="tozero"), xaxis=dict(title=None))
    return _style(fig, 300)


def figures(shown_views: dict[str, View], k: int) -> dict[str, go.Figure]:
    """The figures of the flow views present in ``shown_views``, by chart key."""
    out = {}
    if "entries_exits" in shown_views:
        out["chart_entries_exits"] = movement_figure(shown_views["entries_exits"], k)
        out["chart_occupancy"] = occupancy_figure(shown_views["occupancy"], k)
    if "dwell" in shown_views:
        out["chart_dwell"] = band_figure(shown_views["dwell"], k)
    if "zones" in shown_views:
        out["chart_zones"] = band_figure(shown_views["zones"], k)
    return out


def render(st, shown_views: dict[str, View], figs: dict[str, go.Figure], chart: Callable[[go.Figure, str], None],
           note: Callable[[View], None]) -> None:
    """The section of the flow views present in ``shown_views`` (Streamlit module ``st``; ``figs`` from ``figures``)."""
    if "entries_exits" in shown_views:
        view = shown_views["entries_exits"]
        st.markdown(f"### Entries and exits · per {view.resolution}")
        chart(figs["chart_entries_exits"], "chart_entries_exits")
        note(view)
        st.markdown("### Occupancy over the day (entries minus exits since midnight)")
        chart(figs["chart_occupancy"], "chart_occupancy")
        note(shown_views["occupancy"])
    if "dwell" in shown_views:
        st.markdown("### Dwell time (first to last seen)")
        chart(figs["chart_dwell"], "chart_dwell")
        note(shown_views["dwell"])
    if "zones" in shown_views:
        st.markdown("### Zones: visitors by time spent in the zone")
        chart(figs["chart_zones"], "chart_zones")
        note(shown_views["zones"])
