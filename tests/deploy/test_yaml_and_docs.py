"""yamllint over every YAML file of the deployment, and docs/deploy.md kept in step with the
code (the metric names the services define, the paths and commands it tells people to use)."""

from __future__ import annotations

import re
import subprocess
import sys

from .deploy_tools import COMPOSE_FILE, K8S, ROOT

YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}"
DOC = ROOT / "docs" / "deploy.md"


def deployment_yaml() -> list[str]:
    return [str(COMPOSE_FILE), *sorted(str(p) for p in K8S.rglob("*.yaml"))]


def test_yamllint():
    files = deployment_yaml()
    assert len(files) > 10
    result = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-d", YAMLLINT_CONFIG,
                             *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def defined_metrics() -> set[str]:
    """Metric names in footfall.observability as Prometheus exposes them (counters get _total)."""
    source = (ROOT / "services" / "footfall" / "observability.py").read_text()
    names = set()
    for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(footfall_\w+)"', source):
        names.add(f"{name}_total" if kind == "Counter" and not name.endswith("_total") else name)
    return names


def test_docs_list_every_metric():
    metrics = defined_metrics()
    assert len(metrics) >= 10
    text = DOC.read_text()
    missing = sorted(m for m in metrics if m not in text)
    assert not missing, f"docs/deploy.md does not mention {missing}"


def test_docs_paths_exist():
    text = DOC.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks may create new paths
    for path in sorted(set(re.findall(r"\b((?:k8s|docker|docs)/[\w./-]*[\w])", prose))):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
