"""docker-compose.yml: valid for Debian's docker-compose 1.29.2 (`docker-compose config`, which
runs offline), and it says what the stack needs: healthchecks, restart policies, start order
on health, the demo camera default, the volumes."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from ..support import missing_requirement
from .deploy_tools import (COMPOSE_FILE, DOCKERFILE, ROOT, compose_environment, compose_model,
                           redis_persistence_problems, tool)

FOOTFALL_SERVICES = ("inference", "ingest", "aggregator", "dashboard")
HEALTH_URLS = {
    "inference": "grpc://127.0.0.1:50052",  # the plain-text health port (50051 serves mutual TLS)
    "ingest": "http://127.0.0.1:9101/healthz",
    "aggregator": "http://127.0.0.1:9103/healthz",
    "dashboard": "http://127.0.0.1:8501/_stcore/health",
}


def docker_compose() -> str:
    found = tool("docker-compose")
    if found is None:
        missing_requirement("docker-compose not installed (Debian: apt-get install -y docker-compose)")
    return found


def compose_config(path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker-compose -f path config` with a clean environment (no host FOOTFALL_* leaking in)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FOOTFALL_", "POSTGRES_", "DASHBOARD_"))}
    return subprocess.run([docker_compose(), "-f", str(path), "config"], capture_output=True, text=True,
                          timeout=120, cwd=path.parent, env={**clean, **(env or {})})


# ---- the real tool -------------------------------------------------------------------------------

def test_docker_compose_config_accepts_the_file():
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {"redis", "postgres", "certs", *FOOTFALL_SERVICES}
    # What the tool understood matches our reading of the file (merge keys, defaults).
    ours = compose_model()
    for name in FOOTFALL_SERVICES:
        assert compose_environment(rendered["services"][name]) == compose_environment(ours["services"][name])
    assert rendered["services"]["aggregator"]["depends_on"]["inference"]["condition"] == "service_healthy"


def test_docker_compose_config_takes_cameras_from_the_environment():
    result = compose_config(COMPOSE_FILE, {"FOOTFALL_CAMERAS": "door=rtsp://192.0.2.1/s", "POSTGRES_PASSWORD": "pw"})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["ingest"]["environment"]["FOOTFALL_CAMERAS"] == "door=rtsp://192.0.2.1/s"
    assert ":pw@postgres:5432/" in services["aggregator"]["environment"]["FOOTFALL_DATABASE_URL"]


def test_docker_compose_config_rejects_an_unknown_key(tmp_path):
    """The check above can fail: a misspelt key is an error for docker-compose."""
    broken = COMPOSE_FILE.read_text().replace("    stop_grace_period: 60s", "    stop_grace_periods: 60s", 1)
    assert broken != COMPOSE_FILE.read_text()
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    result = compose_config(path)
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stderr


# ---- what the file says --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_model()


def test_no_version_key(compose):
    """The Compose Specification (no `version:`) is what both docker compose v2 and 1.29.2 read."""
    assert "version" not in compose


@pytest.mark.parametrize("name", ["redis", "postgres", *FOOTFALL_SERVICES])
def test_every_service_has_a_healthcheck_and_restarts(compose, name):
    service = compose["services"][name]
    assert service["restart"] == "unless-stopped"
    assert service["stop_grace_period"]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and len(test) > 1
    for key in ("interval", "timeout", "retries"):
        assert key in service["healthcheck"]


def test_redis_keeps_the_crops_in_memory_only(compose):
    """Privacy: the stream holds face crops, which must never reach disk (no RDB, no AOF, no volume)."""
    redis = compose["services"]["redis"]
    assert redis_persistence_problems(redis["command"]) == []
    assert not redis.get("volumes"), "Redis needs no volume: nothing of it may be kept on disk"


@pytest.mark.parametrize("name", FOOTFALL_SERVICES)
def test_footfall_services_probe_their_conventional_endpoint(compose, name):
    service = compose["services"][name]
    assert service["healthcheck"]["test"][1:] == ["python", "/app/healthcheck.py", HEALTH_URLS[name]]
    assert service["command"] == [f"footfall-{name}"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert f"AS {service['build']['target']}" in DOCKERFILE.read_text()
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_depends_on_waits_for_health(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if dependency == "certs":  # a one-shot job: waited for until it has written the certificates
                assert rule == {"condition": "service_completed_successfully"}, name
                continue
            assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]
    assert set(services["aggregator"]["depends_on"]) == {"redis", "postgres", "inference"}
    assert set(services["inference"]["depends_on"]) == {"certs"}
    assert "redis" in services["ingest"]["depends_on"]
    assert "postgres" in services["dashboard"]["depends_on"]


def test_images_and_ports(compose):
    services = compose["services"]
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["postgres"]["image"] == "postgres:16-alpine"
    assert services["dashboard"]["ports"] == ["8501:8501"]
    assert all("ports" not in services[n] for n in services if n != "dashboard"), "only the dashboard is published"


def test_ingest_reads_the_demo_clip_and_keeps_yunet_in_a_volume(compose):
    ingest = compose["services"]["ingest"]
    env = compose_environment(ingest)
    assert env["FOOTFALL_CAMERAS"] == "demo=/media/demo.mp4"
    assert env["FOOTFALL_MODELS_DIR"] == "/models"
    assert "./media:/media:ro" in ingest["volumes"]
    assert "models:/models" in ingest["volumes"]
    assert {"models", "pgdata"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_inference_runs_onnxruntime_on_the_committed_int8_model(compose):
    env = compose_environment(compose["services"]["inference"])
    assert env["FOOTFALL_BACKEND"] == "onnxruntime"
    assert (ROOT / "model" / env["FOOTFALL_FACE_MODEL"].removeprefix("/app/model/")).is_file()


def test_aggregator_balances_over_every_inference_replica(compose):
    env = compose_environment(compose["services"]["aggregator"])
    assert env["FOOTFALL_INFERENCE_TARGETS"] == "dns:///inference:50051"
    assert env["FOOTFALL_CONSUMER_NAME"], "a fixed consumer name: a restart re-reads its own pending entries"


def test_redis_requires_a_password_the_services_connect_with(compose):
    from .deploy_tools import redis_options

    redis = compose["services"]["redis"]
    password = redis_options(redis["command"])["requirepass"]
    assert password and compose_environment(redis)["REDISCLI_AUTH"] == password
    for name in FOOTFALL_SERVICES:
        url = compose_environment(compose["services"][name])["FOOTFALL_REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0", name


def test_redis_password_comes_from_the_environment():
    result = compose_config(COMPOSE_FILE, {"REDIS_PASSWORD": "s3cret-from-env"})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert "s3cret-from-env" in services["redis"]["command"]
    assert services["ingest"]["environment"]["FOOTFALL_REDIS_URL"] == "redis://:s3cret-from-env@redis:6379/0"


def test_grpc_runs_over_mutual_tls_with_certificates_from_the_certs_job(compose):
    certs = compose["services"]["certs"]
    assert certs["command"][0] == "footfall-certs" and certs["restart"] == "no"
    folder = certs["command"][1]
    assert f"grpc-tls:{folder}" in certs["volumes"]
    for name, role in (("inference", "server"), ("aggregator", "client")):
        service = compose["services"][name]
        env = compose_environment(service)
        assert {env[f"FOOTFALL_GRPC_TLS_{k}"] for k in ("CERT", "KEY", "CA")} == {
            f"{folder}/{role}.crt", f"{folder}/{role}.key", f"{folder}/ca.crt"}
        assert f"grpc-tls:{folder}:ro" in service["volumes"]
    assert "grpc-tls" in compose["volumes"]


def test_networks_allow_only_the_architectures_flows(compose):
    """Services reach each other only through a shared network: the dashboard never reaches Redis
    (face crops) or inference, ingest never the database or inference, inference nothing but the
    aggregator; the certificate job has no network at all."""
    services = compose["services"]
    assert services["certs"]["network_mode"] == "none"
    networks = {name: set(s.get("networks") or []) for name, s in services.items() if name != "certs"}
    assert all(networks.values()), "every service names its networks (none left on the shared default)"
    assert set().union(*networks.values()) == set(compose["networks"])
    reach = {frozenset((a, b)) for a in networks for b in networks if a < b and networks[a] & networks[b]}
    needed = {("ingest", "redis"), ("aggregator", "redis"), ("aggregator", "inference"), ("aggregator", "postgres"),
              ("dashboard", "postgres")}
    assert {frozenset(pair) for pair in needed} <= reach
    forbidden = {("dashboard", "redis"), ("dashboard", "inference"), ("ingest", "postgres"), ("ingest", "inference"),
                 ("inference", "redis"), ("inference", "postgres"), ("postgres", "redis")}
    assert not {frozenset(pair) for pair in forbidden} & reach
