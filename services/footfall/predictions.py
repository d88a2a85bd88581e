"""Model outputs as plain numpy arrays: what every backend returns and every scorer reads.

Example:
    >>> import numpy as np
    >>> p = Predictions(age=np.array([31.0]), gender=np.array([0.8]),
    ...                 race=np.full((1, 5), 0.2), emotion=np.eye(7)[[3]])
    >>> len(p), p[0].emotion.argmax()
    (1, np.int64(3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The model's heads, in the order of its outputs (ONNX, RKNN, PyTorch) and of Predictions' fields.
HEADS = ("age", "gender", "race", "emotion")


@dataclass
class Predictions:
    age: np.ndarray  # (N,) years
    gender: np.ndarray  # (N,) probability of female
    race: np.ndarray  # (N, len(races)) probabilities
    emotion: np.ndarray  # (N, len(emotions)) probabilities

    def __len__(self) -> int:
        return len(self.age)

    def __getitem__(self, index) -> Predictions:
        sel = np.atleast_1d(np.arange(len(self))[index])
        return Predictions(self.age[sel], self.gender[sel], self.race[sel], self.emotion[sel])

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        return Predictions(*(np.concatenate([getattr(p, k) for p in parts])
                             for k in HEADS))
