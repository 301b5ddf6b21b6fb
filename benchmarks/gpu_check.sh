#!/usr/bin/env bash
# The GPU path in one go (issue 15, target 5): the CUDA tests, then the NoC + pooling and the
# end-to-end benchmarks on the GPU, every step under a timeout (8 minutes in all), all output in
# one file: $OUT/gpu_check.txt when OUT is set, else benchmarks/gpu_check-<UTC date>.txt.
# A failed step does not stop the others; the summary at the end lists each step's result and
# the exit status is 1 if any failed (2: no CUDA device or no .venv, before any step runs).
# Never part of CI or `make test`.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine, after `make setup`
#   bash benchmarks/gpu_check.sh --dry-run  # print the steps and where the numbers go; run nothing
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
STAMP=$(date -u +%Y-%m-%d-%H%M)
if [[ -n ${OUT:-} ]]; then REPORT=$OUT/gpu_check.txt; else REPORT=benchmarks/gpu_check-$STAMP.txt; fi

# name | timeout in seconds | command (run by bash in the repository root)
STEPS=(
  "cuda tests|120|$PY -m pytest -q -p no:cacheprovider -m cuda"
  "NoC forward and pyramid pooling (bench_noc.py)|100|$PY benchmarks/bench_noc.py --device cuda"
  "end-to-end detector vs torchvision (bench_e2e.py)|240|$PY benchmarks/bench_e2e.py --device cuda"
)

if [[ ${1:-} == --dry-run ]]; then
  echo "gpu_check: would write $REPORT"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    echo "step: $name (timeout ${limit} s): $command"
  done
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2
  exit 2
fi

if [[ ! -x $PY ]]; then
  echo "gpu_check: $PY not found: run 'make setup' first (or set PYTHON)" >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1)); nothing run" >&2
  exit 2
fi

mkdir -p "$(dirname "$REPORT")"
: >"$REPORT"
log() { echo "$@" | tee -a "$REPORT"; }

{
  echo "== gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not on PATH"; fi
  "$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, '
             f'cuDNN {torch.backends.cudnn.version()}, device 0: {torch.cuda.get_device_name(0)}')"
} 2>&1 | tee -a "$REPORT"

export PYTHONUNBUFFERED=1
results=()
failed=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  log ""
  log "##### $name (timeout ${limit} s): $command"
  start=$SECONDS
  timeout -k 10 "$limit" bash -c "$command" 2>&1 | tee -a "$REPORT"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    results+=("PASS  $name (${took} s)")
  else
    failed=$((failed + 1))
    why="exit status $rc"
    [[ $rc -eq 124 || $rc -eq 137 ]] && why="timed out after ${limit} s"
    results+=("FAIL  $name (${why}, ${took} s)")
  fi
done

log ""
log "##### summary ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, ${SECONDS} s in all)"
for line in "${results[@]}"; do log "$line"; done
log "gpu_check: $((${#STEPS[@]} - failed)) of ${#STEPS[@]} steps passed; numbers in $REPORT"
[[ $failed -eq 0 ]]
