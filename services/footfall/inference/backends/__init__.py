"""Inference backends: one small module each, behind ``Backend``, chosen by name.

Adding an accelerator is one module with a ``Backend`` subclass plus one line in
``BACKENDS``; modules are imported only when chosen, so the CPU path never needs the NPU
runtime.

Example:
    >>> sorted(BACKENDS)
    ['onnxruntime', 'rknn']
"""

from __future__ import annotations

import importlib
from pathlib import Path

from footfall.inference.backends.base import Backend, BackendUnavailable, FlipAveragedBackend

# name -> "module:class", imported lazily by load_backend.
BACKENDS = {
    "onnxruntime": "footfall.inference.backends.onnxruntime:OnnxRuntimeBackend",
    "rknn": "footfall.inference.backends.rknn:RknnBackend",
}


def load_backend(name: str, model_path: str | Path, flip_average: bool | None = None, settings=None,
                 flip_confidence: float | None = None, **options) -> Backend:
    """Instantiate the backend called ``name`` on ``model_path`` (``flip_average``: each face's
    predictions averaged with its mirror image's, only for faces whose top emotion probability is
    below ``flip_confidence`` when it is below 1, see ``base.flip_averaged``). Its options are
    validated by the backend's own ``Options`` class: ``settings`` (the worker's ``InferenceSettings``)
    supplies those of the chosen backend and the flip averaging the worker serves with (its
    ``flip_confidence`` unset: the threshold the model file carries, see ``FlipAveragedBackend``);
    keyword ``options`` and an explicit ``flip_average`` / ``flip_confidence`` override them. Without
    settings the backend runs a single pass, and ``flip_average`` alone mirrors every face."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown inference backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if settings is not None:
        options = {**cls.Options.from_settings(settings).model_dump(), **options}
        flip_average = settings.flip_average if flip_average is None else flip_average
        flip_confidence = settings.flip_confidence if flip_confidence is None else flip_confidence
    elif flip_confidence is None:
        flip_confidence = 1.0
    backend = cls(Path(model_path), **options)
    if not flip_average:
        return backend
    return FlipAveragedBackend(backend, flip_confidence)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "FlipAveragedBackend", "ModelMetadata", "load_backend"]
