#!/usr/bin/env bash
# Footfall developer entry point. Installs what is missing, then:
#   ./footfall.sh run     the whole pipeline locally (embedded Redis, SQLite, demo video, dashboard)
#   ./footfall.sh test    the test suite (what CI runs: .ci/run calls this)
#   ./footfall.sh bench   the benchmarks (print figures)
# Extra arguments go to footfall-local / pytest.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${FOOTFALL_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

install_python() {
  local extras=$1 stamp="$VENV/.footfall-installed-$1"
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt setup.py ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  echo "installing Python packages into $VENV ($extras) ..." >&2
  # torch==2.13.0 first: a CPU build is on this machine's wheel path; an unpinned torch would pull CUDA.
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
}

install_system() {
  # Debian packages the tests use: Chromium for the browser test, docker-compose to validate the compose file.
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Debian packages: ${missing[*]} ..." >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "note: missing ${missing[*]} (install them with apt-get); tests needing them will skip (fail under CI=true)" >&2
    fi
  fi
  # rknn-toolkit2 in its own venv (old numpy/onnx pins, ~1.5 GB) for the NPU simulator tests: opt-in
  # (FOOTFALL_RKNN=1; .ci/run sets it). Without it those tests skip unless the venv already exists.
  if [ "${FOOTFALL_RKNN:-0}" = 1 ]; then
    bash scripts/setup_rknn_venv.sh >&2
  elif [ ! -f "${FOOTFALL_RKNN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/footfall/rknn-venv}/.footfall-rknn-ready" ]; then
    echo "note: no rknn-toolkit2 venv: the NPU simulator tests skip (FOOTFALL_RKNN=1 builds it, ~1.5 GB)" >&2
  fi
}

use_development_data() {
  # The development machines keep the datasets, the sample clip and the YuNet detector in one folder
  # beside the checkout (FOOTFALL_SHARED_DIR, default ../shared); the settings' own defaults are fixed
  # (~/.cache/footfall/...), so this folder is passed explicitly, unless the variables are already set.
  local shared=${FOOTFALL_SHARED_DIR:-$ROOT/../shared}
  if [ -d "$shared" ]; then
    shared=$(cd "$shared" && pwd)
    if [ -d "$shared/data" ]; then export FOOTFALL_DATA_DIR=${FOOTFALL_DATA_DIR:-$shared/data}; fi
    if [ -d "$shared/models" ]; then export FOOTFALL_MODELS_DIR=${FOOTFALL_MODELS_DIR:-$shared/models}; fi
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  run)
    install_python local,dashboard
    use_development_data
    exec "$VENV/bin/footfall-local" "$@"
    ;;
  test)
    install_python local,dashboard,train,test
    install_system
    use_development_data
    if [ -z "${FOOTFALL_TEST_POSTGRES_URL:-}" ]; then
      echo "note: the PostgreSQL tests skip; to run them (as .ci/run does) set" \
           "FOOTFALL_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test (a server you may write to)" >&2
    fi
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    install_python local,dashboard,train,test
    use_development_data
    exec "$VENV/bin/python" benchmarks/pipeline.py "$@"
    ;;
  *)
    sed -n '2,6p' "$0"
    exit 2
    ;;
esac
