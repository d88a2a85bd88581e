"""The inference worker: a gRPC server (footfall.v1.FaceInference) around one backend.

Requests are validated (bytes that are no PredictRequest, empty batch, too many crops,
undecodable or badly shaped crop → INVALID_ARGUMENT naming the crop), decoded in the request
threads, and micro-batched across concurrent requests. An image's dimensions are read from its
header before it is decoded, so an image too large to be a face crop is refused without
allocating its pixels, and at most ``max_concurrent_decodes`` crops are decoded at once (each
is shrunk to the model's input size right away): the worker's memory stays bounded whatever
it is sent. Standard gRPC health checking and reflection are served; on
SIGTERM the health status turns NOT_SERVING, in-flight requests finish, then the backend
is released.

    FOOTFALL_FACE_MODEL=model/footfall_w050.int8.onnx footfall-inference
"""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent import futures

import cv2
import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image

from footfall.config import InferenceSettings
from footfall.inference.backends import Backend, load_backend
from footfall.inference.backends.base import prepare_crops
from footfall.inference.batcher import BatcherClosed, MicroBatcher
from footfall.observability import INFERENCE_DECODE, REQUESTS, ctx, run_service
from footfall.proto import inference_pb2, inference_pb2_grpc
from footfall.tls import server_credentials

log = logging.getLogger("footfall.inference")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["FaceInference"].full_name
# Crops are aligned 112x112 faces; anything over a few hundred pixels a side is no crop (and a
# 16000x16000 PNG of 0.7 MB would decode to 768 MB).
MIN_CROP_PX, MAX_CROP_PX = 16, 448
IMAGE_FORMATS = ("JPEG", "PNG")
# Pillow only reads headers here; its own pixel limit (a 'decompression bomb' error that does
# not say the size) is replaced by the stricter size check below, which names the size.
Image.MAX_IMAGE_PIXELS = None


class InvalidCrop(ValueError):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"crop {index}: {reason}")
        self.index = index


def _check_size(index: int, w: int, h: int) -> None:
    if not (MIN_CROP_PX <= h <= MAX_CROP_PX and MIN_CROP_PX <= w <= MAX_CROP_PX):
        raise InvalidCrop(index, f"size {w}x{h} outside {MIN_CROP_PX}..{MAX_CROP_PX} px")
    if max(h, w) > 1.5 * min(h, w):
        raise InvalidCrop(index, f"size {w}x{h} is not an aligned face crop (aspect ratio > 1.5)")


def image_header(index: int, data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG or PNG header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:  # reads the header only
            return image.size
    except Exception:  # noqa: BLE001 - hostile bytes can make an image parser raise anything
        raise InvalidCrop(index, "undecodable image (expected JPEG or PNG bytes)") from None


def decode_crop(index: int, crop: inference_pb2.FaceCrop) -> np.ndarray:
    """One request crop as an RGB uint8 array, or InvalidCrop saying what is wrong with it."""
    kind = crop.WhichOneof("data")
    if kind == "jpeg":
        if not crop.jpeg:
            raise InvalidCrop(index, "empty image bytes")
        _check_size(index, *image_header(index, crop.jpeg))
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
    _check_size(index, rgb.shape[1], rgb.shape[0])
    return rgb


def _parsed(method, request_type):
    """``method`` taking the request's bytes: bytes that are no ``request_type`` get INVALID_ARGUMENT
    (gRPC's own deserializer would answer INTERNAL, which clients retry)."""

    def handler(data: bytes, context: grpc.ServicerContext):
        try:
            request = request_type.FromString(data)
        except DecodeError as exc:
            REQUESTS.labels(code="INVALID_ARGUMENT").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a {request_type.__name__}: {exc}")
        return method(request, context)

    return handler


class FaceInferenceServicer(inference_pb2_grpc.FaceInferenceServicer):
    def __init__(self, backend: Backend, batcher: MicroBatcher, max_request_faces: int,
                 max_concurrent_decodes: int = 2) -> None:
        self.backend = backend
        self.batcher = batcher
        self.max_request_faces = max_request_faces
        self.meta = backend.metadata
        self.decode_slots = threading.BoundedSemaphore(max_concurrent_decodes)

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's methods, each parsing its own request bytes (see ``_parsed``)."""
        methods = {"Predict": (self.Predict, inference_pb2.PredictRequest, inference_pb2.PredictResponse),
                   "GetModelInfo": (self.GetModelInfo, inference_pb2.ModelInfoRequest, inference_pb2.ModelInfo)}
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(_parsed(method, request_type),
                                                      response_serializer=response_type.SerializeToString)
            for name, (method, request_type, response_type) in methods.items()})

    def _prepare(self, crops) -> np.ndarray:
        """The crops decoded one at a time and shrunk to the model's input at once, so a request
        holds input-size pixels only, and the decode slots bound the full-size images in memory."""
        size = self.meta.input_size
        batch = np.empty((len(crops), size, size, 3), np.uint8)
        for i, crop in enumerate(crops):
            with self.decode_slots:
                batch[i] = prepare_crops([decode_crop(i, crop)], size)[0]
        return batch

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
            batch = self._prepare(request.crops)
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
            predictions=preds.to_proto([crop.id for crop in request.crops]),
            model_name=self.meta.name, model_version=self.meta.version, batch_size=ran_in)

    def GetModelInfo(self, request, context):  # noqa: N802
        return inference_pb2.ModelInfo(model_name=self.meta.name, model_version=self.meta.version,
                                       backend=self.backend.name, input_size=self.meta.input_size,
                                       races=list(self.meta.races), emotions=list(self.meta.emotions))


class InferenceServer:
    """A started gRPC inference server (``port`` is the bound port)."""

    def __init__(self, settings: InferenceSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or load_backend(settings.backend, settings.face_model, settings=settings)
        self.batcher = MicroBatcher(self.backend, settings.max_batch, settings.max_wait_ms / 1000.0)
        limit = settings.max_message_mb * 1024 * 1024
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit),
                                           # Clients reconnect (and re-resolve DNS) every few minutes, so a
                                           # newly added inference pod starts receiving traffic.
                                           ("grpc.max_connection_age_ms", settings.max_connection_age_s * 1000),
                                           ("grpc.max_connection_age_grace_ms", 30_000),
                                           # A second worker on a taken port must fail, not share it.
                                           ("grpc.so_reuseport", 0)])
        servicer = FaceInferenceServicer(self.backend, self.batcher, settings.max_request_faces,
                                         settings.max_concurrent_decodes)
        self.server.add_generic_rpc_handlers((servicer.handlers(),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME),
                                            self.server)
        address, credentials = f"{settings.grpc_host}:{settings.grpc_port}", server_credentials(settings)
        try:
            self.port = self.server.add_secure_port(address, credentials) if credentials else \
                self.server.add_insecure_port(address)
        except RuntimeError:  # newer grpcio raise instead of returning 0
            self.port = 0
        if self.port == 0:
            self.batcher.close()
            raise OSError(f"cannot listen on {address} (port taken by another process?)")
        self.health_server = None
        if settings.grpc_health_port:  # kubelet's gRPC probe speaks plain text only: health and nothing else
            self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            if not self.health_server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_health_port}"):
                raise OSError(f"cannot listen on {settings.grpc_host}:{settings.grpc_health_port}")
            self.health_server.start()
        self.server.start()
        self._serving = True
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("inference server listening", **ctx(port=self.port, tls=credentials is not None,
                                                      mutual_tls=bool(credentials and settings.grpc_tls_ca),
                                                      backend=self.backend.name,
                                                           model=self.backend.metadata.name,
                                                      version=self.backend.metadata.version))

    @property
    def serving(self) -> bool:
        return self._serving

    def ready(self) -> bool:
        return self.serving

    def run(self, stop: threading.Event) -> None:
        """Serve (gRPC runs in its own threads) until ``stop`` is set."""
        stop.wait()

    def close(self) -> None:
        self.stop()

    def stop(self, grace_s: float = 10.0) -> None:
        """NOT_SERVING first (load balancers move away), finish in-flight work, release the model."""
        self._serving = False
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if self.health_server:
            self.health_server.stop(0)
        self.batcher.close()
        self.backend.close()
        log.info("inference server stopped")


def main() -> None:
    settings = InferenceSettings()
    run_service(settings, 9102, lambda stop: InferenceServer(settings))


if __name__ == "__main__":
    main()

