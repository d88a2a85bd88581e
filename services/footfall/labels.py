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


def age_band(age_years: float) -> str:
    """Band label for an age in years.

    >>> age_band(24.9), age_band(25.0), age_band(80)
    ('18-24', '25-34', '65+')
    """
    for label, low, high in AGE_BANDS:
        if low <= age_years < high:
            return label
    return AGE_BANDS[0][0] if age_years < 0 else AGE_BANDS[-1][0]
