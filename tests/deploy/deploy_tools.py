"""Helpers of the deployment tests: find the tools, render kustomize, read the Dockerfile and
the compose file the way their tools do, and map environment variables onto footfall.config.

Example:
    >>> expand_compose_vars("${FOOTFALL_CAMERAS:-demo=/media/demo.mp4}", {})
    'demo=/media/demo.mp4'
    >>> [i.instruction for i in parse_dockerfile("FROM a AS b\\nRUN x \\\\\\n  y\\n")]
    ['FROM', 'RUN']
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KUBERNETES_VERSION = "1.30.0"
# name -> kustomization folder; "orangepi+rknpu-misc-device" is the orangepi overlay with its
# optional component enabled (rendered from a temporary kustomization: conftest.renders).
OVERLAYS = {
    "base": K8S / "base",
    "cpu": K8S / "overlays" / "cpu",
    "orangepi": K8S / "overlays" / "orangepi",
    "scale": K8S / "overlays" / "scale",
    "orangepi+rknpu-misc-device": None,
}
MIN_KUSTOMIZE = (5, 0)


def tool(name: str) -> str | None:
    """A command on PATH or next to this Python (a venv's bin/ need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# ---- kustomize -----------------------------------------------------------------------------------

def kustomize_command() -> tuple[list[str], str] | None:
    """(argv prefix that renders a kustomization, kustomize version), or None when neither the
    standalone ``kustomize`` nor ``kubectl`` (which embeds kustomize) is installed."""
    if standalone := tool("kustomize"):
        out = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=30).stdout
        return [standalone, "build"], _version_in(out)
    if kubectl := tool("kubectl"):
        out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"Kustomize Version:\s*(v?[\d.]+)", out)
        return [kubectl, "kustomize"], match.group(1) if match else ""
    return None


def _version_in(text: str) -> str:
    match = re.search(r"v?\d+\.\d+(\.\d+)?", text)
    return match.group(0) if match else ""


def version_tuple(version: str) -> tuple[int, ...]:
    """Numeric parts of a version string.

    >>> version_tuple("v5.5.0")
    (5, 5, 0)
    """
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def render(command: list[str], path: Path) -> str:
    """The YAML ``kustomize build path`` prints (fails the test with kustomize's message)."""
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KUBECONFIG": os.devnull})
    if result.returncode != 0:
        pytest.fail(f"kustomize build {path} failed:\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# ---- reading rendered objects --------------------------------------------------------------------

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def footfall_service(container: dict) -> str | None:
    """``footfall-ingest`` etc. from the container's command, or None (Redis, PostgreSQL)."""
    command = container.get("command") or []
    return command[0] if command and command[0].startswith("footfall-") else None


def generated(objects: list[dict], kind: str, name: str) -> dict:
    """A ConfigMap/Secret by its name in the rendered output (generators add a hash suffix)."""
    obj = find(objects, kind, name)
    assert obj is not None, f"{kind} {name} referenced but not rendered"
    return obj


def data_of(obj: dict) -> dict[str, str]:
    """A ConfigMap's or Secret's data as text."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()} | dict(
            obj.get("stringData") or {})
    return dict(obj.get("data") or {})


def container_environment(objects: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets: envFrom sources in order, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(data_of(generated(objects, "ConfigMap", source["configMapRef"]["name"])))
        if "secretRef" in source:
            env.update(data_of(generated(objects, "Secret", source["secretRef"]["name"])))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item.get("valueFrom", {})
        for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if key in ref:
                data = data_of(generated(objects, kind, ref[key]["name"]))
                assert ref[key]["key"] in data, f"{item['name']}: key {ref[key]['key']} not in {ref[key]['name']}"
                env[item["name"]] = data[ref[key]["key"]]
    return env


# ---- Redis ---------------------------------------------------------------------------------------

def redis_options(argv: list[str] | str) -> dict[str, str]:
    """``redis-server`` command-line options as {name: value}; a later option wins, as in Redis.

    >>> redis_options(["redis-server", "--save", "", "--appendonly", "no", "--save", "60", "1"])
    {'save': '60 1', 'appendonly': 'no'}
    """
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    options: dict[str, list[str]] = {}
    values: list[str] = []  # words before the first option (the program name) go nowhere
    for word in words:
        if word.startswith("--"):
            values = options[word[2:]] = []
        else:
            values.append(word)
    return {name: " ".join(parts) for name, parts in options.items()}


def redis_persistence_problems(argv: list[str] | str) -> list[str]:
    """Why a ``redis-server`` command line would write the stream (face crops) to disk, if it would:
    RDB snapshots are on unless ``--save ""``, and the AOF must be off (``--appendonly no``).

    >>> redis_persistence_problems(["redis-server", "--appendonly", "no", "--save", ""])
    []
    >>> redis_persistence_problems(["redis-server", "--appendonly", "no"])
    ['RDB snapshots not disabled (--save "" missing or overridden: save=None)']
    """
    options = redis_options(argv)
    problems = []
    if options.get("save") != "":
        problems.append(f'RDB snapshots not disabled (--save "" missing or overridden: save={options.get("save")!r})')
    if options.get("appendonly") != "no":
        problems.append(f"AOF not disabled (--appendonly no missing: appendonly={options.get('appendonly')!r})")
    return problems


# ---- footfall.config -----------------------------------------------------------------------------

def settings_variables() -> set[str]:
    """Every FOOTFALL_* variable that footfall.config reads."""
    from footfall.config import ALL_SETTINGS

    return {f"FOOTFALL_{name.upper()}" for cls in ALL_SETTINGS for name in cls.model_fields}


def unknown_settings(names) -> list[str]:
    """The FOOTFALL_* names among ``names`` that no settings class reads (typos)."""
    known = settings_variables()
    return sorted(n for n in names if n.startswith("FOOTFALL_") and n not in known)


def settings_class(service: str):
    from footfall import config

    return {"footfall-ingest": config.IngestSettings, "footfall-inference": config.InferenceSettings,
            "footfall-aggregator": config.AggregatorSettings,
            "footfall-dashboard": config.DashboardSettings}[service]


def load_settings(service: str, env: dict[str, str], monkeypatch):
    """Instantiate the service's settings class from exactly ``env`` (its FOOTFALL_* part):
    pydantic rejects a value of the wrong type, as the service would at start."""
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("FOOTFALL_")]:
            m.delenv(name)
        for name, value in env.items():
            if name.startswith("FOOTFALL_"):
                m.setenv(name, value)
        return settings_class(service)()


# ---- docker-compose ------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def expand_compose_vars(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and $VAR substitution (enough for our file)."""
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2) or ""
        return env.get(name) or default
    return _VAR.sub(sub, text)


def compose_model(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as compose reads it: YAML merge keys resolved, variables substituted."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    env = env or {}

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return expand_compose_vars(node, env) if isinstance(node, str) else node
    return walk(raw)


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# ---- Dockerfile ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    instruction: str  # upper case: FROM, RUN, COPY ...
    args: str  # continuation lines joined
    stage: str  # name (or index) of the stage it belongs to
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their stage; comments dropped, line continuations joined."""
    out: list[Instruction] = []
    stage, pending, start = "", "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        word, _, args = full.partition(" ")
        word = word.upper()
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = match.group(1) if match else str(sum(1 for i in out if i.instruction == "FROM"))
        out.append(Instruction(word, args.strip(), stage, start))
    return out


def dockerfile_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.strip().startswith("#"))


def _glob_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: ``**`` any number of folders, ``*``/``?`` within one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` exclude ``path`` (relative, '/'-separated): the last
    matching pattern decides, and a pattern matching a parent folder matches what is inside.

    >>> dockerignore_excludes("services/a/b_pb2.py", ["**", "!services/", "services/a/*_pb2*.py"])
    True
    >>> dockerignore_excludes("services/a/c.py", ["**", "!services/", "services/a/*_pb2*.py"])
    False
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines() if DOCKERIGNORE.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
