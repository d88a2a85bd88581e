#!/usr/bin/env bash
# The architecture study of model/README.md ("Architectures at an equal budget", issue 23): today's
# network, MobileNetV3, + attention, three branching points and the search's best configuration, each
# trained from scratch at the same tiny proxy recipe (64 px faces, the same 9600 training faces,
# 2 epochs of 100 steps of 96 faces, 1 thread; two of them with a second seed for the noise) and scored
# on the test splits and the cross-source set's val split. Far weaker than the shipped model; at this
# budget the seed moves a run more than the architecture does (model card). So the main variants are
# also trained at the proxy study's recipe (scripts/proxy_study.sh: all training faces, 10 epochs at
# 64 px, 1 thread, two lanes side by side), where its seed noise is known and runs separate.
#   bash scripts/arch_study.sh search   # footfall-search: 5 trials at a smaller recipe (~1-2 min each)
#   bash scripts/arch_study.sh train    # the tiny runs, one after the other (~3 min each on an idle core)
#   bash scripts/arch_study.sh report   # test-split (1000 faces per dataset) and cross-source tables, search table
#   bash scripts/arch_study.sh train-proxy    # the 6 proxy-recipe runs, two lanes (about 2 h on 2 cores)
#   bash scripts/arch_study.sh report-proxy   # full test split and cross-source tables of those runs
# Checkpoints and logs stay in the cache directory (<cache_dir>/runs/arch-*, <cache_dir>/logs);
# training again resumes. The search's SQLite study is <cache_dir>/search/arch-search.db.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
CACHE=$(python -c "from footfall.config import ModelSettings; print(ModelSettings().cache_dir)")
RECIPE=(--image-size 64 --limit 9600 --epochs 2 --max-steps 100 --warmup-steps 50 --threads 1)
# run name|arguments
RUNS=("arch-mnv2-w050|--width 0.5"
      "arch-mnv3-w060|--arch mnv3 --width 0.6"
      "arch-mnv3-w060-mha|--arch mnv3 --width 0.6 --attention mha"
      "arch-mnv3-w060-sd6|--arch mnv3 --width 0.6 --shared-depth 6"
      "arch-mnv3-w060-sd4|--arch mnv3 --width 0.6 --shared-depth 4"
      "arch-mnv3-w060-sd7|--arch mnv3 --width 0.6 --shared-depth 7"
      "arch-mnv3-w060-mha-sd6|--arch mnv3 --width 0.6 --attention mha --shared-depth 6"
      "arch-mnv2-w050-seed1|--width 0.5 --seed 1"
      "arch-mnv3-w060-seed1|--arch mnv3 --width 0.6 --seed 1")
# The proxy-recipe tier: today's network again (same code as the others), MobileNetV3, + attention, branched.
PROXY=(--image-size 64 --epochs 10 --threads 1)
# The last pair learns from the shipped model (--teacher), as a long run would: does the gap survive?
PROXY_LANE_A=("arch-p64-mnv3-w060-mha|--arch mnv3 --width 0.6 --attention mha"
              "arch-p64-mnv3-w060-sd6|--arch mnv3 --width 0.6 --shared-depth 6"
              "arch-p64-mnv3-w060-sd6-distil|--arch mnv3 --width 0.6 --shared-depth 6 --teacher model/footfall_w050.pt")
PROXY_LANE_B=("arch-p64-mnv2-w050|--width 0.5" "arch-p64-mnv3-w060|--arch mnv3 --width 0.6"
              "arch-p64-mnv2-w050-distil|--width 0.5 --teacher model/footfall_w050.pt")
SEARCH=(--study arch-search --trials 5 --arch mnv3 --width-choices 0.5,0.6,0.75 --image-size 64 --limit 12000
        --epochs 2 --max-steps 60 --warmup-steps 30 --threads 1)

best_flags() {  # the search's best configuration as footfall-train arguments
  python -m footfall_training.search "${SEARCH[@]}" --report | sed -n 's/^best: .*footfall-train //p'
}

train_run() {  # train_run RUN RECIPE_ARRAY_NAME ARGS...
  local run=$1 recipe="$2[@]"; shift 2
  echo "$(date +%H:%M) $run $*" >&2
  python -m footfall_training.train --run "$run" "$@" "${!recipe}" > "$CACHE/logs/$run.log" 2>&1
}

proxy_lane() {
  local spec
  for spec in "$@"; do
    # shellcheck disable=SC2086  # arguments are words
    train_run "${spec%%|*}" PROXY ${spec#*|}
  done
}

case ${1:-} in
  search)
    mkdir -p "$CACHE/logs"
    python -m footfall_training.search "${SEARCH[@]}" 2>&1 | tee "$CACHE/logs/arch-search.log"
    ;;
  train)
    mkdir -p "$CACHE/logs"
    for spec in "${RUNS[@]}"; do
      # shellcheck disable=SC2086  # arguments are words
      train_run "${spec%%|*}" RECIPE ${spec#*|}
    done
    flags=$(best_flags)
    # shellcheck disable=SC2086
    [ -n "$flags" ] && train_run arch-mnv3-search-best RECIPE --arch mnv3 $flags || echo "no search result yet" >&2
    ;;
  report)
    runs=()
    for run in "${RUNS[@]%%|*}" arch-mnv3-search-best; do
      [ -f "$CACHE/runs/$run/best.pt" ] && runs+=("$CACHE/runs/$run/best.pt") || echo "missing: $run" >&2
    done
    # test splits (1000 faces of each dataset) and the cross-source set's val split (pipeline crops)
    python -m footfall_training.evaluate "${runs[@]}" --limit 1000 --no-robustness --threads 1 --cross-source on \
      --markdown
    python -m footfall_training.search "${SEARCH[@]}" --report
    ;;
  train-proxy)
    mkdir -p "$CACHE/logs"
    proxy_lane "${PROXY_LANE_A[@]}" &
    proxy_lane "${PROXY_LANE_B[@]}" &
    wait
    ;;
  report-proxy)
    runs=()
    for run in "${PROXY_LANE_A[@]%%|*}" "${PROXY_LANE_B[@]%%|*}"; do
      [ -f "$CACHE/runs/$run/best.pt" ] && runs+=("$CACHE/runs/$run/best.pt") || echo "missing: $run" >&2
    done
    # the whole test split (dataset crops), then the whole cross-source set (pipeline crops; its val split is
    # the one to choose by; the first run on a machine crops its 13,672 photos, about 10 minutes)
    python -m footfall_training.evaluate "${runs[@]}" --no-robustness --markdown
    python -m footfall_training.evaluate "${runs[@]}" --no-robustness --cross-source only --markdown
    ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
