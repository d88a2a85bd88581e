"""Data, privacy and chart logic of the Footfall dashboard (``dashboard/app.py`` is only layout).

Modules:
- ``data``: read-only queries into pandas frames, time ranges, resampling, headline figures.
- ``privacy``: k-anonymity suppression (primary and complementary) and display strings.
- ``views``: the tables each chart shows, already suppressed, and the CSV export of them.
- ``charts``: plotly figures built from those tables.
- ``demo``: realistic demo aggregates with a known truth (tests, screenshots).
"""
