"""Footfall flow: counting lines and zones (settings, geometry), the track_end fields, and the
aggregates the store keeps (flow_counts, dwell_counts) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import pytest

from footfall.counting import parse_count_lines, parse_count_zones
from footfall.schema import MalformedMessage, TrackEnd, decode_entry


@pytest.mark.parametrize("spec, reason", [
    ("door=0.5,1,0.5", "x1,y1,x2,y2"),
    ("door=0.5,1,0.5,1.5", "normalized"),
    ("door=a,b,c,d", "numbers"),
    ("door=0.5,1,0.5,1", "same"),
    ("0.5,1,0.5,0", "name=coordinates"),
    ("door=0.5,1,0.5,0;door=0,0,1,1", "two lines"),
])
def test_bad_counting_lines_say_why(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_count_lines(spec)


def test_bad_zones_say_why_and_settings_refuse_them():
    from pydantic import ValidationError

    from footfall.config import IngestSettings

    with pytest.raises(ValueError, match="3 x,y points"):
        parse_count_zones("door/queue=0,0,1,1")
    with pytest.raises(ValueError, match="camera/zone"):
        parse_count_zones("queue=0,0,1,0,1,1")
    with pytest.raises(ValidationError, match="FOOTFALL_COUNT_LINES"):
        IngestSettings(count_lines="door=1,2,3,4")


def test_ingest_refuses_lines_for_unknown_cameras(models_dir):
    from footfall.config import IngestSettings
    from footfall.ingest.service import IngestWorker

    with pytest.raises(ValueError, match="not in FOOTFALL_CAMERAS"):
        IngestWorker(IngestSettings(cameras="door=/x.mp4", count_lines="till=0.5,1,0.5,0", models_dir=models_dir))


def test_crossings_count_net_steps_through_the_segment_only():
    line = parse_count_lines("door=0.5,1,0.5,0")["door"]  # upwards through the middle: left to right enters
    assert line.crossing([(0, 0.2, 0.5), (1, 0.8, 0.5)]) == "entry"
    assert line.crossing([(0, 0.8, 0.5), (1, 0.2, 0.5)]) == "exit"
    assert line.crossing([(0, 0.2, 0.5), (1, 0.8, 0.5), (2, 0.2, 0.5)]) == "passer-by"  # in and out again
    short = parse_count_lines("door=0.5,0.6,0.5,0.4")["door"]
    assert short.crossing([(0, 0.2, 0.9), (1, 0.8, 0.9)]) == "passer-by"  # passed beside the line's end


def test_track_end_flow_fields_round_trip_and_old_entries_decode():
    end = TrackEnd("door", 12.5, "door:a:1", 4, dwell=3.25, crossing="entry", zones=(("queue", 1.5),))
    assert decode_entry(end.encode()) == end
    old = {"kind": "track_end", "camera": "door", "ts": "1.0", "track": "door:a:1", "faces": "3"}
    assert decode_entry(old) == TrackEnd("door", 1.0, "door:a:1", 3)
    for field, value, reason in (("crossing", "sideways", "crossing"), ("dwell", "-1", "dwell"),
                                 ("zones", "[1, 2]", "zones"), ("zones", '{"' + "z" * 40 + '": 1}', "zones")):
        with pytest.raises(MalformedMessage, match=reason):
            decode_entry({**end.encode(), field: value})


def _record(track, crossing, dwell, first_minute, last_minute, zones=()):
    from footfall.aggregator.folding import VisitorRecord

    return VisitorRecord("door", track, datetime(2026, 1, 1, 10, first_minute), 0, 1, 3, 30.0, "25-34", "male", "",
                         "happy", dwell_s=dwell, crossing=crossing, zones=zones,
                         end_bucket_start=datetime(2026, 1, 1, 10, last_minute))


def test_store_counts_entries_exits_dwell_and_zones_once(db_url):
    import sqlalchemy as sa

    from footfall.db.models import DwellCount, FlowCount
    from footfall.db.store import count_visitors, make_engine

    engine = make_engine(db_url)
    visitors = [_record("t1", "entry", 5.0, 0, 0, (("queue", 2.0),)), _record("t2", "entry", 95.0, 0, 1),
                _record("t3", "exit", 40.0, 0, 2, (("queue", 12.0),)), _record("t4", "passer-by", 3.0, 1, 1)]
    assert len(count_visitors(engine, visitors)) == 4
    assert count_visitors(engine, visitors) == []  # redelivered: counted once
    F, D = FlowCount, DwellCount
    with engine.connect() as c:
        flow = c.execute(sa.select(F.bucket_start, F.zone, F.visitors, F.entries, F.exits, F.passers_by)
                         .order_by(F.bucket_start, F.zone)).all()
        dwell = c.execute(sa.select(D.zone, D.dwell_band, sa.func.sum(D.visitors)).group_by(D.zone, D.dwell_band)
                          .order_by(D.zone, D.dwell_band)).all()
    minute = lambda m: datetime(2026, 1, 1, 10, m)  # noqa: E731
    assert [tuple(r) for r in flow] == [(minute(0), "", 3, 2, 0, 0), (minute(0), "queue", 2, 0, 0, 0),
                                        (minute(1), "", 1, 0, 0, 1), (minute(2), "", 0, 0, 1, 0)]
    assert [tuple(r) for r in dwell] == [("", "1-5m", 1), ("", "30s-1m", 1), ("", "<10s", 2),
                                         ("queue", "10-30s", 1), ("queue", "<10s", 1)]
