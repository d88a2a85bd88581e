"""Model outputs as plain numpy arrays: what every backend returns and every scorer reads.

``Predictions`` checks its arrays when it is made (one row per face in every head, floating
point) and converts from and to the forms it travels in: a model's raw outputs
(``from_outputs``), the gRPC messages (``from_proto`` / ``to_proto``).

Example:
    >>> import numpy as np
    >>> p = Predictions(age=np.array([31.0]), gender=np.array([0.8]),
    ...                 race=np.full((1, 5), 0.2), emotion=np.eye(7)[[3]])
    >>> len(p), p[0].emotion.argmax()
    (1, np.int64(3))
    >>> Predictions.from_proto(p.to_proto(["face-1"])).emotion.argmax(1)
    array([3])
    >>> Predictions(age=np.array([31.0]), gender=np.array([0.8, 0.1]), race=np.full((1, 5), 0.2),
    ...             emotion=np.eye(7)[[3]])
    Traceback (most recent call last):
    ...
    ValueError: Predictions: gender has shape (2,), expected (1,) (one value per face)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from footfall.proto import inference_pb2

# The model's heads, in the order of its outputs (ONNX, RKNN, PyTorch) and of Predictions' fields.
HEADS = ("age", "gender", "race", "emotion")
# Heads with one value per face; the others are a row of class probabilities per face.
SCALAR_HEADS = ("age", "gender")


@dataclass
class Predictions:
    age: np.ndarray  # (N,) years
    gender: np.ndarray  # (N,) probability of female
    race: np.ndarray  # (N, len(races)) probabilities
    emotion: np.ndarray  # (N, len(emotions)) probabilities

    def __post_init__(self) -> None:
        n = None
        for head in HEADS:
            values = getattr(self, head)
            if not isinstance(values, np.ndarray) or not np.issubdtype(values.dtype, np.floating):
                got = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
                raise ValueError(f"Predictions: {head} must be a floating-point numpy array, not {got}")
            n = len(values) if n is None and values.ndim else n
            if head in SCALAR_HEADS and values.shape != (n,):
                raise ValueError(f"Predictions: {head} has shape {values.shape}, expected ({n},) (one value per face)")
            if head not in SCALAR_HEADS and (values.ndim != 2 or len(values) != n):
                raise ValueError(f"Predictions: {head} has shape {values.shape}, expected ({n}, classes) "
                                 "(one row of probabilities per face)")

    def __len__(self) -> int:
        return len(self.age)

    def __getitem__(self, index) -> Predictions:
        sel = np.atleast_1d(np.arange(len(self))[index])
        return Predictions(self.age[sel], self.gender[sel], self.race[sel], self.emotion[sel])

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        return Predictions(*(np.concatenate([getattr(p, k) for p in parts])
                             for k in HEADS))

    @staticmethod
    def empty(races: int, emotions: int) -> Predictions:
        """No faces: zero rows, with ``races`` and ``emotions`` classes.

        >>> Predictions.empty(5, 7).emotion.shape
        (0, 7)
        """
        return Predictions(np.zeros(0, np.float32), np.zeros(0, np.float32),
                           np.zeros((0, races), np.float32), np.zeros((0, emotions), np.float32))

    @staticmethod
    def from_outputs(names: Sequence[str], outputs: Sequence[np.ndarray]) -> Predictions:
        """A model's raw outputs, batch first and in ``names`` order (the model file's metadata), in any
        trailing shape (ONNX Runtime gives (N, 1) for age, RKNN flattened rows).

        >>> p = Predictions.from_outputs(("age", "gender", "race", "emotion"),
        ...     [np.array([[30.]]), np.array([[.9]]), np.full((1, 5), .2), np.eye(7)[[3]]])
        >>> p.age.tolist(), p.gender.tolist(), p.emotion.argmax(1).tolist()
        ([30.0], [0.9], [3])
        """
        named = dict(zip(names, outputs))
        missing = [head for head in HEADS if head not in named]
        if missing:
            raise ValueError(f"model outputs {list(names)} lack {missing}")
        n = len(named["age"])
        return Predictions(age=named["age"].reshape(-1), gender=named["gender"].reshape(-1),
                           race=named["race"].reshape(n, -1), emotion=named["emotion"].reshape(n, -1))

    @staticmethod
    def from_proto(messages: Sequence[inference_pb2.Prediction]) -> Predictions:
        """The predictions of a ``PredictResponse``, in its order."""
        n = len(messages)
        return Predictions(age=np.array([m.age for m in messages], np.float32),
                           gender=np.array([m.gender_female for m in messages], np.float32),
                           race=np.array([list(m.race) for m in messages], np.float32).reshape(n, -1),
                           emotion=np.array([list(m.emotion) for m in messages], np.float32).reshape(n, -1))

    def to_proto(self, ids: Sequence[str]) -> list[inference_pb2.Prediction]:
        """One ``Prediction`` message per face, carrying the request's crop ids."""
        from footfall.proto import inference_pb2

        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} ids for {len(self)} predictions")
        return [inference_pb2.Prediction(id=ids[i], age=float(self.age[i]), gender_female=float(self.gender[i]),
                                         race=self.race[i].tolist(), emotion=self.emotion[i].tolist())
                for i in range(len(self))]
