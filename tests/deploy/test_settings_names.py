"""Every FOOTFALL_* variable that docker-compose.yml, the Dockerfile and the rendered k8s
objects set must be a field of footfall.config (pydantic-settings ignores unknown variables,
so a typo would silently fall back to the default), and every service's environment must load
into its settings class (a wrong type fails as it would at the service's start)."""

from __future__ import annotations

import pytest
from .deploy_tools import (
    DOCKERFILE,
    OVERLAYS,
    compose_environment,
    compose_model,
    container_environment,
    data_of,
    footfall_service,
    load_settings,
    parse_dockerfile,
    pod_spec,
    settings_variables,
    unknown_settings,
    workloads,
)


def dockerfile_env_names() -> set[str]:
    names = set()
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        if instruction.instruction == "ENV":
            names |= {pair.split("=", 1)[0] for pair in instruction.args.split()}
    return names


def test_the_name_check_catches_a_typo():
    assert unknown_settings(["FOOTFALL_CAMERA", "FOOTFALL_CAMERAS", "PATH"]) == ["FOOTFALL_CAMERA"]
    assert "FOOTFALL_NPU_CORES" in settings_variables()


def test_compose_sets_only_known_settings():
    names = {name for service in compose_model()["services"].values() for name in compose_environment(service)}
    assert {"FOOTFALL_CAMERAS", "FOOTFALL_INFERENCE_TARGETS", "FOOTFALL_DATABASE_URL"} <= names
    assert unknown_settings(names) == []


def test_dockerfile_sets_only_known_settings():
    names = dockerfile_env_names()
    assert {"FOOTFALL_FACE_MODEL", "FOOTFALL_MODELS_DIR", "FOOTFALL_DASHBOARD_APP"} <= names
    assert unknown_settings(names) == []


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_kubernetes_sets_only_known_settings(overlay, rendered):
    objects = rendered[overlay]
    names = set()
    for obj in objects:
        if obj["kind"] in ("ConfigMap", "Secret"):
            names |= set(data_of(obj))
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            names |= {item["name"] for item in container.get("env") or []}
    assert "FOOTFALL_REDIS_URL" in names
    assert unknown_settings(names) == []


@pytest.mark.parametrize("name", ["inference", "ingest", "aggregator", "dashboard"])
def test_compose_environment_loads_into_the_settings(name, monkeypatch):
    env = compose_environment(compose_model()["services"][name])
    settings = load_settings(f"footfall-{name}", env, monkeypatch)
    assert settings.redis_url == "redis://:CHANGE-ME-redis-password@redis:6379/0"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_kubernetes_environment_loads_into_the_settings(overlay, rendered, monkeypatch):
    objects = rendered[overlay]
    seen = set()
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            service = footfall_service(container)
            if service is None or service == "footfall-migrate":
                continue
            settings = load_settings(service, container_environment(objects, container), monkeypatch)
            if service in ("footfall-ingest", "footfall-aggregator"):  # the others never touch Redis
                assert settings.redis_url.endswith("@footfall-redis:6379/0")
            seen.add(service)
    assert seen == {"footfall-ingest", "footfall-inference", "footfall-aggregator", "footfall-dashboard"}


def test_a_wrong_type_fails_to_load(monkeypatch):
    """The load above can fail: pydantic rejects what the service would reject."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        load_settings("footfall-inference", {"FOOTFALL_THREADS": "two"}, monkeypatch)
