"""The inference worker under hostile requests: garbage bytes, images whose header promises
gigabytes, many large crops from concurrent clients, a second worker on a taken port.
Real gRPC servers on real ports (in-process, and as a process whose peak memory is measured)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from footfall.embedded_redis import free_ports
from footfall.inference.server import MAX_CROP_PX
from footfall.proto import inference_pb2, inference_pb2_grpc

from ..support import container_memory_limit, peak_rss

PREDICT = "/footfall.v1.FaceInference/Predict"


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid black PNG of any size, compressed row by row (never held decoded here): the
    issue's 'decompression bomb' (16000x16000 is 0.7 MB on the wire, 768 MB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\x00" * (1 + 3 * width), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def smooth_jpeg(px: int) -> bytes:
    """A px x px JPEG that compresses well (so hundreds fit in one request)."""
    ramp = np.add.outer(np.arange(px), np.arange(px)) * 255 // (2 * px)
    return cv2.imencode(".jpg", np.dstack([ramp.astype(np.uint8)] * 3))[1].tobytes()


def raw_call(port: int, data: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(PREDICT)(data, timeout=10)  # no serializer: the bytes go as they are
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_garbage_protobuf_is_an_invalid_argument(inference_server):
    err = None
    with grpc.insecure_channel(f"127.0.0.1:{inference_server.port}") as channel:
        try:
            channel.unary_unary(PREDICT)(b"\xff\xff\xff\xff garbage", timeout=10)
        except grpc.RpcError as exc:
            err = exc
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "not a PredictRequest" in err.details()


@settings(max_examples=int(os.environ.get("FOOTFALL_FUZZ_GRPC_EXAMPLES", "400")), deadline=None,
          derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda crops: inference_pb2.PredictRequest(crops=crops).SerializeToString(), st.lists(st.one_of(
        st.builds(inference_pb2.FaceCrop, jpeg=st.binary(max_size=200), id=st.text(max_size=10)),
        st.builds(lambda h, w, rgb: inference_pb2.FaceCrop(raw=inference_pb2.RawImage(height=h, width=w, rgb=rgb)),
                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=300))), max_size=4))))
def test_fuzzed_requests_get_an_answer_never_an_internal_error(inference_server, data):
    code = raw_call(inference_server.port, data)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code


def test_an_image_whose_header_is_too_large_is_refused_before_decoding(inference_server):
    bomb = png_of_zeros(16000, 16000)
    assert len(bomb) < 1024 * 1024
    stub = inference_pb2_grpc.FaceInferenceStub(grpc.insecure_channel(f"127.0.0.1:{inference_server.port}"))
    crops = [inference_pb2.FaceCrop(jpeg=smooth_jpeg(112)), inference_pb2.FaceCrop(jpeg=bomb)]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(inference_pb2.PredictRequest(crops=crops), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"crop 1: size 16000x16000 outside 16..{MAX_CROP_PX} px"
    big = inference_pb2.FaceCrop(jpeg=smooth_jpeg(1024))
    with pytest.raises(grpc.RpcError, match="crop 0: size 1024x1024"):
        stub.Predict(inference_pb2.PredictRequest(crops=[big]), timeout=30)


def test_a_second_worker_on_a_taken_port_fails_clearly(inference_server, face_model):
    from footfall.config import InferenceSettings
    from footfall.inference.server import InferenceServer

    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{inference_server.port}"):
        InferenceServer(InferenceSettings(grpc_port=inference_server.port, grpc_host="127.0.0.1",
                                          face_model=face_model))


@pytest.mark.slow
def test_worker_memory_stays_under_its_container_limit_under_a_hostile_mix(face_model):
    """The issue's mix against the real worker process: a 16000 px PNG, 256 crops of 1024 px,
    256 crops of the largest accepted size from 4 concurrent clients, and valid requests."""
    limit = container_memory_limit("inference.yaml")
    grpc_port, metrics_port = free_ports(2)
    env = {**os.environ, "FOOTFALL_GRPC_PORT": str(grpc_port), "FOOTFALL_GRPC_HOST": "127.0.0.1",
           "FOOTFALL_METRICS_PORT": str(metrics_port), "FOOTFALL_FACE_MODEL": str(face_model)}
    proc = subprocess.Popen([sys.executable, "-m", "footfall.inference.server"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = inference_pb2_grpc.FaceInferenceStub(channel)
        ok = inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=smooth_jpeg(112))] * 8)
        stub.Predict(ok, timeout=30)
        idle = peak_rss(proc.pid)
        bomb = inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=png_of_zeros(16000, 16000))])
        huge = inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=smooth_jpeg(1024))] * 256)
        largest = inference_pb2.PredictRequest(crops=[inference_pb2.FaceCrop(jpeg=smooth_jpeg(MAX_CROP_PX))] * 256)
        codes: list[grpc.StatusCode] = []

        def send(request, times):
            for _ in range(times):
                try:
                    stub.Predict(request, timeout=120)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

        threads = [threading.Thread(target=send, args=(r, 2)) for r in (bomb, huge, huge, bomb)]
        threads += [threading.Thread(target=send, args=(largest, 1)) for _ in range(4)]
        threads += [threading.Thread(target=send, args=(ok, 5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        peak = peak_rss(proc.pid)
        print(f"inference worker peak RSS: idle {idle / 2**20:.0f} MiB, after the hostile mix "
              f"{peak / 2**20:.0f} MiB (container limit {limit / 2**20:.0f} MiB)")
        assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) == 8, codes  # 4x bomb, 4x 1024 px
        assert codes.count(grpc.StatusCode.OK) == 4 + 5, codes
        assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the container limit"
        stub.Predict(ok, timeout=30)  # still serving
    finally:
        proc.terminate()
        proc.wait(20)
