#!/usr/bin/env bash
# Ship a trained checkpoint as the committed model: every format, the CI floors and the model card.
#   bash scripts/ship_model.sh ~/.cache/footfall/runs/w050b/best.pt 2026.11.26-cpu [EMOTION_BIAS.json] [FLIP_CONFIDENCE]
# EMOTION_BIAS.json (python -m footfall_training.logit_adjust sweep ... --write-bias): the constant
# added to the emotion logits, carried inside every format (footfall-export --emotion-bias); "" for none.
# FLIP_CONFIDENCE: the emotion confidence below which the worker mirrors a face, chosen for these
# weights on the validation split (footfall-evaluate --split val --flip-sweep ...), recorded in every
# file's metadata (footfall-export --flip-confidence); default: the checkpoint's own, if any.
# Writes model/<stem>.onnx, .int8.onnx, .pt, .rknn (+ .json) and accuracy_floor.json, then refreshes
# the model card's evaluation and RKNN tables. Speed tables are left alone (measure them on an idle
# machine: python scripts/refresh_model_card.py --only model_speed --only multitask_vs_single).
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint=${1:?checkpoint (.pt) to ship}
version=${2:?model version, e.g. 2026.11.26-cpu}
bias=${3:-}
flip_confidence=${4:-}
export PATH="$PWD/.venv/bin:$PATH"
stem=$(python -c "import sys; from footfall_training.train import load_checkpoint
print(load_checkpoint(sys.argv[1]).export_stem)" "$checkpoint")
footfall-export "$checkpoint" --out model --version "$version" ${bias:+--emotion-bias "$bias"} \
    ${flip_confidence:+--flip-confidence "$flip_confidence"}
footfall-rknn convert "model/$stem.onnx"
footfall-evaluate "model/$stem.onnx" "model/$stem.int8.onnx" --limit 300 --no-robustness --floor model/accuracy_floor.json
python scripts/refresh_model_card.py --skip model_speed --skip multitask_vs_single
echo "shipped $checkpoint as model/$stem.* ($version); check the card's status block and commit" >&2
