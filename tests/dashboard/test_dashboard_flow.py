"""The flow section (entries vs exits, occupancy, dwell, zones) of the Streamlit app with AppTest, on
the known aggregates plus hand-written flow_counts / dwell_counts rows; k-anonymity applies."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from footfall.db.models import DwellCount, FlowCount
from footfall.db.store import refresh_rollups

from .conftest import TODAY
from .test_dashboard_app import assert_no_crash, export, texts


def _flow(hour: int, zone: str = "", visitors: int = 0, entries: int = 0, exits: int = 0, passers_by: int = 0):
    return {"camera_id": "cam-a", "bucket_start": TODAY.replace(hour=hour), "zone": zone, "visitors": visitors,
            "entries": entries, "exits": exits, "passers_by": passers_by}


def _dwell(band: str, visitors: int, zone: str = ""):
    return {"camera_id": "cam-a", "bucket_start": TODAY.replace(hour=9), "zone": zone, "dwell_band": band,
            "visitors": visitors}


FLOW = [_flow(9, visitors=15, entries=12, passers_by=3), _flow(10, visitors=5, entries=5, exits=9),
        _flow(14, visitors=2, entries=2, exits=6), _flow(9, "queue", visitors=8)]
DWELL = [_dwell("<10s", 10), _dwell("10-30s", 6), _dwell("1-5m", 2), _dwell("<10s", 7, "queue"),
         _dwell("30s-1m", 1, "queue")]


def test_flow_views_show_and_export_entries_exits_occupancy_dwell_and_zones(known_db, app_test):
    engine = sa.create_engine(known_db)
    with engine.begin() as conn:
        conn.execute(FlowCount.__table__.insert(), FLOW)
        conn.execute(DwellCount.__table__.insert(), DWELL)
        refresh_rollups(conn)
    engine.dispose()
    at = app_test(known_db)  # last 7 days, per hour, k = 5
    assert_no_crash(at)
    page = texts(at)
    for heading in ("Entries and exits", "Occupancy over the day", "Dwell time", "Zones"):
        assert heading in page
    frame = export(at)

    def values(view: str, key: str) -> dict[str, str]:
        part = frame[(frame.view == view) & (frame.value != "0")]
        return dict(zip(part[key], part["value"])) if key in part else {}

    moves = frame[(frame.view == "entries_exits") & (frame.value != "0")]
    day = TODAY.strftime("%Y-%m-%d")
    assert {(p, m): v for p, m, v in zip(moves.period, moves.movement, moves.value)} == {
        # 2 entries at 14:00 are hidden, and the 5 at 10:00 with them (complementary suppression per series)
        (f"{day} 09:00", "entries"): "12", (f"{day} 10:00", "entries"): "<5", (f"{day} 14:00", "entries"): "<5",
        (f"{day} 10:00", "exits"): "9", (f"{day} 14:00", "exits"): "6", (f"{day} 09:00", "passers-by"): "<5"}
    occupancy = values("occupancy", "period")
    # 12 in at 9, 8 inside from 10 on, 4 (< k: hidden) from 14 on; back to 0 at midnight
    assert occupancy[f"{day} 09:00"] == "12" and occupancy[f"{day} 13:00"] == "8"
    assert occupancy[f"{day} 14:00"] == "<5" and occupancy[f"{day} 23:00"] == "<5"
    assert datetime(2024, 5, 7).strftime("%Y-%m-%d 23:00") not in occupancy
    # 2 visitors in 1-5m are hidden, and the next smallest band with them (else the total would tell)
    assert values("dwell", "dwell_band") == {"<10s": "10", "10-30s": "<5", "1-5m": "<5"}
    zones = frame[(frame.view == "zones") & (frame.value != "0")]
    assert list(zip(zones.zone, zones.dwell_band, zones.value)) == [("queue", "<10s", "<5"), ("queue", "30s-1m", "<5")]


def test_no_flow_section_without_flow_data(known_db, app_test):
    at = app_test(known_db)
    assert_no_crash(at)
    assert "Entries and exits" not in texts(at) and "Dwell time" not in texts(at)
    assert not set(export(at).view) & {"entries_exits", "occupancy", "dwell", "zones"}
