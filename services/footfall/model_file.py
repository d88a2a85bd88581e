"""The model-file contract: the metadata every model file carries, read by the services and
written by the training package (``footfall_training.export``, ``footfall_training.rknn_convert``).

A model file carries its own metadata (ONNX ``metadata_props[METADATA_KEY]``; a ``.json`` sidecar
for formats without such a field, e.g. ``model.rknn.json``): name, version, input size, channel
order, mean/std, label names, output order, precision. Backends read it from there, never from code.

Example:
    >>> meta = ModelMetadata(name="m", version="1", input_size=112, channel_order="RGB", mean=(0., 0., 0.),
    ...                      std=(1., 1., 1.), races=("a",), emotions=("b",))
    >>> ModelMetadata.from_props({METADATA_KEY: meta.to_json()}) == meta
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from footfall.predictions import HEADS

# The ONNX metadata_props key (and the sidecar's content) holding ModelMetadata as JSON.
METADATA_KEY = "footfall"


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    input_size: int
    channel_order: str  # "RGB"
    mean: tuple[float, float, float]  # on 0..255 pixel values
    std: tuple[float, float, float]
    races: tuple[str, ...]
    emotions: tuple[str, ...]
    outputs: tuple[str, ...] = HEADS
    precision: str = "fp32"  # fp32 / int8
    # The constant the graph adds to the emotion logits before the softmax (EMOTIONS order; empty:
    # none), recorded for people: it is inside the weights already, so no backend adds it again.
    emotion_bias: tuple[float, ...] = ()
    # The top emotion probability below which the worker mirrors a face (flip averaging of the unsure
    # faces only), chosen for this model's calibration on its validation split (model card, "Flip
    # averaging"); None: not recorded (the worker then mirrors every face unless told otherwise).
    flip_confidence: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> ModelMetadata:
        d = json.loads(text)
        for key in ("mean", "std", "races", "emotions", "outputs", "emotion_bias"):
            if key in d:  # emotion_bias: absent in files exported before it existed
                d[key] = tuple(d[key])
        return ModelMetadata(**d)

    @staticmethod
    def from_props(props: Mapping[str, str]) -> ModelMetadata:
        """The metadata in an ONNX model's key/value metadata (``onnx.ModelProto.metadata_props`` as a
        dict, or ONNX Runtime's ``custom_metadata_map``): the one place ONNX metadata is parsed."""
        if METADATA_KEY not in props:
            raise ValueError(f"ONNX model has no '{METADATA_KEY}' metadata: export it with footfall-export")
        return ModelMetadata.from_json(props[METADATA_KEY])

    @staticmethod
    def from_onnx(model) -> ModelMetadata:
        """The metadata of a loaded ``onnx.ModelProto``."""
        return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})

    @staticmethod
    def from_onnx_file(path: Path) -> ModelMetadata:
        """The metadata of an ONNX file (its weights are not loaded)."""
        import onnx

        return ModelMetadata.from_onnx(onnx.load(str(path), load_external_data=False))

    @staticmethod
    def from_sidecar(model_path: Path) -> ModelMetadata:
        sidecar = sidecar_path(model_path)
        if not sidecar.exists():
            raise FileNotFoundError(f"model metadata {sidecar} not found next to {model_path}")
        return ModelMetadata.from_json(sidecar.read_text())

    def write_sidecar(self, model_path: Path) -> Path:
        """Write this metadata as ``model_path``'s ``.json`` sidecar; returns the sidecar's path."""
        sidecar = sidecar_path(model_path)
        sidecar.write_text(self.to_json() + "\n")
        return sidecar


def sidecar_path(model_path: Path) -> Path:
    """``model/footfall_w050.rknn`` -> ``model/footfall_w050.rknn.json``."""
    return Path(str(model_path) + ".json")
