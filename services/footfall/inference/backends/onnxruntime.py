"""ONNX Runtime on the CPU: FP32 or INT8 (QDQ) ONNX models.

Example:
    >>> import numpy as np
    >>> from footfall.config import InferenceSettings
    >>> from footfall.inference.backends import load_backend
    >>> backend = load_backend("onnxruntime", InferenceSettings().face_model, threads=2)
    >>> backend.predict(np.zeros((2, 112, 112, 3), np.uint8)).emotion.shape
    (2, 7)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from footfall.inference.backends.base import Backend, normalize_nchw
from footfall.model_file import ModelMetadata
from footfall.predictions import Predictions


class OnnxRuntimeOptions(BaseModel):
    """The onnxruntime backend's options (an unknown option is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(2, ge=1, description="CPU threads of one inference session")

    @classmethod
    def from_settings(cls, settings) -> OnnxRuntimeOptions:
        """The options in the inference worker's settings (``footfall.config.InferenceSettings``)."""
        return cls(threads=settings.threads)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OnnxRuntimeOptions

    def __init__(self, model_path: Path, **options: object) -> None:
        import onnxruntime as ort

        self.options = OnnxRuntimeOptions(**options)
        if not Path(model_path).exists():
            raise FileNotFoundError(f"model file {model_path} not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.options.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: on an edge box the decoder, detector and aggregator share
        # the cores (measured here: 4 sessions on 2 cores went from 20 to 241 faces/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, batch: np.ndarray) -> Predictions:
        outputs = self.session.run(list(self.metadata.outputs), {self.input_name: normalize_nchw(batch, self.metadata)})
        return Predictions.from_outputs(self.metadata.outputs, outputs)
