"""Client of the inference workers: deadline, retries, several workers load-balanced, requests
sized to what the workers accept, and hung workers taken out of rotation.

``targets`` is a comma-separated list; each entry gets its own channel with gRPC's
``round_robin`` policy, so a ``dns:///name:port`` entry that resolves to several pods (a
headless Service) is balanced inside the channel, and a list of ``host:port`` entries is
rotated here. A call that fails with UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED (other
than a message too large) / INTERNAL / UNKNOWN / CANCELLED is retried on the next target with
backoff; INVALID_ARGUMENT is not retried and raises ``BadCrop`` naming the offending crop.

Requests are split by crop count and by bytes to stay under the workers' limits
(``max_request_faces``, ``max_message_mb``). A worker that answers with a lower limit (a
message too large, too many crops) teaches the client its limit: the crops are split again,
never resent as they were; a single crop over the limit is a ``BadCrop``.

A target whose call times out or is unavailable is ejected from the rotation (circuit
breaker): for ``eject_s`` after the first failure, doubling with each failed probe up to
``max_eject_s``. When that time is over, a gRPC health check with a short deadline
(``probe_s``) probes it: SERVING brings it back, anything else ejects it again. A hung (e.g.
SIGSTOPped) worker so costs one deadline once and a short probe now and then, instead of one
deadline every other call.

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
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from footfall.predictions import Predictions
from footfall.proto import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
# Failures that say the target itself is not answering (rather than this request being wrong).
EJECTING = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["FaceInference"].full_name
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# gRPC's wording for a message over a channel's limit: "... larger than max (22000000 vs. 16777216)".
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")
_TOO_MANY = re.compile(r"(\d+) crops in one request; at most (\d+)")
_CROP_OVERHEAD = 16  # protobuf tags and lengths of one FaceCrop in a PredictRequest
_REQUEST_OVERHEAD = 1024


class BadCrop(ValueError):
    """The server rejected a request because of one crop (``index``) or the request itself (-1)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class InferenceUnavailable(RuntimeError):
    """No inference worker answered within the retries."""


class _LimitLearned(Exception):
    """A worker refused a request for a limit lower than the client's: split again."""


@dataclass
class _Target:
    address: str
    stub: inference_pb2_grpc.FaceInferenceStub
    health: health_pb2_grpc.HealthStub
    ejected_until: float = 0.0
    ejections: int = 0  # consecutive failed calls (the ejection time doubles with each)


class InferenceClient:
    def __init__(self, targets: str, deadline_s: float = 5.0, retries: int = 3, backoff_s: float = 0.2,
                 max_message_mb: int = 16, max_request_faces: int = 256, eject_s: float = 1.0,
                 max_eject_s: float = 30.0, probe_s: float = 0.25,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        addresses = [t.strip() for t in targets.split(",") if t.strip()]
        if not addresses:
            raise ValueError("no inference targets configured (FOOTFALL_INFERENCE_TARGETS)")
        self.targets = addresses
        limit = max_message_mb * 1024 * 1024
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.max_send_message_length", limit),
                   ("grpc.max_receive_message_length", limit), ("grpc.enable_retries", 0)]
        # credentials: footfall.tls.channel_credentials (TLS / mutual TLS), None for plain text.
        self.channels = [grpc.secure_channel(t, credentials, options=options) if credentials else
                         grpc.insecure_channel(t, options=options) for t in addresses]
        self._targets = [_Target(a, inference_pb2_grpc.FaceInferenceStub(c), health_pb2_grpc.HealthStub(c))
                         for a, c in zip(addresses, self.channels)]
        self._next = itertools.cycle(range(len(self._targets)))
        self.deadline_s, self.retries, self.backoff_s = deadline_s, retries, backoff_s
        self.max_message_bytes, self.max_request_faces = limit, max_request_faces
        self.eject_s, self.max_eject_s, self.probe_s = eject_s, max_eject_s, probe_s

    def predict(self, jpegs: list[bytes], ids: list[str] | None = None) -> Predictions:
        """Predictions for encoded face crops, in order (sent in as many requests as the limits need)."""
        ids = list(ids) if ids else [""] * len(jpegs)
        if not jpegs:
            return self._predict_request([], [])  # the worker says what is wrong with an empty batch
        parts: list[Predictions] = []
        start = 0
        while start < len(jpegs):
            end = self._request_end(jpegs, ids, start)
            try:
                parts.append(self._predict_request(jpegs[start:end], ids[start:end]))
            except _LimitLearned:
                continue  # the same crops again, split under the lower limit
            except BadCrop as exc:
                raise BadCrop(exc.index + start if exc.index >= 0 else -1, str(exc)) from None
            start = end
        return Predictions.concat(parts) if len(parts) != 1 else parts[0]

    def _request_end(self, jpegs: list[bytes], ids: list[str], start: int) -> int:
        """End of the longest run of crops from ``start`` that fits one request."""
        budget, end = self.max_message_bytes - _REQUEST_OVERHEAD, start
        while end < len(jpegs) and end - start < self.max_request_faces:
            size = len(jpegs[end]) + len(ids[end].encode()) + _CROP_OVERHEAD
            if size > budget:
                if end == start:
                    raise BadCrop(start, f"crop {start}: {len(jpegs[start])} bytes, over the request limit of "
                                         f"{self.max_message_bytes} bytes")
                break
            budget -= size
            end += 1
        return end

    def _predict_request(self, jpegs: list[bytes], ids: list[str]) -> Predictions:
        request = inference_pb2.PredictRequest(
            crops=[inference_pb2.FaceCrop(jpeg=j, id=i) for j, i in zip(jpegs, ids)])
        try:
            p = self._call("Predict", request).predictions
        except BadCrop as exc:
            if exc.index < 0 and self._learn_limit(len(jpegs), str(exc)):
                raise _LimitLearned from None
            raise
        return Predictions.from_proto(p)

    def _learn_limit(self, crops: int, details: str) -> bool:
        """Lower a limit from a worker's refusal; whether splitting again can help."""
        if (match := _TOO_LARGE.search(details)) and crops > 1 and int(match.group(2)) < self.max_message_bytes:
            self.max_message_bytes = int(match.group(2))
        elif (match := _TOO_MANY.search(details)) and int(match.group(2)) < self.max_request_faces:
            self.max_request_faces = max(1, int(match.group(2)))
        else:
            return False
        log.warning("inference worker limit learned: %s; requests are split under it", details)
        return True

    def _pick(self) -> _Target:
        """The next target in rotation that is not ejected (an ejected one whose time is over
        must pass its probe first); when all are out, the one whose ejection ends first."""
        now = time.monotonic()
        for _ in range(len(self._targets)):
            target = self._targets[next(self._next)]
            if target.ejected_until <= now and (not target.ejections or self._probe(target)):
                return target
        return min(self._targets, key=lambda t: t.ejected_until)

    def _probe(self, target: _Target) -> bool:
        """Whether an ejected target answers its health check (SERVING) within ``probe_s``."""
        try:
            status = target.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                         timeout=self.probe_s).status
        except grpc.RpcError as exc:
            self._eject(target, exc.code())
            return False
        if status != health_pb2.HealthCheckResponse.SERVING:
            self._eject(target, grpc.StatusCode.UNAVAILABLE)
            return False
        log.info("inference worker %s back in rotation", target.address)
        target.ejections, target.ejected_until = 0, 0.0
        return True

    def _eject(self, target: _Target, code: grpc.StatusCode) -> None:
        duration = min(self.eject_s * 2 ** target.ejections, self.max_eject_s)
        target.ejections += 1
        target.ejected_until = time.monotonic() + duration
        log.warning("inference worker %s out of rotation for %.1fs (%s)", target.address, duration, code.name)

    def _call(self, method: str, request):
        """``method`` on the next worker, failing over to the others with backoff."""
        last: grpc.RpcError | None = None
        attempts = max(self.retries, len(self._targets))
        for attempt in range(attempts):
            target = self._pick()
            try:
                reply = getattr(target.stub, method)(request, timeout=self.deadline_s)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    match = re.match(r"crop (\d+):", exc.details() or "")
                    raise BadCrop(int(match.group(1)) if match else -1, exc.details()) from None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(exc.details() or ""):
                    raise BadCrop(-1, exc.details()) from None  # resending it cannot succeed
                if code not in RETRYABLE:
                    raise
                if code in EJECTING:
                    self._eject(target, code)
                last = exc
                log.warning("inference call to %s failed (%s: %s), attempt %d/%d", target.address, code.name,
                            exc.details(), attempt + 1, attempts)
                time.sleep(self.backoff_s * (2 ** min(attempt, 4)) if attempt + 1 >= len(self._targets) else 0)
                continue
            target.ejections, target.ejected_until = 0, 0.0  # answered (a fallback call to an ejected one)
            return reply
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
