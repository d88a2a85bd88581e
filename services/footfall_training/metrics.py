"""Accuracy metrics of the four heads, computed from plain numpy predictions.

``Predictions`` is what every model format (PyTorch, ONNX FP32/INT8, RKNN simulator) produces
in evaluation, so one function scores them all.

Example:
    >>> import numpy as np
    >>> p = Predictions(age=np.array([30., 40.]), gender=np.array([0.9, 0.2]),
    ...                 race=np.eye(5)[[0, 1]], emotion=np.eye(7)[[3, 6]])
    >>> m = head_metrics(p, age=np.array([32., np.nan]), gender=np.array([1, 0]),
    ...                  race=np.array([0, 2]), emotion=np.array([-1, 6]))
    >>> m["age_mae"], m["gender_acc"], m["race_acc"], m["emotion_acc"]
    (2.0, 1.0, 0.5, 1.0)
"""

from __future__ import annotations

import numpy as np

from footfall.labels import AGE_BANDS, EMOTIONS, RACES, VALENCE
from footfall.predictions import HEADS, Predictions


# The in-distribution targets the shipped model meets as served (issue 7; model card): age MAE in years
# at most, the accuracies at least.
TARGETS = {"age_mae": 5.2, "gender_acc": 0.91, "race_acc": 0.82, "emotion_acc": 0.83}


def meets_targets(m: dict[str, float]) -> bool:
    """Whether head metrics (``head_metrics``' keys) meet every one of ``TARGETS``.

    >>> meets_targets({"age_mae": 5.1, "gender_acc": 0.92, "race_acc": 0.83, "emotion_acc": 0.83})
    True
    >>> meets_targets({"age_mae": 5.1, "gender_acc": 0.92, "race_acc": 0.81, "emotion_acc": 0.84})
    False
    """
    return m["age_mae"] <= TARGETS["age_mae"] and all(m[k] >= v for k, v in TARGETS.items() if k != "age_mae")


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    cm = np.zeros((classes, classes), np.int64)
    np.add.at(cm, (truth, pred), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    present = cm.sum(1) > 0
    return float(f1[present].mean()) if present.any() else float("nan")


def class_recall(cm: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Recall of each class present in the confusion matrix (rows: truth), by name.

    >>> class_recall(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ("a", "b", "c"))
    {'a': 0.75, 'b': 1.0}
    """
    return {name: float(cm[i, i] / cm[i].sum()) for i, name in enumerate(names) if cm[i].sum()}


def head_metrics(p: Predictions, age: np.ndarray, gender: np.ndarray, race: np.ndarray,
                 emotion: np.ndarray) -> dict:
    """Metrics on the samples that carry each label (NaN / -1 mean 'no label')."""
    out: dict = {}
    m = ~np.isnan(age)
    if m.any():
        err = np.abs(p.age[m] - age[m])
        out["age_mae"] = float(err.mean())
        out["age_mae_by_band"] = {
            label: float(err[(age[m] >= lo) & (age[m] < hi)].mean())
            for label, lo, hi in AGE_BANDS if ((age[m] >= lo) & (age[m] < hi)).any()
        }
    m = gender >= 0
    if m.any():
        out["gender_acc"] = float(((p.gender[m] >= 0.5).astype(int) == gender[m]).mean())
    m = race >= 0
    if m.any():
        cm = confusion(race[m], p.race[m].argmax(1), len(RACES))
        out["race_acc"] = float(np.trace(cm) / cm.sum())
        out["race_macro_f1"] = macro_f1(cm)
    m = emotion >= 0
    if m.any():
        cm = confusion(emotion[m], p.emotion[m].argmax(1), len(EMOTIONS))
        out["emotion_acc"] = float(np.trace(cm) / cm.sum())
        out["emotion_macro_f1"] = macro_f1(cm)
        out["emotion_confusion"] = cm.tolist()
        vclasses = ("positive", "neutral", "negative")
        to_v = np.array([vclasses.index(VALENCE[e]) for e in EMOTIONS])
        vcm = confusion(to_v[emotion[m]], to_v[p.emotion[m].argmax(1)], 3)
        out["valence_acc"] = float(np.trace(vcm) / vcm.sum())
        out["valence_confusion"] = vcm.tolist()
    return out


def original_label_metrics(emotion_probs: np.ndarray, original: np.ndarray) -> dict:
    """Emotion predictions scored against FER2013's original labels (``FaceSet.emotion_original``, -1:
    none): accuracy, mean recall over the classes present, recall of each, and the share of each
    other class's faces called neutral (for neutral that would be its recall). FER2013 labelled each
    photo by the expression it was searched for, closer to a posed set's intent than FER+'s crowd
    votes, which read many of them as neutral.

    >>> m = original_label_metrics(np.eye(7)[[0, 6, 6, 3]], np.array([0, 0, 6, -1]))
    >>> m["acc"], m["mean_recall"], m["recall"]["angry"], m["called_neutral"]["angry"], m["faces"]
    (0.6666666666666666, 0.75, 0.5, 0.5, 3)
    >>> sorted(m["called_neutral"])
    ['angry']
    """
    m = original >= 0
    cm = confusion(original[m], emotion_probs[m].argmax(1), len(EMOTIONS))
    recall = class_recall(cm, EMOTIONS)
    neutral = EMOTIONS.index("neutral")
    return {"faces": int(m.sum()), "acc": float(np.trace(cm) / max(cm.sum(), 1)),
            "mean_recall": float(np.mean(list(recall.values()))) if recall else float("nan"), "recall": recall,
            "called_neutral": {e: float(cm[i, neutral] / cm[i].sum()) for i, e in enumerate(EMOTIONS)
                               if cm[i].sum() and i != neutral}}


def selection_score(m: dict, heads: tuple[str, ...] = HEADS, emotion: str = "acc") -> float:
    """One number to pick the best checkpoint: accuracies up, age error down (10 years = 1 point).

    Only the ``heads`` a model is trained for count (a single-task model's other heads are untrained).
    ``emotion="macro_f1"`` counts the emotion head's macro-F1 instead of its accuracy, so that a
    checkpoint is not chosen for calling the frequent classes more often.

    >>> round(selection_score({"age_mae": 5.0, "gender_acc": 0.9, "race_acc": 0.8}, ("age", "gender")), 2)
    0.4
    >>> selection_score({"emotion_acc": 0.8, "emotion_macro_f1": 0.6}, ("emotion",), emotion="macro_f1")
    0.6
    """
    if emotion not in ("acc", "macro_f1"):
        raise ValueError(f"emotion selection must be acc or macro_f1, not {emotion!r}")
    return (sum(m.get(f"{h}_{emotion if h == 'emotion' else 'acc'}", 0) for h in ("gender", "race", "emotion")
                if h in heads)
            - (m.get("age_mae", 0) / 10.0 if "age" in heads else 0.0))


def agreement(p: Predictions, reference: Predictions) -> dict[str, float]:
    """How closely ``p`` follows ``reference`` on the same faces (decisions and age in years).

    >>> agreement(Predictions(np.array([30., 40.]), np.array([.9, .2]), np.eye(5)[[0, 1]], np.eye(7)[[3, 6]]),
    ...           Predictions(np.array([31., 40.]), np.array([.8, .6]), np.eye(5)[[0, 1]], np.eye(7)[[3, 5]]))
    {'age_abs_diff': 0.5, 'age_abs_diff_max': 1.0, 'gender_agree': 0.5, 'race_agree': 1.0, 'emotion_agree': 0.5}
    """
    age_diff = np.abs(p.age - reference.age)
    return {
        "age_abs_diff": float(age_diff.mean()),
        "age_abs_diff_max": float(age_diff.max()),
        "gender_agree": float(((p.gender >= 0.5) == (reference.gender >= 0.5)).mean()),
        "race_agree": float((p.race.argmax(1) == reference.race.argmax(1)).mean()),
        "emotion_agree": float((p.emotion.argmax(1) == reference.emotion.argmax(1)).mean()),
    }
