#!/usr/bin/env bash
# The controlled comparisons of model/README.md ("What each choice buys"): every run trains the
# same short recipe from scratch (10 epochs at 64 px, 1 thread) and changes one thing, so that
# choices (width, single- vs multi-task, loss, augmentation, distillation) are compared at an equal
# budget on 2 CPU cores. The runs are far weaker than the shipped model: they rank choices.
#   bash scripts/proxy_study.sh train    # two lanes side by side (about 2 h on 2 cores)
#   bash scripts/proxy_study.sh report   # test-split tables of the finished runs, both benchmarks
# Checkpoints and logs stay in the cache directory (<cache_dir>/runs/p64-*, <cache_dir>/logs);
# training a run again resumes it. The report goes to .footfall/proxy-study/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
CACHE=$(python -c "from footfall.config import ModelSettings; print(ModelSettings().cache_dir)")
COMMON=(--image-size 64 --epochs 10 --threads 1)
NO_AUG=flip,affine,color,grayscale,downscale,blur,noise,erase
# run name|extra arguments (width 0.5 unless given); each lane runs its list in order.
LANE_A=("p64-w050|" "p64-w050-age|--heads age" "p64-w050-gender|--heads gender" "p64-w050-race|--heads race"
        "p64-w050-emotion|--heads emotion" "p64-w050-nocamera|--augment-off downscale,blur,noise"
        "p64-w050-distil|--teacher model/footfall_w050.pt" "p64-w050-hard|--emotion-target hard")
LANE_B=("p64-w100|--width 1.0" "p64-w050-paperloss|--age-loss huber --w-age 0.08 --emotion-target hard"
        "p64-w050-seed1|--seed 1" "p64-w050-kendall|--weighting uncertainty" "p64-w050-noaug|--augment-off $NO_AUG"
        "p64-w050-mixed|--crops mixed" "p64-w050-emo2|--w-emotion 1.7")

lane() {
  local spec run extra
  for spec in "$@"; do
    run=${spec%%|*} extra=${spec#*|}
    echo "$(date +%H:%M) $run $extra" >&2
    # shellcheck disable=SC2086  # extra arguments are words
    footfall-train --run "$run" --width 0.5 "${COMMON[@]}" $extra > "$CACHE/logs/$run.log" 2>&1
  done
}

report() {
  local out=.footfall/proxy-study runs=() spec
  mkdir -p "$out"
  for spec in "${LANE_A[@]}" "${LANE_B[@]}"; do
    run=${spec%%|*}
    case $run in *-age|*-gender|*-race|*-emotion) continue ;; esac
    [ -f "$CACHE/runs/$run/best.pt" ] && runs+=("$CACHE/runs/$run/best.pt") || echo "missing: $run" >&2
  done
  footfall-evaluate "${runs[@]}" --no-robustness --json "$out/eval.json" --markdown > "$out/eval.md"
  # what augmentation buys on degraded faces: the robustness passes for the augmentation runs
  footfall-evaluate "$CACHE/runs/p64-w050"{,-nocamera,-noaug}/best.pt --json "$out/eval_robustness.json" \
    --markdown > "$out/eval_robustness.md"
  python benchmarks/multitask_vs_single.py --multi "$CACHE/runs/p64-w050/best.pt" \
    --single "age=$CACHE/runs/p64-w050-age/best.pt" --single "gender=$CACHE/runs/p64-w050-gender/best.pt" \
    --single "race=$CACHE/runs/p64-w050-race/best.pt" --single "emotion=$CACHE/runs/p64-w050-emotion/best.pt" \
    --json "$out/multitask_vs_single.json" | tee "$out/multitask_vs_single.md"
  # train-serve consistency: both crop kinds of the test split, for the runs trained on either
  footfall-evaluate "$CACHE/runs/p64-w050/best.pt" "$CACHE/runs/p64-w050-mixed/best.pt" --crops pipeline \
    --no-robustness --json "$out/eval_pipeline.json" --markdown > "$out/eval_pipeline.md"
  footfall-evaluate "$CACHE/runs/p64-w050/best.pt" "$CACHE/runs/p64-w100/best.pt" --no-robustness \
    --json "$out/eval_widths.json" > /dev/null
  python benchmarks/model_speed.py --random --widths 0.5,1.0 --accuracy "$out/eval_widths.json" \
    --json "$out/model_speed.json" | tee "$out/model_speed.md"
  echo "report in $out/" >&2
}

case ${1:-} in
  train)
    mkdir -p "$CACHE/logs"
    lane "${LANE_A[@]}" &
    lane "${LANE_B[@]}" &
    wait
    ;;
  report) report ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
