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


def load_backend(name: str, model_path: str | Path, flip_average: bool = False, settings=None,
                 flip_confidence: float = 1.0, **options) -> Backend:
    """Instantiate the backend called ``name`` on ``model_path`` (``flip_average``: each face's
    predictions averaged with its mirror image's, only for faces whose top emotion probability is
    below ``flip_confidence`` when it is below 1, see ``base.flip_averaged``). Its options are
    validated by the backend's own ``Options`` class: ``settings`` (the worker's ``InferenceSettings``)
    supplies those of the chosen backend, keyword ``options`` override them."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown inference backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if settings is not None:
        options = {**cls.Options.from_settings(settings).model_dump(), **options}
    backend = cls(Path(model_path), **options)
    return FlipAveragedBackend(backend, flip_confidence) if flip_average else backend


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "FlipAveragedBackend", "ModelMetadata", "load_backend"]
