"""The inference worker as a real gRPC server on a real port, with the committed model."""

import threading

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from footfall.inference.backends import load_backend
from footfall.inference.client import BadCrop, InferenceClient, InferenceUnavailable
from footfall.model_file import ModelMetadata
from footfall.predictions import HEADS, Predictions
from footfall.proto import inference_pb2, inference_pb2_grpc


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (112, 112, 3), np.uint8) for _ in range(n)]


def _jpeg(rgb):
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # lossless: exact comparison
    return buf.tobytes()


def test_predictions_equal_the_backend_run_directly(inference_server, face_model):
    from footfall.config import InferenceSettings

    faces = _faces(5)
    with InferenceClient(f"127.0.0.1:{inference_server.port}") as client:
        got = client.predict([_jpeg(f) for f in faces])
    # the backend as the worker runs it by default (flip averaging on, for faces below the emotion confidence)
    served = InferenceSettings()
    carried = ModelMetadata.from_onnx_file(face_model).flip_confidence  # the threshold the model file carries
    assert served.flip_average and served.flip_confidence is None and carried < 1
    want = load_backend("onnxruntime", face_model, flip_average=True, flip_confidence=carried).predict(np.stack(faces))
    assert np.allclose(got.age, want.age, atol=1e-3) and np.allclose(got.emotion, want.emotion, atol=1e-4)
    assert got.race.shape == (5, 5) and np.allclose(got.race.sum(1), 1, atol=1e-3)


@pytest.mark.parametrize("flip,unsure_only", [(True, False), (True, True), (False, False)],
                         ids=["every-face", "unsure-faces", "off"])
def test_flip_averaging_setting_serves_the_mean_of_each_face_and_its_mirror_image(face_model, flip, unsure_only):
    """FOOTFALL_FLIP_AVERAGE off, on for every face (FOOTFALL_FLIP_CONFIDENCE=1), and on for the faces whose
    top emotion probability is below FOOTFALL_FLIP_CONFIDENCE only: the others keep their single-pass answer."""
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    faces = _faces(6, seed=1)
    plain = load_backend("onnxruntime", face_model)
    a, b = plain.predict(np.stack(faces)), plain.predict(np.stack([f[:, ::-1] for f in faces]))
    assert not np.allclose(a.emotion, b.emotion, atol=1e-4)  # random faces: the mirror image changes the answer
    top = a.emotion.max(axis=1)
    confidence = float(np.median(top)) if unsure_only else 1.0  # half the faces below it, half above
    server = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model,
                                               flip_average=flip, flip_confidence=confidence))
    try:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            got = client.predict([_jpeg(f) for f in faces])
            info = client.model_info()
    finally:
        server.stop(grace_s=1)
    mean = Predictions(*((getattr(a, h) + getattr(b, h)) / 2 for h in HEADS))
    mirrored = (top < confidence) if flip else np.zeros(len(faces), bool)
    assert not unsure_only or 0 < mirrored.sum() < len(faces)
    for head in HEADS:
        want = np.where(mirrored.reshape((-1,) + (1,) * (getattr(a, head).ndim - 1)), getattr(mean, head),
                        getattr(a, head))
        assert np.allclose(getattr(got, head), want, atol=1e-3 if head == "age" else 1e-4), head
    assert info.backend == {(True, False): "onnxruntime+flip", (False, False): "onnxruntime",
                            (True, True): f"onnxruntime+flip<{confidence:g}"}[(flip, unsure_only)]


def test_concurrent_requests_share_micro_batches(inference_server):
    stub = inference_pb2_grpc.FaceInferenceStub(grpc.insecure_channel(f"127.0.0.1:{inference_server.port}"))
    request = inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=_jpeg(f)) for f in _faces(2)])
    sizes = []
    barrier = threading.Barrier(8)

    def call():
        barrier.wait()
        sizes.append(stub.Predict(request, timeout=10).batch_size)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sizes) == 8 and max(sizes) > 2, f"no request was batched with another: {sizes}"


@pytest.mark.parametrize("crops, message", [
    ([], "empty batch"),
    ([inference_pb2.FaceCrop(jpeg=b"not an image")], "crop 0: undecodable"),
    ([inference_pb2.FaceCrop()], "crop 0: no image data"),
    ([inference_pb2.FaceCrop(raw=inference_pb2.RawImage(height=112, width=112, rgb=b"\0" * 10))], "crop 0: raw image"),
    ([inference_pb2.FaceCrop(raw=inference_pb2.RawImage(height=8, width=8, rgb=b"\0" * 192))], "crop 0: size 8x8"),
    ([inference_pb2.FaceCrop(raw=inference_pb2.RawImage(height=40, width=200, rgb=b"\0" * 24000))], "aspect"),
])
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(inference_server, crops, message):
    stub = inference_pb2_grpc.FaceInferenceStub(grpc.insecure_channel(f"127.0.0.1:{inference_server.port}"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(inference_pb2.PredictRequest(crops=crops), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    ok = stub.Predict(inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=_jpeg(_faces(1)[0]))]),
                      timeout=10)
    assert len(ok.predictions) == 1


def test_oversize_request_is_rejected_and_the_client_splits_under_the_limit(inference_server):
    n = inference_server.settings.max_request_faces + 1
    crop = inference_pb2.FaceCrop(jpeg=_jpeg(_faces(1)[0]))
    stub = inference_pb2_grpc.FaceInferenceStub(grpc.insecure_channel(f"127.0.0.1:{inference_server.port}"))
    with pytest.raises(grpc.RpcError, match="at most"):
        stub.Predict(inference_pb2.PredictRequest(crops=[crop] * n), timeout=30)
    # a client configured with a higher limit learns the worker's from its answer and splits
    with InferenceClient(f"127.0.0.1:{inference_server.port}", max_request_faces=10 * n) as client:
        assert len(client.predict([crop.jpeg] * n)) == n
        assert client.max_request_faces == n - 1


def test_client_names_the_bad_crop(inference_server):
    with InferenceClient(f"127.0.0.1:{inference_server.port}") as client, pytest.raises(BadCrop) as err:
        client.predict([_jpeg(_faces(1)[0]), b"\xff\xd8broken"])
    assert err.value.index == 1


def test_health_reflection_model_info_and_graceful_stop(inference_server, face_model):
    from footfall.config import InferenceSettings

    channel = grpc.insecure_channel(f"127.0.0.1:{inference_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "footfall.v1.FaceInference"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "footfall.v1.FaceInference" in [s.name for s in reply.list_services_response.service]
    info = inference_pb2_grpc.FaceInferenceStub(channel).GetModelInfo(inference_pb2.ModelInfoRequest(), timeout=5)
    # flip averaging is on by default, for the faces below the emotion confidence
    assert info.input_size == 112 and list(info.emotions)[3] == "happy"
    assert info.backend == f"onnxruntime+flip<{ModelMetadata.from_onnx_file(face_model).flip_confidence:g}"
    inference_server.stop(grace_s=1)
    with pytest.raises(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)


def test_client_fails_over_to_the_worker_still_serving(inference_server, face_model):
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    second = InferenceServer(InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", face_model=face_model))
    client = InferenceClient(f"127.0.0.1:{inference_server.port},127.0.0.1:{second.port}", deadline_s=2,
                             retries=3, backoff_s=0.01)
    jpeg = _jpeg(_faces(1)[0])
    assert len(client.predict([jpeg])) == 1
    inference_server.stop(grace_s=0.5)
    for _ in range(6):  # every call lands, whichever worker the rotation starts with
        assert len(client.predict([jpeg])) == 1
    second.stop(grace_s=0.5)
    with pytest.raises(InferenceUnavailable):
        client.predict([jpeg])
    client.close()
