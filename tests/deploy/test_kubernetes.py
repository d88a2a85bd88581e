"""The kustomize overlays: they render, every object validates against the Kubernetes 1.30 API
schemas (strict: unknown fields fail), and they say what the deployment needs (probes, limits,
non-root, the NPU DaemonSet, the headless Service the aggregator balances over ...)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from .deploy_tools import (
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    container_environment,
    data_of,
    documents,
    find,
    footfall_service,
    pod_spec,
    redis_persistence_problems,
    workloads,
)

ALL = list(OVERLAYS)
METRICS_PORTS = {"footfall-ingest": 9101, "footfall-inference": 9102, "footfall-aggregator": 9103}
NAMESPACE = "footfall"
GiB = 1024 ** 3


def quantity(value) -> float:
    """Kubernetes quantity -> number (CPU in cores, memory in bytes).

    >>> quantity("1500m"), quantity("1Gi"), quantity(2)
    (1.5, 1073741824.0, 2.0)
    """
    units = {"m": 1e-3, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value))
    assert match, f"bad quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def containers(workload: dict) -> list[dict]:
    return pod_spec(workload)["containers"]


def is_privileged(container: dict) -> bool:
    return bool((container.get("securityContext") or {}).get("privileged"))


# ---- schema validation ---------------------------------------------------------------------------

# KEDA's kinds (keda.sh ScaledObject) are custom resources: kubernetes-validate carries only the
# core API's schemas, and no package on PyPI ships KEDA's CRD schema, so they are left out of the
# schema validation here and checked field by field in test_keda_scales_on_every_shards_lag.
NOT_IN_THE_CORE_SCHEMAS = ("keda.sh/",)


def core_objects(text: str) -> str:
    """The rendered YAML without the custom resources kubernetes-validate has no schema for."""
    kept = [d for d in documents(text) if not d["apiVersion"].startswith(NOT_IN_THE_CORE_SCHEMAS)]
    return yaml.safe_dump_all(kept, sort_keys=False)


@pytest.mark.parametrize("overlay", ALL)
def test_render_validates_against_the_kubernetes_schemas(overlay, renders, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(core_objects(renders[overlay]))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
                             "--quiet", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"kubernetes-validate:\n{result.stdout}\n{result.stderr}"


def test_the_schema_validation_can_fail(renders, tmp_path):
    """A field the API does not know (a typo) must fail the validation above."""
    broken = renders["cpu"].replace("minAvailable: 1", "minAvailable: 1\n  minAvailble: 1", 1)
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
                             "--quiet", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "minAvailble" in result.stdout + result.stderr


# ---- every workload ------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", ALL)
def test_every_workload_has_probes_resources_and_runs_as_non_root(overlay, rendered):
    objects = rendered[overlay]
    assert workloads(objects)
    for workload in workloads(objects):
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod_security = spec.get("securityContext") or {}
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API token needed"
        assert "terminationGracePeriodSeconds" in spec, f"{where}: terminationGracePeriodSeconds"
        for container in containers(workload):
            where_c = f"{where}/{container['name']}"
            assert container.get("readinessProbe"), f"{where_c}: readinessProbe"
            assert container.get("livenessProbe"), f"{where_c}: livenessProbe"
            for bound in ("requests", "limits"):
                got = (container.get("resources") or {}).get(bound) or {}
                assert {"cpu", "memory"} <= set(got), f"{where_c}: resources.{bound} cpu and memory"
                assert quantity(got["cpu"]) > 0 and quantity(got["memory"]) > 0
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            for key in ("cpu", "memory"):
                assert quantity(requests[key]) <= quantity(limits[key]), f"{where_c}: {key} request > limit"
            security = {**pod_security, **(container.get("securityContext") or {})}
            assert security.get("runAsNonRoot") is True, f"{where_c}: runAsNonRoot"
            assert int(security.get("runAsUser", 0)) > 0, f"{where_c}: a numeric non-root runAsUser"
            assert security.get("readOnlyRootFilesystem") is True, f"{where_c}: readOnlyRootFilesystem"
            if is_privileged(container):
                # The API server rejects privileged together with allowPrivilegeEscalation: false.
                assert "allowPrivilegeEscalation" not in container["securityContext"], where_c
            else:
                assert security.get("allowPrivilegeEscalation") is False, f"{where_c}: allowPrivilegeEscalation"
                assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where_c}: drop ALL capabilities"


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_npu_inference_worker_is_privileged(overlay, rendered):
    privileged = [(w["kind"], w["metadata"]["name"]) for w in workloads(rendered[overlay])
                  if any(is_privileged(c) for c in containers(w))]
    expected = [("DaemonSet", "footfall-inference")] if overlay.startswith("orangepi") else []
    assert privileged == expected


@pytest.mark.parametrize("overlay", ALL)
def test_footfall_probes_use_the_service_conventions(overlay, rendered):
    for workload in workloads(rendered[overlay]):
        for container in containers(workload):
            service = footfall_service(container)
            if service is None:
                continue
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}
            if service == "footfall-inference":
                # 50051 serves mutual TLS, which kubelet's gRPC probe cannot speak: it probes the
                # plain-text health-only port.
                health = int(container_environment(rendered[overlay], container)["FOOTFALL_GRPC_HEALTH_PORT"])
                for kind, probe in probes.items():
                    assert probe.get("grpc", {}).get("port") == health, f"{kind}: native gRPC probe on {health}"
                assert ports.get("grpc") == 50051 and ports.get("grpc-health") == health
            elif service == "footfall-dashboard":
                for probe in probes.values():
                    assert probe["httpGet"]["path"] == "/_stcore/health"
                    assert ports[probe["httpGet"]["port"]] == 8501
            else:
                assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
                for probe in probes.values():
                    assert ports[probe["httpGet"]["port"]] == METRICS_PORTS[service]
            if service in METRICS_PORTS:
                env = container_environment(rendered[overlay], container)
                assert int(env.get("FOOTFALL_METRICS_PORT", METRICS_PORTS[service])) == METRICS_PORTS[service]
                assert ports["metrics"] == METRICS_PORTS[service]


@pytest.mark.parametrize("overlay", ALL)
def test_metrics_pods_carry_prometheus_scrape_annotations(overlay, rendered):
    for workload in workloads(rendered[overlay]):
        for container in containers(workload):
            service = footfall_service(container)
            if service not in METRICS_PORTS:
                continue
            annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
            assert annotations.get("prometheus.io/scrape") == "true", workload["metadata"]["name"]
            assert annotations.get("prometheus.io/port") == str(METRICS_PORTS[service])
            assert annotations.get("prometheus.io/path") == "/metrics"


@pytest.mark.parametrize("overlay", ALL)
def test_every_reference_resolves(overlay, rendered):
    """ConfigMap/Secret references (hash-suffixed by the generators), Service selectors and
    target ports, PDB selectors, probe port names: all point at something rendered."""
    objects = rendered[overlay]
    pods = [w["spec"]["template"] for w in workloads(objects)]
    for workload in workloads(objects):
        for container in containers(workload):
            container_environment(objects, container)  # asserts every referenced name and key exists
            names = {p["name"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = (container.get(kind) or {}).get("httpGet", {}).get("port")
                assert port is None or isinstance(port, int) or port in names
    for obj in objects:
        if obj["kind"] == "Service":
            selected = [p for p in pods if obj["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
            assert selected, f"Service {obj['metadata']['name']} selects no pod"
            for port in obj["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for pod in selected:
                    pod_ports = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
                    assert any(target in (p["name"], p["containerPort"]) for p in pod_ports), (
                        f"Service {obj['metadata']['name']}: targetPort {target}")
        if obj["kind"] == "PodDisruptionBudget":
            match = obj["spec"]["selector"]["matchLabels"]
            assert any(match.items() <= p["metadata"]["labels"].items() for p in pods)


@pytest.mark.parametrize("overlay", ALL)
def test_everything_lives_in_the_footfall_namespace(overlay, rendered):
    for obj in rendered[overlay]:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


# ---- the components ------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", ALL)
def test_aggregator_targets_the_headless_inference_service(overlay, rendered):
    objects = rendered[overlay]
    aggregator = find(objects, "Deployment", "footfall-aggregator")
    env = container_environment(objects, containers(aggregator)[0])
    match = re.fullmatch(r"dns:///([\w-]+)\.([\w-]+)\.svc\.cluster\.local:(\d+)", env["FOOTFALL_INFERENCE_TARGETS"])
    assert match, env["FOOTFALL_INFERENCE_TARGETS"]
    service = find(objects, "Service", match.group(1))
    assert service is not None and service["metadata"]["namespace"] == match.group(2)
    assert service["spec"]["clusterIP"] == "None", "headless: DNS must return every pod for round robin"
    assert int(match.group(3)) in [p["port"] for p in service["spec"]["ports"]]
    inference = [w for w in workloads(objects) if footfall_service(containers(w)[0]) == "footfall-inference"]
    assert len(inference) == 1
    labels = inference[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("overlay", ALL)
def test_inference_has_a_disruption_budget_and_drains_on_rollout(overlay, rendered):
    objects = rendered[overlay]
    inference = next(w for w in workloads(objects) if footfall_service(containers(w)[0]) == "footfall-inference")
    labels = inference["spec"]["template"]["metadata"]["labels"]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"
               and o["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(budgets) == 1
    # minAvailable works for a DaemonSet too; maxUnavailable needs a scalable controller.
    assert "minAvailable" in budgets[0]["spec"]
    container = containers(inference)[0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) > 0
    assert pod_spec(inference)["terminationGracePeriodSeconds"] > float(pre_stop[1])
    if inference["kind"] == "Deployment":
        assert inference["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", ALL)
def test_aggregator_and_ingest_never_run_twice(overlay, rendered):
    """One pod per camera list; one aggregator per stream shard at a time: a single aggregator
    (Recreate, a stable consumer name), or several on several shards, each its own consumer."""
    objects = rendered[overlay]
    for workload in workloads(objects):
        container = containers(workload)[0]
        service = footfall_service(container)
        if service not in ("footfall-aggregator", "footfall-ingest"):
            continue
        assert workload["kind"] == "Deployment"
        shards = int(container_environment(objects, container).get("FOOTFALL_STREAM_SHARDS", 1))
        if service == "footfall-ingest" or shards == 1:
            assert workload["spec"]["replicas"] == 1
            assert workload["spec"]["strategy"]["type"] == "Recreate"
        else:
            assert 1 < workload["spec"]["replicas"] <= shards
            name = next(e for e in container["env"] if e["name"] == "FOOTFALL_CONSUMER_NAME")
            assert name == {"name": "FOOTFALL_CONSUMER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def test_keda_scales_on_every_shards_lag(rendered):
    """The scale overlay: KEDA's Redis Streams triggers name every shard stream and the consumer
    group the aggregators use, target rendered Deployments, and never run more aggregators than
    shards; the aggregators have a PodDisruptionBudget."""
    from footfall.config import AggregatorSettings
    from footfall.schema import StreamKeys

    objects = rendered["scale"]
    aggregator = find(objects, "Deployment", "footfall-aggregator")
    env = container_environment(objects, containers(aggregator)[0])
    keys = StreamKeys(env.get("FOOTFALL_STREAM_PREFIX", "footfall"), int(env["FOOTFALL_STREAM_SHARDS"]))
    assert keys.shards > 1
    redis_service = find(objects, "Service", "footfall-redis")
    scaled = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ScaledObject"}
    assert set(scaled) == {"footfall-aggregator", "footfall-inference"}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["metadata"]["namespace"] == NAMESPACE
        target = find(objects, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
        assert target is not None and target["metadata"]["name"] == name
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis-streams"}
        assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(
            keys.shard_stream(s) for s in range(keys.shards))
        for t in triggers:
            meta = t["metadata"]
            assert meta["consumerGroup"] == env.get("FOOTFALL_CONSUMER_GROUP", AggregatorSettings().consumer_group)
            host, port = meta["address"].split(":")
            assert host == f"footfall-redis.{NAMESPACE}.svc.cluster.local"
            assert int(port) in {p["port"] for p in redis_service["spec"]["ports"]}
            assert int(meta["lagCount"]) > 0
    assert scaled["footfall-aggregator"]["spec"]["maxReplicaCount"] <= keys.shards, "more would stand by"
    pdb = find(objects, "PodDisruptionBudget", "footfall-aggregator")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", ALL)
def test_stateful_parts(overlay, rendered):
    objects = rendered[overlay]
    postgres = find(objects, "StatefulSet", "footfall-postgres")
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert containers(postgres)[0]["image"].startswith("postgres:16")
    assert containers(find(objects, "Deployment", "footfall-redis"))[0]["image"].startswith("redis:7")
    env = container_environment(objects, containers(postgres)[0])
    aggregator_env = container_environment(objects, containers(find(objects, "Deployment", "footfall-aggregator"))[0])
    assert f":{env['POSTGRES_PASSWORD']}@footfall-postgres:5432/" in aggregator_env["FOOTFALL_DATABASE_URL"], (
        "the services' database URL must carry PostgreSQL's password and Service name")


@pytest.mark.parametrize("overlay", ALL)
def test_redis_keeps_the_crops_in_memory_only(overlay, rendered):
    """Privacy: the stream holds face crops, which must never reach disk (no RDB, no AOF, no volume claim)."""
    objects = rendered[overlay]
    redis_pods = [w for w in workloads(objects) if any(c["image"].startswith("redis:") for c in containers(w))]
    assert redis_pods, "no Redis workload rendered"
    for workload in redis_pods:
        for container in containers(workload):
            argv = (container.get("command") or []) + (container.get("args") or [])
            assert redis_persistence_problems(argv) == [], f"{workload['metadata']['name']}/{container['name']}"
        assert not workload["spec"].get("volumeClaimTemplates")
        assert not any("persistentVolumeClaim" in v for v in pod_spec(workload).get("volumes") or [])


def test_committed_secrets_are_placeholders(rendered):
    """No real password in the repository: every non-empty secret value is marked CHANGE-ME."""
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj["kind"] != "Secret":
                continue
            for key, value in data_of(obj).items():
                secretish = "PASSWORD" in key or "DATABASE_URL" in key or "@" in value
                if secretish and value:
                    assert "CHANGE-ME" in value, f"{overlay}: {obj['metadata']['name']}/{key}"


def test_cpu_overlay_runs_onnxruntime_inference_as_a_deployment(rendered):
    objects = rendered["cpu"]
    inference = find(objects, "Deployment", "footfall-inference")
    assert inference is not None and inference["spec"]["replicas"] >= 2
    env = container_environment(objects, containers(inference)[0])
    assert env["FOOTFALL_BACKEND"] == "onnxruntime"
    assert env["FOOTFALL_FACE_MODEL"].endswith(".onnx")
    assert int(env["FOOTFALL_THREADS"]) <= quantity(containers(inference)[0]["resources"]["limits"]["cpu"])
    assert all(c["image"] != "footfall" for w in workloads(objects) for c in containers(w)), "images set"


def test_orangepi_inference_is_an_npu_daemonset(rendered):
    objects = rendered["orangepi"]
    assert find(objects, "Deployment", "footfall-inference") is None
    daemonset = find(objects, "DaemonSet", "footfall-inference")
    assert daemonset is not None
    spec = pod_spec(daemonset)
    assert spec["nodeSelector"]["footfall.io/npu"] == "rk3588"
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    container = containers(daemonset)[0]
    assert "footfall-rknn" in container["image"]
    env = container_environment(objects, container)
    assert env["FOOTFALL_BACKEND"] == "rknn"
    assert env["FOOTFALL_FACE_MODEL"] == "/app/model/footfall_w050.rknn"
    assert env["FOOTFALL_NPU_CORES"] == "0,1,2"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/dri"]]["hostPath"] == {"path": "/dev/dri", "type": "Directory"}
    runtime = volumes[mounts["/usr/lib/librknnrt.so"]]["hostPath"]
    assert runtime == {"path": "/usr/lib/librknnrt.so", "type": "File"}
    assert is_privileged(container), "a hostPath device node needs the device cgroup opened"
    assert 44 in spec["securityContext"]["supplementalGroups"], "video group for the NPU node"


def test_orangepi_component_mounts_the_legacy_rknpu_device(rendered):
    daemonset = find(rendered["orangepi+rknpu-misc-device"], "DaemonSet", "footfall-inference")
    spec = pod_spec(daemonset)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in containers(daemonset)[0]["volumeMounts"]}
    assert volumes[mounts["/dev/rknpu"]]["hostPath"] == {"path": "/dev/rknpu", "type": "CharDevice"}
    assert "/dev/dri" in mounts


def test_orangepi_has_one_ingest_deployment_per_camera_group(rendered):
    objects = rendered["orangepi"]
    groups = sorted(p.name for p in (ROOT / "k8s/overlays/orangepi/camera-groups").iterdir() if p.is_dir())
    ingest = [w for w in workloads(objects) if footfall_service(containers(w)[0]) == "footfall-ingest"]
    assert sorted(w["metadata"]["name"] for w in ingest) == [f"footfall-ingest-{g}" for g in groups]
    assert len(groups) >= 2
    selectors = [tuple(sorted(w["spec"]["selector"]["matchLabels"].items())) for w in ingest]
    assert len(set(selectors)) == len(selectors), "each group's Deployment needs its own selector"
    cameras = []
    for workload in ingest:
        env = container_environment(objects, containers(workload)[0])
        ids = [entry.split("=", 1)[0] for entry in env["FOOTFALL_CAMERAS"].split(",")]
        cameras += ids
        # Spread over boards: anti-affinity against every ingest pod, not only the own group's.
        term = pod_spec(workload)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert "matchLabels" not in term["podAffinityTerm"]["labelSelector"]
    assert len(cameras) == len(set(cameras)), "a camera in two groups would be counted twice"
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("footfall-cameras-")
                and not any(o["metadata"]["name"].startswith(f"footfall-cameras-{g}-") for g in groups)]


def test_orangepi_fits_an_8gb_board(rendered):
    """Every workload on one board (the single-board install): requests fit 8 cores and
    8 GiB with room for the OS and k3s; limits stay under the board's memory."""
    objects = rendered["orangepi"]
    cpu = memory_requests = memory_limits = 0.0
    for workload in workloads(objects):
        for container in containers(workload):
            cpu += quantity(container["resources"]["requests"]["cpu"])
            memory_requests += quantity(container["resources"]["requests"]["memory"])
            memory_limits += quantity(container["resources"]["limits"]["memory"])
    assert cpu <= 6.0, f"CPU requests {cpu} of the board's 8 cores (leave 2 for OS and k3s)"
    assert memory_requests <= 4 * GiB, f"memory requests {memory_requests / GiB:.1f} GiB"
    assert memory_limits <= 7 * GiB, f"memory limits {memory_limits / GiB:.1f} GiB on an 8 GB board"


@pytest.mark.parametrize("overlay", ALL)
def test_model_files_named_by_the_manifests_are_committed(overlay, rendered):
    objects = rendered[overlay]
    for workload in workloads(objects):
        for container in containers(workload):
            model = container_environment(objects, container).get("FOOTFALL_FACE_MODEL")
            if model:
                assert model.startswith("/app/model/")
                committed = ROOT / "model" / model.removeprefix("/app/model/")
                assert committed.is_file(), (
                    f"{model}: not in the repository's model/ folder, which the image copies to /app/model")
                if committed.suffix == ".rknn":  # RKNN files carry their metadata in a sidecar
                    assert committed.with_name(committed.name + ".json").is_file()


def _mounted_files(workload: dict, container: dict, secret: str) -> set[str]:
    """Paths of the files a container sees from a Secret volume."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes") or []}
    files = set()
    for mount in container.get("volumeMounts") or []:
        source = volumes[mount["name"]].get("secret") or {}
        if source.get("secretName") == secret:
            assert mount.get("readOnly") is True
            files |= {f"{mount['mountPath']}/{item['path']}" for item in source["items"]}
    return files


@pytest.mark.parametrize("overlay", ALL)
def test_grpc_runs_over_mutual_tls_from_the_certificate_secret(overlay, rendered):
    """Every inference worker serves mutual TLS and the aggregator presents its client
    certificate, both from the footfall-grpc-tls Secret (made by footfall-certs)."""
    objects = rendered[overlay]
    seen = set()
    for workload in workloads(objects):
        container = containers(workload)[0]
        service = footfall_service(container)
        if service not in ("footfall-inference", "footfall-aggregator"):
            continue
        env = container_environment(objects, container)
        files = _mounted_files(workload, container, "footfall-grpc-tls")
        role = "server" if service == "footfall-inference" else "client"
        tls = {env.get(f"FOOTFALL_GRPC_TLS_{k}") for k in ("CERT", "KEY", "CA")}
        assert tls == {f"/etc/footfall/tls/{role}.crt", f"/etc/footfall/tls/{role}.key", "/etc/footfall/tls/ca.crt"}
        assert tls <= files, f"{service}: every TLS file comes from the mounted Secret"
        # The files are readable by the non-root process: group-owned by fsGroup, mode g+r.
        volume = next(v for v in pod_spec(workload)["volumes"] if v.get("secret", {}).get("secretName") ==
                      "footfall-grpc-tls")
        assert volume["secret"]["defaultMode"] & 0o040 and pod_spec(workload)["securityContext"]["fsGroup"] == \
            pod_spec(workload)["securityContext"]["runAsGroup"], service
        seen.add(service)
    assert seen == {"footfall-inference", "footfall-aggregator"}


@pytest.mark.parametrize("overlay", ALL)
def test_redis_requires_the_password_the_services_connect_with(overlay, rendered):
    from .deploy_tools import redis_options

    objects = rendered[overlay]
    redis_deployment = find(objects, "Deployment", "footfall-redis")
    container = containers(redis_deployment)[0]
    env = container_environment(objects, container)
    password = env["REDIS_PASSWORD"]
    assert password and redis_options(container["args"])["requirepass"] == "$(REDIS_PASSWORD)"
    assert env["REDISCLI_AUTH"] == password, "the probes' redis-cli authenticates"
    users = set()
    for workload in workloads(objects):
        service = footfall_service(containers(workload)[0])
        url = container_environment(objects, containers(workload)[0]).get("FOOTFALL_REDIS_URL")
        if url:
            assert url.startswith(f"redis://:{password}@footfall-redis:6379/"), service
            users.add(service)
    assert users == {"footfall-ingest", "footfall-aggregator"}, "only the stream's users get its password"
