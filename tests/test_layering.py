"""The import graph is layered: a module imports only its own group or groups below it.

From the bottom: the shared base (settings, schema, labels, predictions, model-file contract,
vision, observability, generated protos), the database layer, the services (inference and
ingest side by side, the aggregator above inference, whose client it uses), the local run's
orchestration, and on top the dashboard app and the training package, which use the runtime and
are never used by it. The RKNN worker runs in the toolkit's own venv and imports neither package.
Checked on the source with ``ast`` (imports inside functions included).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"footfall": ROOT / "services" / "footfall", "footfall_training": ROOT / "services" / "footfall_training",
           "footfall_dash": ROOT / "dashboard" / "footfall_dash"}
# (group, rank): a module may import its own group, or a group of lower rank.
GROUPS = [
    ("footfall_training", 5), ("footfall_dash", 5),
    ("footfall.local", 4), ("footfall.dashboard_launcher", 4),
    ("footfall.aggregator", 3),
    ("footfall.inference", 2), ("footfall.ingest", 2),
    ("footfall.db", 1),
    ("footfall", 0),  # everything else in the runtime package: the shared base
]
# Run by path in the rknn-toolkit2 venv, which has neither package.
STANDALONE = {"footfall_training.rknn_worker"}


def group_of(module: str) -> tuple[str, int] | None:
    for group, rank in GROUPS:
        if module == group or module.startswith(group + "."):
            return group, rank
    return None


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(module: str, source: str) -> list[str]:
    own = group_of(module)
    problems = []
    for line, target in imported_modules(source):
        target_group = group_of(target)
        if target_group is None:
            continue  # the standard library or a third-party package
        if module in STANDALONE:
            problems.append(f"{module}:{line} imports {target} (it runs without the project's packages)")
        elif target_group[0] != own[0] and target_group[1] >= own[1]:
            problems.append(f"{module}:{line} ({own[0]}) imports {target} ({target_group[0]}): not a lower layer")
    return problems


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[0] in ("proto", "migrations") or "migrations" in parts:
                continue  # generated protobuf code, Alembic scripts
            modules[".".join((package, *parts)).removesuffix(".__init__")] = path
    return modules


def test_no_module_imports_a_higher_layer():
    modules = project_modules()
    assert "footfall.db.store" in modules and "footfall_training.train" in modules and "footfall_dash.data" in modules
    problems = [p for name, path in sorted(modules.items()) for p in violations(name, path.read_text())]
    assert not problems, "\n".join(problems)


def test_the_check_sees_upward_and_sideways_imports():
    assert violations("footfall.db.store", "from footfall.aggregator.folding import VisitorRecord")
    assert violations("footfall.inference.server", "def f():\n    import footfall_training.export")
    assert violations("footfall.ingest.service", "from footfall.inference import client")
    assert violations("footfall_training.rknn_worker", "from footfall.model_file import METADATA_KEY")
    assert not violations("footfall.aggregator.service", "from footfall.inference.client import InferenceClient")
    assert not violations("footfall_training.evaluate", "import numpy as np\nfrom footfall.labels import RACES")
