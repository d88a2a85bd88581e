#!/usr/bin/env bash
# Create the virtual environment of rknn-toolkit2 (RKNN converter + simulator, x86-64) and print its path.
#
# rknn-toolkit2 pins numpy<=1.26.4, onnx<=1.18, protobuf<=4.25.4, so it cannot share the project's
# venv; footfall_training.rknn_convert runs footfall_training/rknn_worker.py with this venv's python.
#
#   scripts/setup_rknn_venv.sh            # -> ~/.cache/footfall/rknn-venv (or $FOOTFALL_RKNN_VENV)
#
# Idempotent: a marker file inside the venv records the pinned versions; when it matches, nothing is
# installed (well under a second). Unattended (CI): no prompts, non-zero exit on any failure; progress
# goes to stderr, stdout is only the venv path.
#
# Environment:
#   FOOTFALL_RKNN_VENV     where the venv lives (default ${XDG_CACHE_HOME:-~/.cache}/footfall/rknn-venv)
#   FOOTFALL_RKNN_PYTHON   interpreter to create it with (default python3; rknn-toolkit2 2.5.0 has
#                          wheels for CPython 3.8-3.12 on x86-64 Linux)
#   FOOTFALL_RKNN_TORCH_INDEX  optional extra index for the CPU-only torch wheel, e.g.
#                          https://download.pytorch.org/whl/cpu (plain PyPI torch pulls GBs of CUDA)
set -euo pipefail

VENV="${FOOTFALL_RKNN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/footfall/rknn-venv}"
PYTHON="${FOOTFALL_RKNN_PYTHON:-python3}"
TOOLKIT="rknn-toolkit2==2.5.0"
# The toolkit's own requirements, narrowed to what resolves together (measured, see ENVIRONMENT.md).
# torch is imported by rknn.api at import time even for ONNX models; 2.13.0 is the CPU wheel we use
# everywhere (the toolkit asks for <=2.4 but works with it). setuptools<81 keeps pkg_resources,
# which rknn.api still imports.
PINS=(
  "numpy<=1.26.4"
  "protobuf>=4.21.6,<=4.25.4"
  "onnx>=1.16.1,<=1.18.0"
  "onnxruntime>=1.17.0"
  "psutil"
  "ruamel.yaml>=0.17.21"
  "scipy>=1.9.3"
  "tqdm"
  "fast-histogram>=0.11"
  "opencv-python-headless>=4.5,<5"
  "setuptools<81"
  "torch==2.13.0"
)
MARKER="$VENV/.footfall-rknn-ready"
SPEC="$TOOLKIT ${PINS[*]}"

log() { echo "setup_rknn_venv: $*" >&2; }

if [[ -f "$MARKER" && -x "$VENV/bin/python" && "$(cat "$MARKER")" == "$SPEC" ]]; then
  log "up to date"
  echo "$VENV"
  exit 0
fi

start=$SECONDS
log "creating $VENV with $("$PYTHON" --version 2>&1)"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
rm -f "$MARKER"  # a half-finished install must not look complete

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "${PINS[@]}" >"$constraints"

pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}
torch_index=()
if [[ -n "${FOOTFALL_RKNN_TORCH_INDEX:-}" ]]; then
  torch_index=(--extra-index-url "$FOOTFALL_RKNN_TORCH_INDEX")
fi
# One resolve for everything, constrained so that torch cannot lift setuptools or numpy.
pip_install "${torch_index[@]}" -c "$constraints" "${PINS[@]}"
# --no-deps: the wheel asks for opencv-python (GUI build) and torch<=2.4, which we replace above.
pip_install --no-deps "$TOOLKIT"

"$VENV/bin/python" -c "from rknn.api import RKNN" >/dev/null
echo "$SPEC" >"$MARKER"
log "ready in $((SECONDS - start)) s"
echo "$VENV"
