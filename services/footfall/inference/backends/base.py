"""The interface every inference backend implements, and the batch helpers they share.

Backends read the model's metadata from the model file (``footfall.model_file.ModelMetadata``),
never from code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import cv2
import numpy as np

from footfall.model_file import ModelMetadata
from footfall.predictions import HEADS, Predictions


class BackendUnavailable(RuntimeError):
    """The runtime or device a backend needs is missing (e.g. no NPU on this machine)."""


def prepare_crops(crops: list[np.ndarray], size: int) -> np.ndarray:
    """Stack RGB uint8 crops of any size into one (N, size, size, 3) uint8 array (NHWC)."""
    out = np.empty((len(crops), size, size, 3), np.uint8)
    for i, crop in enumerate(crops):
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"crop {i}: expected HxWx3 uint8, got {crop.shape} {crop.dtype}")
        if crop.shape[:2] != (size, size):
            shrink = crop.shape[0] > size
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = crop
    return out


def normalize_nchw(batch: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalized with the model's mean/std.

    OpenCV's blob function does it in one pass per face; numpy's convert, subtract, scale and
    transpose took 15-25 % of the INT8 model's predict time (benchmarks/int8_layout.py).

    >>> meta = ModelMetadata(name="m", version="1", input_size=2, channel_order="RGB", mean=(128., 0., 2.),
    ...                      std=(64., 1., 2.), races=(), emotions=())
    >>> face = np.array([[[255, 1, 2], [0, 3, 4]], [[64, 5, 6], [192, 7, 8]]], np.uint8)[None]  # one 2x2 face
    >>> normalize_nchw(face, meta)[0].tolist()  # channels first, each with its own mean and std
    [[[1.984375, -2.0], [-1.0, 1.0]], [[1.0, 3.0], [5.0, 7.0]], [[0.0, 1.0], [2.0, 3.0]]]
    """
    if len(batch) == 0:
        return np.empty((0, batch.shape[3], batch.shape[1], batch.shape[2]), np.float32)
    params = cv2.dnn.Image2BlobParams(scalefactor=tuple(1.0 / s for s in meta.std), size=batch.shape[2:0:-1],
                                      mean=tuple(meta.mean), swapRB=False, ddepth=cv2.CV_32F)
    return cv2.dnn.blobFromImagesWithParams(list(batch), params)


def split_batch(n: int, parts: int) -> list[range]:
    """Contiguous, non-empty index ranges of ``n`` samples over at most ``parts`` workers, in order.

    >>> split_batch(7, 3), split_batch(2, 3)
    ([range(0, 3), range(3, 5), range(5, 7)], [range(0, 1), range(1, 2)])
    """
    parts = min(parts, n)
    sizes = [n // parts + (i < n % parts) for i in range(parts)]  # like np.array_split: first ones larger
    starts = np.cumsum([0] + sizes)
    return [range(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


class Backend(ABC):
    """Runs the face model on batches of aligned RGB uint8 crops."""

    name: str = "base"
    metadata: ModelMetadata
    # The backend's options as a pydantic model beside it (extra options refused), with a
    # ``from_settings(InferenceSettings)`` constructor that load_backend uses.
    Options: ClassVar[type]

    @abstractmethod
    def predict(self, batch: np.ndarray) -> Predictions:
        """Predictions for an (N, S, S, 3) uint8 RGB batch, S = metadata.input_size, in order."""

    def predict_faces(self, faces: np.ndarray) -> Predictions:
        """Predictions for (N, H, W, 3) uint8 RGB faces of any one size (the ingest's 112 px crops),
        resized to the model's input first as the inference server does (``prepare_crops``)."""
        size = self.metadata.input_size
        if faces.shape[1:3] != (size, size):
            faces = prepare_crops(list(faces), size)
        return self.predict(faces)

    def close(self) -> None:
        """Release the runtime."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def flip_averaged(predict: Callable[[np.ndarray], Predictions],
                  confidence: float = 1.0) -> Callable[[np.ndarray], Predictions]:
    """``predict`` run on each face and its mirror image, the two averaged.

    Test-time augmentation: a face and its mirror image carry the same labels, and the model's
    errors on the two are partly independent, so the mean is more accurate (measured on the
    model card) for twice the compute per face. With ``confidence`` below 1 only the faces whose
    top emotion probability is below it get the mirror-image pass (a second, smaller batch); the
    others keep their single-pass predictions. The mirror image changes the emotion call almost only
    where the model is unsure, so a third of the extra compute buys all of flip averaging's emotion
    accuracy (model card, "Flip averaging").

    >>> left_pixel = lambda b: Predictions(b[:, 0, 0, 0].astype(float), np.zeros(len(b)),
    ...                                    np.zeros((len(b), 5)), np.full((len(b), 7), 1 / 7))
    >>> ramp = np.tile(np.array([0, 1, 2, 9], np.uint8)[None, :, None], (4, 1, 3))[None]  # one 4x4 face
    >>> left_pixel(ramp).age, flip_averaged(left_pixel)(ramp).age  # (0 + 9) / 2
    (array([0.]), array([4.5]))
    >>> flip_averaged(left_pixel, confidence=0.5)(ramp).age, flip_averaged(left_pixel, confidence=0.1)(ramp).age
    (array([4.5]), array([0.]))
    """
    def run(batch: np.ndarray) -> Predictions:
        if confidence >= 1:
            return mirror_mean(predict(with_mirror_images(batch)))
        single = predict(batch)
        unsure = unsure_faces(single, confidence)
        if len(unsure) == 0:
            return single
        return averaged_with_mirror(single, unsure, predict(np.ascontiguousarray(batch[unsure][:, :, ::-1])))

    return run


def flip_mark(confidence: float = 1.0) -> str:
    """How flip averaging is named in backend names and result tables: every face, or only those
    below an emotion confidence.

    >>> flip_mark(), flip_mark(0.65)
    ('flip', 'flip<0.65')
    """
    return "flip" + (f"<{confidence:g}" if confidence < 1 else "")


def unsure_faces(single: Predictions, confidence: float) -> np.ndarray:
    """Indices of the faces whose top emotion probability is below ``confidence`` (all of them at 1 or more)."""
    if confidence >= 1:
        return np.arange(len(single))
    return np.flatnonzero(single.emotion.max(axis=1) < confidence)


def averaged_with_mirror(single: Predictions, unsure: np.ndarray, mirrored: Predictions) -> Predictions:
    """``single`` with the rows ``unsure`` averaged with ``mirrored`` (their mirror images' predictions)."""
    heads = {head: getattr(single, head).copy() for head in HEADS}
    for head, values in heads.items():
        values[unsure] = (values[unsure] + getattr(mirrored, head)) / 2
    return Predictions(**heads)


def with_mirror_images(batch: np.ndarray) -> np.ndarray:
    """NHWC faces followed by their mirror images (the batch ``flip_averaged`` runs)."""
    return np.concatenate([batch, batch[:, :, ::-1]])


def mirror_mean(both: Predictions) -> Predictions:
    """The mean of the predictions on faces and on their mirror images (``with_mirror_images`` order)."""
    n = len(both) // 2
    return Predictions(*((getattr(both, head)[:n] + getattr(both, head)[n:]) / 2 for head in HEADS))


class FlipAveragedBackend(Backend):
    """Any backend with ``flip_averaged`` predictions (settings ``FOOTFALL_FLIP_AVERAGE``,
    ``FOOTFALL_FLIP_CONFIDENCE``). ``confidence`` None: the threshold the model file carries
    (``ModelMetadata.flip_confidence``), every face where it carries none."""

    def __init__(self, inner: Backend, confidence: float | None = None) -> None:
        self.inner = inner
        if confidence is None:
            confidence = inner.metadata.flip_confidence or 1.0
        self.confidence = confidence
        self.name = f"{inner.name}+{flip_mark(confidence)}"
        self.metadata = inner.metadata
        self._predict = flip_averaged(inner.predict, confidence)

    def predict(self, batch: np.ndarray) -> Predictions:
        return self._predict(batch)

    def close(self) -> None:
        self.inner.close()
