#!/usr/bin/env bash
# Train several runs side by side on the lent GPU machine in ONE call of the device tool, from the
# training pack carried in .device-data/, and hand back each run's best.pt and the logs under $OUT.
#
# Here, once:   bash scripts/prepare_device_run.sh      (pack -> .device-data/, wheels -> .whl/)
# Device tool:  command  "bash scripts/device_train.sh 'w100:--width 1.0 --epochs 60 --batch-size 512 --lr 0.004'
#                          'w140:--width 1.4 --epochs 60 --batch-size 512 --lr 0.004'"
#               carry    [".device-data", ".whl"]     timeout_s 590
# Back here:    bash scripts/device_train.sh --collect DIR   (joins split files into DIR/<run>.pt)
#
# Each argument is RUN:ARGS (footfall-train arguments). Every run is given FOOTFALL_DEVICE_TRAIN_S
# seconds (default 480) and is then stopped; its best.pt (saved at every improving epoch) comes
# back all the same. Files over 15 MiB travel in parts (the tool takes files up to 16 MiB, 8 in all):
# at most 7 runs of width <= 1.0, or 3 with a wider one. FOOTFALL_DEVICE_PYTHON picks the
# interpreter (default python3, the machine's own with CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --collect ]; then
  dir=${2:?folder with the files the device tool brought back}
  for first in "$dir"/*.pt.part-aa; do
    [ -e "$first" ] || continue
    pt=${first%.part-aa}
    cat "$pt".part-* > "$pt" && rm "$pt".part-*
  done
  ls -l "$dir"/*.pt
  exit 0
fi

: "${OUT:?OUT is set by the device tool: the folder whose files come back}"
[ $# -gt 0 ] || { sed -n '2,16p' "$0"; exit 2; }
PY=${FOOTFALL_DEVICE_PYTHON:-python3}
if ! "$PY" -c "import pydantic_settings" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  # packages the machine lacks (footfall.config needs pydantic-settings)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/services${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FOOTFALL_DATA_DIR=${FOOTFALL_DATA_DIR:-$PWD/.device-data}
export FOOTFALL_CACHE_DIR=${FOOTFALL_CACHE_DIR:-/tmp/footfall-cache}
mkdir -p "$OUT/logs"
{ "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"; nvidia-smi -L || true; } \
  2>&1 | tee "$OUT/logs/machine.txt"
# Decode the pack once (the runs then read the cached arrays instead of each decoding it).
"$PY" -c "from footfall_training.data import load_split; [load_split(s) for s in ('train', 'val')]" \
  2>&1 | tee "$OUT/logs/decode.txt"

pids=() names=()
for spec in "$@"; do
  name=${spec%%:*} args=${spec#*:}
  [ "$name" != "$spec" ] || { echo "run spec '$spec' is not RUN:ARGS" >&2; exit 2; }
  # shellcheck disable=SC2086  # ARGS is a list of footfall-train arguments
  timeout "${FOOTFALL_DEVICE_TRAIN_S:-480}" "$PY" -m footfall_training.train --run "$name" $args \
    > "$OUT/logs/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
done
status=0
for i in "${!pids[@]}"; do
  rc=0; wait "${pids[$i]}" || rc=$?
  [ $rc = 0 ] || [ $rc = 124 ] || status=1  # 124: stopped at its time limit, best.pt kept
  echo "${names[$i]}: exit $rc; $(grep -c ' val ' "$OUT/logs/${names[$i]}.log" || true) epochs; last:" \
       "$(grep ' val ' "$OUT/logs/${names[$i]}.log" | tail -1)"
  best="$FOOTFALL_CACHE_DIR/runs/${names[$i]}/best.pt"
  if [ -f "$best" ]; then
    if [ "$(stat -c %s "$best")" -gt $((15 * 1024 * 1024)) ]; then
      split -b 15m "$best" "$OUT/${names[$i]}.pt.part-"
    else
      cp "$best" "$OUT/${names[$i]}.pt"
    fi
  else
    status=1
  fi
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -r "$OUT/logs"
ls -l "$OUT"
exit $status
