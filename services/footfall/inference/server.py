"""The inference worker: a gRPC server (footfall.v1.FaceInference) around one backend.

Requests are validated (empty batch, too many crops, undecodable or badly shaped crop →
INVALID_ARGUMENT naming the crop), decoded in the request threads, and micro-batched
across concurrent requests. Standard gRPC health checking and reflection are served; on
SIGTERM the health status turns NOT_SERVING, in-flight requests finish, then the backend
is released.

    FOOTFALL_FACE_MODEL=model/footfall_w050.int8.onnx footfall-inference
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from footfall.config import InferenceSettings
from footfall.inference.backends import Backend, load_backend
from footfall.inference.backends.base import prepare_crops
from footfall.inference.batcher import BatcherClosed, MicroBatcher
from footfall.observability import INFERENCE_DECODE, REQUESTS, ctx, serve_http, setup_logging, shutdown_event
from footfall.proto import inference_pb2, inference_pb2_grpc

log = logging.getLogger("footfall.inference")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["FaceInference"].full_name
MIN_CROP_PX, MAX_CROP_PX = 16, 1024


class InvalidCrop(ValueError):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"crop {index}: {reason}")
        self.index = index


def decode_crop(index: int, crop: inference_pb2.FaceCrop) -> np.ndarray:
    """One request crop as an RGB uint8 array, or InvalidCrop saying what is wrong with it."""
    kind = crop.WhichOneof("data")
    if kind == "jpeg":
        if not crop.jpeg:
            raise InvalidCrop(index, "empty image bytes")
        bgr = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InvalidCrop(index, "undecodable image (expected JPEG or PNG bytes)")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    elif kind == "raw":
        h, w = crop.raw.height, crop.raw.width
        if len(crop.raw.rgb) != h * w * 3:
            raise InvalidCrop(index, f"raw image has {len(crop.raw.rgb)} bytes, expected {h}x{w}x3={h * w * 3}")
        rgb = np.frombuffer(crop.raw.rgb, np.uint8).reshape(h, w, 3)
    else:
        raise InvalidCrop(index, "no image data (set jpeg or raw)")
    h, w = rgb.shape[:2]
    if not (MIN_CROP_PX <= h <= MAX_CROP_PX and MIN_CROP_PX <= w <= MAX_CROP_PX):
        raise InvalidCrop(index, f"size {w}x{h} outside {MIN_CROP_PX}..{MAX_CROP_PX} px")
    if max(h, w) > 1.5 * min(h, w):
        raise InvalidCrop(index, f"size {w}x{h} is not an aligned face crop (aspect ratio > 1.5)")
    return rgb


class FaceInferenceServicer(inference_pb2_grpc.FaceInferenceServicer):
    def __init__(self, backend: Backend, batcher: MicroBatcher, max_request_faces: int) -> None:
        self.backend = backend
        self.batcher = batcher
        self.max_request_faces = max_request_faces
        self.meta = backend.metadata

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str):
        REQUESTS.labels(code=code.name).inc()
        context.abort(code, message)

    def Predict(self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext):  # noqa: N802
        n = len(request.crops)
        if n == 0:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "empty batch: send at least one crop")
        if n > self.max_request_faces:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{n} crops in one request; at most {self.max_request_faces}")
        started = time.perf_counter()
        try:
            batch = prepare_crops([decode_crop(i, crop) for i, crop in enumerate(request.crops)],
                                  self.meta.input_size)
        except InvalidCrop as exc:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            INFERENCE_DECODE.inc(time.perf_counter() - started)
        try:
            preds, ran_in = self.batcher.submit(batch).result()
        except BatcherClosed as exc:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except Exception as exc:  # noqa: BLE001 - the backend failed; the worker keeps serving
            log.exception("prediction failed")
            self._abort(context, grpc.StatusCode.INTERNAL, f"model run failed: {exc}")
        REQUESTS.labels(code="OK").inc()
        return inference_pb2.PredictResponse(
            predictions=[inference_pb2.Prediction(id=crop.id, age=float(preds.age[i]),
                                                  gender_female=float(preds.gender[i]),
                                                  race=preds.race[i].tolist(), emotion=preds.emotion[i].tolist())
                         for i, crop in enumerate(request.crops)],
            model_name=self.meta.name, model_version=self.meta.version, batch_size=ran_in)

    def GetModelInfo(self, request, context):  # noqa: N802
        return inference_pb2.ModelInfo(model_name=self.meta.name, model_version=self.meta.version,
                                       backend=self.backend.name, input_size=self.meta.input_size,
                                       races=list(self.meta.races), emotions=list(self.meta.emotions))


class InferenceServer:
    """A started gRPC inference server (``port`` is the bound port)."""

    def __init__(self, settings: InferenceSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or load_backend(settings.backend, settings.face_model, threads=settings.threads,
                                               flip_average=settings.flip_average, npu_cores=settings.npu_cores,
                                               contexts_per_core=settings.npu_contexts_per_core)
        self.batcher = MicroBatcher(self.backend, settings.max_batch, settings.max_wait_ms / 1000.0)
        limit = settings.max_message_mb * 1024 * 1024
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit),
                                           # Clients reconnect (and re-resolve DNS) every few minutes, so a
                                           # newly added inference pod starts receiving traffic.
                                           ("grpc.max_connection_age_ms", settings.max_connection_age_s * 1000),
                                           ("grpc.max_connection_age_grace_ms", 30_000)])
        inference_pb2_grpc.add_FaceInferenceServicer_to_server(
            FaceInferenceServicer(self.backend, self.batcher, settings.max_request_faces), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME),
                                            self.server)
        self.port = self.server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.grpc_host}:{settings.grpc_port}")
        self.server.start()
        self._serving = True
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("inference server listening", **ctx(port=self.port, backend=self.backend.name,
                                                           model=self.backend.metadata.name,
                                                      version=self.backend.metadata.version))

    @property
    def serving(self) -> bool:
        return self._serving

    def stop(self, grace_s: float = 10.0) -> None:
        """NOT_SERVING first (load balancers move away), finish in-flight work, release the model."""
        self._serving = False
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.batcher.close()
        self.backend.close()
        log.info("inference server stopped")


def main() -> None:
    settings = InferenceSettings()
    setup_logging(settings.log_level, settings.log_format)
    stop = shutdown_event()
    server = InferenceServer(settings)
    http = serve_http(settings.metrics_port or 9102, ready=lambda: server.serving)
    stop.wait()
    server.stop()
    http.close()


if __name__ == "__main__":
    main()

