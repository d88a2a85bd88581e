"""ONNX Runtime on the CPU: FP32 or INT8 (QDQ) ONNX models.

The backend's ``threads`` are spent as ``threads // session_threads`` sessions of ``session_threads``
threads each (default: one single-threaded session per thread), and each batch is split into
contiguous chunks run side by side, one per session, as the rknn backend spreads a batch over NPU
cores. A model this small leaves ONNX Runtime's intra-op threads waiting on each other at every one
of its ~60 layers (without spinning, which the edge box cannot afford): measured on 2 cores, two
1-thread sessions gave 1.1-1.9x the faces/s of one 2-thread session single pass and 1.2-1.4x
flip-averaged (``benchmarks/model_speed.py --sessions``; model card, "Sessions").

Example:
    >>> import numpy as np
    >>> from footfall.config import InferenceSettings
    >>> from footfall.inference.backends import load_backend
    >>> backend = load_backend("onnxruntime", InferenceSettings().face_model, threads=2)
    >>> len(backend.sessions), backend.predict(np.zeros((3, 112, 112, 3), np.uint8)).emotion.shape
    (2, (3, 7))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from footfall.inference.backends.base import Backend, normalize_nchw, split_batch
from footfall.model_file import ModelMetadata
from footfall.predictions import Predictions


class OnnxRuntimeOptions(BaseModel):
    """The onnxruntime backend's options (an unknown option is an error, not ignored).

    >>> OnnxRuntimeOptions(threads=4).layout, OnnxRuntimeOptions(threads=4, session_threads=2).layout
    ((4, 1), (2, 2))
    >>> OnnxRuntimeOptions(threads=3, session_threads=2).layout, OnnxRuntimeOptions(threads=1, session_threads=4).layout
    ((1, 2), (1, 1))
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(2, ge=1, description="CPU threads of the backend, all its sessions together")
    session_threads: int = Field(1, ge=1, description="threads of each session (intra-op)")

    @property
    def layout(self) -> tuple[int, int]:
        """(sessions, threads per session): never more threads in all than ``threads``."""
        per_session = min(self.session_threads, self.threads)
        return self.threads // per_session, per_session

    @classmethod
    def from_settings(cls, settings) -> OnnxRuntimeOptions:
        """The options in the inference worker's settings (``footfall.config.InferenceSettings``)."""
        return cls(threads=settings.threads, session_threads=settings.session_threads)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OnnxRuntimeOptions

    def __init__(self, model_path: Path, **options: object) -> None:
        import onnxruntime as ort

        self.options = OnnxRuntimeOptions(**options)
        if not Path(model_path).exists():
            raise FileNotFoundError(f"model file {model_path} not found")
        sessions, per_session = self.options.layout
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = per_session
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: on an edge box the decoder, detector and aggregator share
        # the cores (measured here: 4 sessions on 2 cores went from 20 to 241 faces/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = [ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
                         for _ in range(sessions)]
        self.metadata = ModelMetadata.from_props(self.sessions[0].get_modelmeta().custom_metadata_map)
        self.input_name = self.sessions[0].get_inputs()[0].name
        # The calling thread runs the first chunk; the pool the others (InferenceSession.run is
        # thread-safe, so concurrent predict() calls need no lock either).
        self._pool = ThreadPoolExecutor(max_workers=sessions - 1, thread_name_prefix="ort") if sessions > 1 else None

    def _run(self, session: int, chunk: np.ndarray) -> list[np.ndarray]:
        return self.sessions[session].run(list(self.metadata.outputs),
                                          {self.input_name: normalize_nchw(chunk, self.metadata)})

    def predict(self, batch: np.ndarray) -> Predictions:
        chunks = split_batch(len(batch), len(self.sessions))
        if not chunks:  # ONNX Runtime's outputs of an empty batch cannot be shaped per face
            return Predictions.empty(len(self.metadata.races), len(self.metadata.emotions))
        if len(chunks) == 1:
            outputs = self._run(0, batch)
        else:
            rest = [self._pool.submit(self._run, i, batch[r.start:r.stop]) for i, r in enumerate(chunks[1:], 1)]
            parts = [self._run(0, batch[chunks[0].start:chunks[0].stop])] + [f.result() for f in rest]
            outputs = [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        return Predictions.from_outputs(self.metadata.outputs, outputs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
