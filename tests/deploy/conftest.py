"""Fixtures of the deployment tests: kustomize renders of every overlay, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..support import missing_requirement
from .deploy_tools import K8S, MIN_KUSTOMIZE, OVERLAYS, documents, kustomize_command, render, version_tuple


@pytest.fixture(scope="session")
def kustomize() -> list[str]:
    """The command that renders a kustomization (standalone kustomize, or kubectl's built-in one)."""
    found = kustomize_command()
    if found is None:
        missing_requirement("neither `kustomize` nor `kubectl` (which embeds kustomize) is installed")
    command, version = found
    assert version_tuple(version) >= MIN_KUSTOMIZE, (
        f"kustomize {version} is too old: the kustomizations use `labels` with includeTemplates (>= 5.0)")
    return command


def _component_kustomization(tmp: Path) -> Path:
    """A kustomization = orangepi overlay + its rknpu-misc-device component (paths relative:
    kustomize refuses absolute ones)."""
    overlay = K8S / "overlays" / "orangepi"
    rel = os.path.relpath(overlay, tmp)
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}\ncomponents:\n  - {rel}/components/rknpu-misc-device\n")
    return tmp


@pytest.fixture(scope="session")
def renders(kustomize, tmp_path_factory) -> dict[str, str]:
    """Rendered YAML of every overlay, by name."""
    out = {}
    for name, path in OVERLAYS.items():
        if path is None:
            path = _component_kustomization(tmp_path_factory.mktemp("component"))
        out[name] = render(kustomize, path)
    return out


@pytest.fixture(scope="session")
def rendered(renders) -> dict[str, list[dict]]:
    """Rendered objects of every overlay, by name."""
    return {name: documents(text) for name, text in renders.items()}
