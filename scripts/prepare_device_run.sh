#!/usr/bin/env bash
# Lay out here what scripts/device_train.sh needs on the GPU machine (both folders are git-ignored
# and travel with the device tool's `carry`):
#   .device-data/  the training pack (train + val of both datasets, WebP, about 44 MiB), checked
#   .whl/          wheels of the Python packages that machine lacks (its python3 is 3.12 with CUDA
#                  torch, numpy, OpenCV; footfall.config needs pydantic-settings)
# The repository, the pack and the wheels travel together: at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
pack=${1:-$("$PY" -c "from footfall.config import ModelSettings; print(ModelSettings().data_dir)")/device}
mkdir -p .device-data .whl
cp "$pack"/*.tar.gz "$pack"/*.csv "$pack"/*.csv.gz .device-data/
"$PY" - <<'PY'
from pathlib import Path
from footfall_training.data import PACK_LAYOUT, sha256_mismatches
bad = sha256_mismatches(Path(".device-data"), PACK_LAYOUT.sha256)
raise SystemExit(f"pack files differ from their published sha256: {bad}" if bad else 0)
PY
# Same versions as this venv, as wheels for CPython 3.12 on x86-64 manylinux.
wanted=()
for name in pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv; do
  wanted+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -f .whl/*.whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${wanted[@]}"
du -sh .device-data .whl
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
carry=$(du -cb .device-data .whl | tail -1 | cut -f1)
echo "travels with the device tool: $(( (tree + carry) / 1048576 )) MiB of 64 (repository + carry)" >&2
