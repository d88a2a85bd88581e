#!/usr/bin/env bash
# The generalisation levers of issue 18 at an equal budget (model/README.md, "Faces from other
# sources"): every run fine-tunes the shipped weights (--init model/footfall_w050.pt) for the same
# STEPS steps (one epoch capped by --max-steps, learning rate LR, dataset crops, 1 thread) and changes
# one thing; the baseline run changes nothing, so what the short fine-tune does by itself is visible.
#   bash scripts/generalise_study.sh train     # the runs one after another (STEPS=80: about 3 min each here)
#   XS_LIMIT=3000 bash scripts/generalise_study.sh report  # FER+/UTKFace test (LIMIT faces each), cross-source set
#   XS_LIMIT=3000 bash scripts/generalise_study.sh xs      # the cross-source part only
# Checkpoints and logs stay in the cache directory (<cache_dir>/runs/gs-*, <cache_dir>/logs); the
# report goes to .footfall/generalise-study/ (git-ignored). The cross-source set must be built first
# (footfall-data crosssource); choose on its val split, report its test split.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
CACHE=$(python -c "from footfall.config import ModelSettings; print(ModelSettings().cache_dir)")
# LIMIT: faces of each test dataset; XS_LIMIT: random cross-source photos (0: all 13,672, about 20 min
# per run on a busy 2-core machine).
STEPS=${STEPS:-80} LR=${LR:-0.0005} LIMIT=${LIMIT:-1000} XS_LIMIT=${XS_LIMIT:-0}
COMMON=(--init model/footfall_w050.pt --width 0.5 --epochs 1 --max-steps "$STEPS" --lr "$LR" --warmup-steps 10
        --w-emotion 1.7 --threads 1)
# run name|extra arguments. (--select-emotion macro_f1 needs several epochs to choose among: not here.)
RUNS=("gs-base|" "gs-la|--emotion-loss la" "gs-balanced|--emotion-loss balanced" "gs-sampling|--sampling balanced"
      "gs-strong|--augment-strong" "gs-original|--emotion-original-mix 0.5")

train() {
  local spec run extra
  mkdir -p "$CACHE/logs"
  for spec in "${RUNS[@]}"; do
    run=${spec%%|*} extra=${spec#*|}
    echo "$(date +%H:%M) $run $extra" >&2
    # shellcheck disable=SC2086  # extra arguments are words
    footfall-train --run "$run-s$STEPS" "${COMMON[@]}" $extra > "$CACHE/logs/$run-s$STEPS.log" 2>&1
  done
}

report() {
  local out=.footfall/generalise-study runs=(model/footfall_w050.pt) spec
  mkdir -p "$out"
  for spec in "${RUNS[@]}"; do
    run=${spec%%|*}-s$STEPS
    [ -f "$CACHE/runs/$run/best.pt" ] && runs+=("$CACHE/runs/$run/best.pt") || echo "missing: $run" >&2
  done
  footfall-evaluate "${runs[@]}" --limit "$LIMIT" --no-robustness --flip on --json "$out/eval_s$STEPS.json" \
    --markdown > "$out/eval_s$STEPS.md"
}

xs() {  # the cross-source part: the runs only (the card has the shipped model's figures)
  local out=.footfall/generalise-study runs=() spec
  mkdir -p "$out"
  for spec in "${RUNS[@]}"; do runs+=("$CACHE/runs/${spec%%|*}-s$STEPS/best.pt"); done
  footfall-evaluate "${runs[@]}" --cross-source only --flip on --limit "$XS_LIMIT" \
    --json "$out/crosssource_s$STEPS.json" --markdown > "$out/crosssource_s$STEPS.md"
  echo "report in $out/" >&2
}

case ${1:-} in
  train) train ;;
  report) report; xs ;;
  xs) xs ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
