"""gRPC TLS and mutual TLS between the aggregator's client and a real inference server on a real
port, with real certificates made in the test (footfall-certs, i.e. the `cryptography` package):
TLS works, plain text is refused, mutual TLS refuses a client without a certificate or with one
from another CA, and the plain-text health port serves health and nothing else."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from footfall.config import AggregatorSettings, InferenceSettings
from footfall.embedded_redis import free_port
from footfall.inference.client import InferenceClient, InferenceUnavailable
from footfall.inference.server import InferenceServer
from footfall.proto import inference_pb2, inference_pb2_grpc
from footfall.tls import channel_credentials, generate_certificates, server_credentials


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generate_certificates(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A second, unrelated CA and its client certificate (an attacker's)."""
    return generate_certificates(tmp_path_factory.mktemp("other"), ["localhost", "127.0.0.1"])


def _server(face_model, certs, mutual: bool, health_port: int = 0) -> InferenceServer:
    return InferenceServer(InferenceSettings(
        grpc_port=0, grpc_host="127.0.0.1", face_model=face_model, max_wait_ms=2.0, grpc_health_port=health_port,
        grpc_tls_cert=str(certs / "server.crt"), grpc_tls_key=str(certs / "server.key"),
        grpc_tls_ca=str(certs / "ca.crt") if mutual else ""))


def _client(port: int, ca=None, client_cert_dir=None) -> InferenceClient:
    settings = AggregatorSettings(grpc_tls_ca=str(ca / "ca.crt") if ca else "",
                                  grpc_tls_cert=str(client_cert_dir / "client.crt") if client_cert_dir else "",
                                  grpc_tls_key=str(client_cert_dir / "client.key") if client_cert_dir else "")
    return InferenceClient(f"127.0.0.1:{port}", deadline_s=3, retries=1, backoff_s=0,
                           credentials=channel_credentials(settings))


def _crop() -> bytes:
    face = np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8)
    return cv2.imencode(".jpg", face)[1].tobytes()


@pytest.fixture(scope="module")
def tls_server(face_model, certs):
    server = _server(face_model, certs, mutual=False)
    yield server
    server.stop(grace_s=0.5)


@pytest.fixture(scope="module")
def mtls_server(face_model, certs):
    health_port = free_port()
    server = _server(face_model, certs, mutual=True, health_port=health_port)
    server.health_port = health_port
    yield server
    server.stop(grace_s=0.5)


def test_tls_serves_a_client_that_trusts_the_ca(tls_server, certs):
    with _client(tls_server.port, ca=certs) as client:
        assert client.predict([_crop()]).age.shape == (1,)


def test_tls_refuses_plain_text_and_an_unknown_ca(tls_server, other_ca):
    with _client(tls_server.port) as plain, pytest.raises(InferenceUnavailable):
        plain.model_info()
    with _client(tls_server.port, ca=other_ca) as wrong, pytest.raises(InferenceUnavailable):
        wrong.model_info()


def test_mutual_tls_serves_only_clients_with_a_certificate_from_its_ca(mtls_server, certs, other_ca):
    with _client(mtls_server.port, ca=certs, client_cert_dir=certs) as client:
        assert client.predict([_crop()]).age.shape == (1,)
    with _client(mtls_server.port, ca=certs) as no_cert, pytest.raises(InferenceUnavailable):
        no_cert.model_info()
    with _client(mtls_server.port, ca=certs, client_cert_dir=other_ca) as foreign, \
            pytest.raises(InferenceUnavailable):
        foreign.model_info()
    with _client(mtls_server.port) as plain, pytest.raises(InferenceUnavailable):
        plain.model_info()


def test_the_plain_health_port_serves_health_only(mtls_server):
    with grpc.insecure_channel(f"127.0.0.1:{mtls_server.health_port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            inference_pb2_grpc.FaceInferenceStub(channel).GetModelInfo(inference_pb2.ModelInfoRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_incomplete_tls_settings_are_refused_with_a_clear_error(certs):
    with pytest.raises(ValueError, match="both FOOTFALL_GRPC_TLS_CERT and FOOTFALL_GRPC_TLS_KEY"):
        server_credentials(InferenceSettings(grpc_tls_cert=str(certs / "server.crt")))
    with pytest.raises(ValueError, match="without FOOTFALL_GRPC_TLS_CERT/KEY"):
        server_credentials(InferenceSettings(grpc_tls_ca=str(certs / "ca.crt")))
    with pytest.raises(ValueError, match="without FOOTFALL_GRPC_TLS_CA"):
        channel_credentials(AggregatorSettings(grpc_tls_cert=str(certs / "client.crt"),
                                               grpc_tls_key=str(certs / "client.key")))
    with pytest.raises(ValueError, match="cannot read it"):
        channel_credentials(AggregatorSettings(grpc_tls_ca=str(certs / "missing.crt")))
    assert server_credentials(InferenceSettings()) is None and channel_credentials(AggregatorSettings()) is None
