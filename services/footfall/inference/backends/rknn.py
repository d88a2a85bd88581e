"""RK3588 NPU backend: the ``.rknn`` INT8 model on rknn-toolkit-lite2, one context per NPU core.

Throughput comes from running the three NPU cores side by side: one ``RKNNLite`` context is
pinned to each configured core (core masks 1, 2, 4 for cores 0, 1, 2), a batch is split into
contiguous chunks, one chunk per context, run from a thread pool, and the results are put
back in input order. Published RK3588 measurements show per-core contexts scaling to about
2.5x one core, against about 1.3x for a single context with the 0_1_2 mask.

Batch size: the ``.rknn`` is built for batch 1 (``footfall_training.rknn_convert``; the training package), so each
context runs its chunk sample by sample. Multi-batch RKNN builds need a fixed batch (padding
for partial batches) and mostly help models far larger than this one, whose per-sample NPU
time is small next to a context switch; three contexts in parallel keep the cores busy.

Preprocessing happens on the NPU: the model was built with the ONNX model's mean/std
(``RKNN.config(mean_values, std_values)``), so the board's CPU feeds the uint8 NHWC RGB crops
as they come, without float conversion and without copies (each sample is a view into the
batch; ``np.ascontiguousarray`` only when the caller's batch is not contiguous). Outputs are
mapped by ``Predictions.from_outputs`` with the names in the ``.rknn.json`` sidecar, as the ONNX path
maps its named outputs.

The runtime sits behind the narrow ``NpuRuntime`` adapter (load, init, infer, release);
``RknnLiteRuntime`` implements it on the board, tests inject a fake.

Example (on an RK3588 board with rknn-toolkit-lite2 and /dev/rknpu):
    from footfall.inference.backends import load_backend
    npu = load_backend("rknn", "model/footfall_w050.rknn", npu_cores="0,1,2")
    npu.predict(faces).emotion.argmax(1)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from footfall.inference.backends.base import Backend, BackendUnavailable, split_batch
from footfall.model_file import ModelMetadata
from footfall.predictions import Predictions

log = logging.getLogger(__name__)

# RKNNLite.NPU_CORE_0/1/2 (the same values as rknn-toolkit2's RKNN.NPU_CORE_*).
CORE_MASKS = {0: 1, 1: 2, 2: 4}
RUNTIME_HINT = ("it needs rknn-toolkit-lite2 (`from rknnlite.api import RKNNLite`, aarch64 only) and, from the "
                "board's host, the NPU runtime library librknnrt.so and the device /dev/rknpu (or /dev/dri); "
                "use FOOTFALL_BACKEND=onnxruntime on machines without an RK3588 NPU")


class NpuRuntime(Protocol):
    """One inference context on the NPU: the part of RKNNLite the backend uses."""

    def load(self, model_path: Path) -> None:
        """Load the ``.rknn`` file."""

    def init(self, core_mask: int) -> None:
        """Start the runtime pinned to the cores in ``core_mask`` (1 << core)."""

    def infer(self, sample: np.ndarray) -> list[np.ndarray] | None:
        """Outputs for one (1, S, S, 3) uint8 NHWC sample, in model output order; None on failure."""

    def release(self) -> None:
        """Free the context."""


class RknnLiteRuntime:
    """``NpuRuntime`` on rknn-toolkit-lite2 (imported only when the rknn backend is chosen)."""

    def __init__(self) -> None:
        try:
            from rknnlite.api import RKNNLite
        except (ImportError, OSError) as exc:
            raise BackendUnavailable(f"the rknn backend cannot start: {exc}; {RUNTIME_HINT}") from exc
        self._rknn = RKNNLite(verbose=False)

    def load(self, model_path: Path) -> None:
        if self._rknn.load_rknn(str(model_path)) != 0:
            raise RuntimeError(f"RKNNLite could not load {model_path} (not an .rknn model for this toolkit version?)")

    def init(self, core_mask: int) -> None:
        if self._rknn.init_runtime(core_mask=core_mask) != 0:
            raise BackendUnavailable(f"RKNNLite.init_runtime(core_mask={core_mask}) failed; {RUNTIME_HINT}")

    def infer(self, sample: np.ndarray) -> list[np.ndarray] | None:
        return self._rknn.inference(inputs=[sample], data_format=["nhwc"])

    def release(self) -> None:
        self._rknn.release()


def parse_cores(cores: str | Sequence[int]) -> list[int]:
    """NPU core numbers from a setting such as ``"0,1,2"``.

    >>> parse_cores("0, 2"), parse_cores([1])
    ([0, 2], [1])
    >>> parse_cores("0,3")
    Traceback (most recent call last):
    ...
    ValueError: npu_cores '0,3': the RK3588 NPU has cores 0, 1, 2 (e.g. "0,1,2")
    """
    items = [c.strip() for c in cores.split(",")] if isinstance(cores, str) else list(cores)
    problem = f"npu_cores {cores!r}: the RK3588 NPU has cores 0, 1, 2 (e.g. \"0,1,2\")"
    try:
        numbers = [int(c) for c in items]
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if not numbers or any(n not in CORE_MASKS for n in numbers):
        raise ValueError(problem)
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"npu_cores {cores!r}: a core is listed twice (use contexts_per_core for more contexts)")
    return numbers


def context_cores(cores: Sequence[int], contexts_per_core: int) -> list[int]:
    """The core of each context, interleaved so that small batches spread over cores first.

    >>> context_cores([0, 1, 2], 2)
    [0, 1, 2, 0, 1, 2]
    """
    if contexts_per_core < 1:
        raise ValueError(f"contexts_per_core must be at least 1, not {contexts_per_core}")
    return [core for _ in range(contexts_per_core) for core in cores]


class RknnOptions(BaseModel):
    """The rknn backend's options (an unknown option is an error, not ignored).

    >>> RknnOptions(npu_cores="0, 2").npu_cores
    [0, 2]
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    npu_cores: list[int] = [0, 1, 2]  # NPU cores used, e.g. "0,1,2"
    contexts_per_core: int = 1  # RKNNLite contexts per core (each fed from its own thread)

    @field_validator("npu_cores", mode="before")
    @classmethod
    def _cores(cls, value: str | Sequence[int]) -> list[int]:
        return parse_cores(value)

    @classmethod
    def from_settings(cls, settings) -> RknnOptions:
        """The options in the inference worker's settings (``footfall.config.InferenceSettings``)."""
        return cls(npu_cores=settings.npu_cores, contexts_per_core=settings.npu_contexts_per_core)


class RknnBackend(Backend):
    name = "rknn"
    Options = RknnOptions

    def __init__(self, model_path: Path, runtime_factory: Callable[[], NpuRuntime] = RknnLiteRuntime,
                 **options: object) -> None:
        self.options = RknnOptions(**options)
        model_path = Path(model_path)
        if not model_path.exists():
            raise FileNotFoundError(f"model file {model_path} not found")
        self.metadata = ModelMetadata.from_sidecar(model_path)
        self.cores = context_cores(self.options.npu_cores, self.options.contexts_per_core)
        self._runtimes: list[NpuRuntime] = []
        try:
            for core in self.cores:
                runtime = runtime_factory()
                self._runtimes.append(runtime)
                runtime.load(model_path)
                runtime.init(CORE_MASKS[core])
        except BaseException:
            self.close()
            raise
        # A context is not thread-safe: one lock each, so concurrent predict() calls queue per context.
        self._locks = [threading.Lock() for _ in self._runtimes]
        self._pool = ThreadPoolExecutor(max_workers=len(self._runtimes), thread_name_prefix="rknn")

    def predict(self, batch: np.ndarray) -> Predictions:
        size = self.metadata.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.dtype != np.uint8:
            raise ValueError(f"expected an (N, {size}, {size}, 3) uint8 batch, got {batch.shape} {batch.dtype}")
        if not self._runtimes:
            raise RuntimeError("the rknn backend is closed")
        if len(batch) == 0:
            return Predictions.empty(len(self.metadata.races), len(self.metadata.emotions))
        batch = batch if batch.flags.c_contiguous else np.ascontiguousarray(batch)
        chunks = split_batch(len(batch), len(self._runtimes))
        futures = [self._pool.submit(self._run_chunk, i, batch, rows) for i, rows in enumerate(chunks)]
        per_sample = [out for f in futures for out in f.result()]  # chunk order = input order
        outputs = [np.concatenate([sample[k].reshape(1, -1) for sample in per_sample]).astype(np.float32, copy=False)
                   for k in range(len(self.metadata.outputs))]
        return Predictions.from_outputs(self.metadata.outputs, outputs)

    def _run_chunk(self, context: int, batch: np.ndarray, rows: range) -> list[list[np.ndarray]]:
        results = []
        with self._locks[context]:
            runtime = self._runtimes[context]
            for row in rows:
                outputs = runtime.infer(batch[row:row + 1])  # a view: no copy
                if outputs is None or len(outputs) != len(self.metadata.outputs):
                    got = "None" if outputs is None else f"{len(outputs)} outputs"
                    raise RuntimeError(f"RKNN inference failed on NPU core {self.cores[context]} (context {context}, "
                                       f"sample {row}): got {got}, expected {len(self.metadata.outputs)} outputs")
                results.append(outputs)
        return results

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for runtime in self._runtimes:
            try:
                runtime.release()
            except Exception:  # noqa: BLE001 - release the others even if one fails
                log.warning("releasing an RKNN context failed", exc_info=True)
        self._runtimes = []
