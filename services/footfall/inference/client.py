"""Client of the inference workers: deadline, retries, several workers load-balanced.

``targets`` is a comma-separated list; each entry gets its own channel with gRPC's
``round_robin`` policy, so a ``dns:///name:port`` entry that resolves to several pods (a
headless Service) is balanced inside the channel, and a list of ``host:port`` entries is
rotated here. A call that fails with UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED /
INTERNAL / UNKNOWN / CANCELLED is retried on the next target with backoff; INVALID_ARGUMENT is not retried and
raises ``BadCrop`` naming the offending crop.

Example (with a worker running)::

    with InferenceClient("10.0.0.7:50051,10.0.0.8:50051") as client:
        predictions = client.predict([jpeg_bytes])
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time

import grpc
import numpy as np

from footfall.predictions import Predictions
from footfall.proto import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class BadCrop(ValueError):
    """The server rejected a request because of one crop (``index``) or the request itself (-1)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class InferenceUnavailable(RuntimeError):
    """No inference worker answered within the retries."""


class InferenceClient:
    def __init__(self, targets: str, deadline_s: float = 5.0, retries: int = 3, backoff_s: float = 0.2,
                 max_message_mb: int = 16, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not self.targets:
            raise ValueError("no inference targets configured (FOOTFALL_INFERENCE_TARGETS)")
        limit = max_message_mb * 1024 * 1024
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.max_send_message_length", limit),
                   ("grpc.max_receive_message_length", limit), ("grpc.enable_retries", 0)]
        # credentials: footfall.tls.channel_credentials (TLS / mutual TLS), None for plain text.
        self.channels = [grpc.secure_channel(t, credentials, options=options) if credentials else
                         grpc.insecure_channel(t, options=options) for t in self.targets]
        self.stubs = [inference_pb2_grpc.FaceInferenceStub(c) for c in self.channels]
        self._next = itertools.cycle(range(len(self.stubs)))
        self.deadline_s, self.retries, self.backoff_s = deadline_s, retries, backoff_s

    def predict(self, jpegs: list[bytes], ids: list[str] | None = None) -> Predictions:
        """Predictions for encoded face crops, in order."""
        request = inference_pb2.PredictRequest(
            crops=[inference_pb2.FaceCrop(jpeg=j, id=(ids[i] if ids else "")) for i, j in enumerate(jpegs)])
        p = self._call("Predict", request).predictions
        return Predictions(age=np.array([x.age for x in p], np.float32),
                           gender=np.array([x.gender_female for x in p], np.float32),
                           race=np.array([list(x.race) for x in p], np.float32).reshape(len(p), -1),
                           emotion=np.array([list(x.emotion) for x in p], np.float32).reshape(len(p), -1))

    def _call(self, method: str, request):
        """``method`` on the next worker, failing over to the others with backoff."""
        last: grpc.RpcError | None = None
        attempts = max(self.retries, len(self.stubs))
        for attempt in range(attempts):
            index = next(self._next)
            try:
                return getattr(self.stubs[index], method)(request, timeout=self.deadline_s)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    match = re.match(r"crop (\d+):", exc.details() or "")
                    raise BadCrop(int(match.group(1)) if match else -1, exc.details()) from None
                if code not in RETRYABLE:
                    raise
                last = exc
                log.warning("inference call to %s failed (%s: %s), attempt %d/%d", self.targets[index], code.name,
                            exc.details(), attempt + 1, attempts)
                time.sleep(self.backoff_s * (2 ** min(attempt, 4)) if attempt + 1 >= len(self.stubs) else 0)
        raise InferenceUnavailable(f"no inference worker answered after {attempts} attempts: "
                                   f"{last.code().name if last else ''} {last.details() if last else ''}")

    def model_info(self) -> inference_pb2.ModelInfo:
        """Name, version and label names of the workers' model."""
        return self._call("GetModelInfo", inference_pb2.ModelInfoRequest())

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
