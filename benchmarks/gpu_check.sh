#!/usr/bin/env bash
# The GPU checks of issue 24 in one prepared run (at most ~8 minutes on one H100 / H200):
#   1. the CUDA tests (pytest marker `cuda`; they skip without a GPU),
#   2. benchmarks/clip_train.py --config b16 --batch 256 in bf16: minivlm vs HF, TFLOP/s, MFU,
#   3. benchmarks/train_step.py at size base: every model vs its reference, bf16 (all models
#      first: the rows the GPU table needs) then fp32 (TF32), FLOP/s against the measured matmul
#      peak, peak memory. It writes its table after every row, so a run stopped at the limit
#      keeps the rows it finished.
# Everything goes to $OUT (default runs/gpu_check): gpu_check.log, summary.md, the JSON/markdown
# the benchmarks write (5 files). Each step has its own time limit; a failed step is reported
# and the next one still runs; the exit status is 1 if any step failed.
#
#   bash benchmarks/gpu_check.sh                        # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick   # dry run of the same steps on a CPU
#   bash benchmarks/gpu_check.sh --device cpu --quick --print   # list the commands only
#
# The Python used is $PYTHON (default python3); the repository root goes first on PYTHONPATH,
# so no install is needed (the GPU machine's python3 holds torch, transformers, timm, pytest).
set -uo pipefail

DEVICE=cuda
QUICK=0
PRINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --print) PRINT=1; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --device cuda|cpu, --quick, --print)" >&2
       exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# the test files that hold CUDA tests (the marker is declared in pyproject.toml)
CUDA_TESTS=$(grep -l "pytest.mark.cuda" tests/test_*.py | tr '\n' ' ')

# name | time limit (s) | command
if [ "$QUICK" = 1 ]; then
  CLIP=(benchmarks/clip_train.py --config tiny --batch 4 --steps 1 --repeats 2 --warmup 0)
  STEP=(benchmarks/train_step.py --quick)
else
  CLIP=(benchmarks/clip_train.py --config b16 --batch 256 --steps 5 --repeats 5 --warmup 2)
  STEP=(benchmarks/train_step.py --size base --steps 3 --repeats 5 --warmup 2)
fi
DTYPE=bf16
[ "$DEVICE" = cpu ] && DTYPE=fp32  # this CPU has no native bf16 (train_step says why)
NAMES=(tests clip_train train_step)
LIMITS=(120 120 240)  # 8 minutes together on the GPU (train_step: 13 models x 2 precisions)
[ "$QUICK" = 1 ] && LIMITS=(600 600 600)  # a dry run on a (shared, slow) CPU is not timed
CMDS=(
  "$PY -m pytest -m cuda -q -p no:cacheprovider $CUDA_TESTS"
  "$PY ${CLIP[*]} --device $DEVICE --dtype $DTYPE --out $OUT"
  "$PY ${STEP[*]} --device $DEVICE --precision bf16 fp32 --out $OUT"
)

if [ "$PRINT" = 1 ]; then
  for i in "${!CMDS[@]}"; do echo "${NAMES[$i]}|${LIMITS[$i]}|${CMDS[$i]}"; done
  exit 0
fi

mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
: > "$LOG"
{
  echo "# gpu_check $(date -u +%FT%TZ), device $DEVICE$([ "$QUICK" = 1 ] && echo ', quick')"
  echo
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo '```'; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; echo '```'
  fi
  "$PY" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}, cuda available: {torch.cuda.is_available()}')" 2>&1
  echo
  echo "| step | exit status | seconds |"
  echo "|---|---:|---:|"
} | tee "$SUMMARY" >> "$LOG"

STATUS=0
for i in "${!CMDS[@]}"; do
  echo "== ${NAMES[$i]} (limit ${LIMITS[$i]} s): ${CMDS[$i]}" | tee -a "$LOG"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${LIMITS[$i]}" ${CMDS[$i]} 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || STATUS=1
  [ "$rc" = 124 ] && echo "== ${NAMES[$i]}: stopped at its ${LIMITS[$i]} s limit" | tee -a "$LOG"
  echo "| ${NAMES[$i]} | $rc | $(( $(date +%s) - t0 )) |" >> "$SUMMARY"
done
for f in "$OUT"/train_step_*.md; do
  [ -f "$f" ] && { echo; cat "$f"; } >> "$SUMMARY"
done
echo; cat "$SUMMARY"
exit $STATUS
