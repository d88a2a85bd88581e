"""Label vocabularies shared by the model, the services and the database (defined once).

The exported ONNX model also carries these names in its metadata; consumers read them from
the model file (see ``footfall.model_file.ModelMetadata``) and use the constants here
only to validate that the model matches what the database schema expects.
"""

RACES = ("white", "black", "asian", "indian", "others")
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
GENDERS = ("male", "female")
# Age is predicted as a distribution over whole years 0..100 (its expectation is exported).
AGE_BINS = tuple(float(a) for a in range(101))
# Age bands stored by the aggregator: (label, lower bound inclusive, upper bound exclusive).
AGE_BANDS = (
    ("0-12", 0, 13),
    ("13-17", 13, 18),
    ("18-24", 18, 25),
    ("25-34", 25, 35),
    ("35-44", 35, 45),
    ("45-54", 45, 55),
    ("55-64", 55, 65),
    ("65+", 65, 1000),
)
# 3-class valence view of the emotions.
VALENCE = {
    "happy": "positive",
    "surprise": "positive",
    "neutral": "neutral",
    "angry": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sad": "negative",
}


# Dwell bands stored by the aggregator (first to last seen of a visitor), seconds, as AGE_BANDS.
DWELL_BANDS = (
    ("<10s", 0, 10),
    ("10-30s", 10, 30),
    ("30s-1m", 30, 60),
    ("1-5m", 60, 300),
    ("5-15m", 300, 900),
    ("15m+", 900, float("inf")),
)


def _band(value: float, bands: tuple) -> str:
    for label, low, high in bands:
        if low <= value < high:
            return label
    return bands[0][0] if value < bands[0][1] else bands[-1][0]


def age_band(age_years: float) -> str:
    """Band label for an age in years.

    >>> age_band(24.9), age_band(25.0), age_band(80)
    ('18-24', '25-34', '65+')
    """
    return _band(age_years, AGE_BANDS)


def dwell_band(seconds: float) -> str:
    """Band label for a dwell time in seconds.

    >>> dwell_band(42.0), dwell_band(3600)
    ('30s-1m', '15m+')
    """
    return _band(seconds, DWELL_BANDS)
