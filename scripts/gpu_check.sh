#!/usr/bin/env bash
# The GPU check of issue 11, for a lent H100/H200: benchmark (ours against the reference 1.15.6) and
# the CUDA tests. Each mode is sized for ~5 minutes of GPU time (the steps have time limits and the
# benchmark a budget, so a mode ends in time and keeps what it measured).
#
#   bash scripts/gpu_check.sh explore   # quick CUDA tests; every workload with the reference and each eager
#                                       # variant of ours (profiles of casts / channels_last / reference);
#                                       # then the compiled variants (188 M Unet first)
#   bash scripts/gpu_check.sh final     # the table for benchmarks/README.md: reference and our default
#                                       # (casts) on all five workloads, then `compile` on the three
#                                       # training ones; then the compile / script / FSDP2 checks
#   bash scripts/gpu_check.sh smoke     # the same steps at tiny sizes on CPU (run it before a GPU call)
#
# Output ($OUT, default /tmp/gpu_check_out; at most 8 files come back from the device machine):
#   1_summary.md       headline table, full table, test and FSDP results (rewritten after each step)
#   2_bench_gpu.jsonl  every benchmark result, appended as it finished
#   3_bench.log        the benchmark's output
#   4_tests.log        pytest tests/gpu (and the FSDP2 launch) output
#   5_profile.txt      torch.profiler tables (explore)
#   6_env.txt          GPU, driver, torch and package versions
# Overrides (environment): PYTHON (default python3), VARIANTS (ours' variants: explore's list, or
# final's second pass, default compile), WORKLOADS, WORKLOADS2 (final's second pass), BUDGET_S /
# BUDGET2_S (benchmark seconds), TOTAL_S (the whole mode: 450 s; every step is
# cut to what is left, so the command ends in time), SKIP_REF=1, SKIP_TESTS=1, SKIP_FSDP=1.
# The summary is rewritten after every step: a run stopped from outside still leaves one.
# .whl/ (ignored by git, carried to the device) holds the wheels the GPU image lacks; they are
# installed into /tmp/site first (see benchmarks/README.md).
set -uo pipefail
MODE="${1:-explore}"
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-/tmp/gpu_check_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
rm -rf "$OUT"/[1-6]_* "$OUT/bench"  # a fresh set of result files
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true TQDM_DISABLE=1
START=$(date +%s)
TOTAL_S="${TOTAL_S:-$([ "$MODE" = smoke ] && echo 900 || echo 450)}"  # the whole mode, GPU start-up excluded
DEADLINE=$(( START + TOTAL_S ))
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
left() { local l=$(( DEADLINE - $(date +%s) )); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }  # min(limit, time left)

case "$MODE" in
  explore|final) DEVICE=cuda; QUICK=() ;;
  smoke) DEVICE=cpu; QUICK=(--quick --dtype bf16 --compile-backend aot_eager) ;;
  *) echo "usage: bash scripts/gpu_check.sh explore|final|smoke" >&2; exit 2 ;;
esac

# --- 1. the carried wheels -------------------------------------------------------------------------
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ -z "${NO_WHEELS:-}" ]; then
  say "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# our package first for everything but the reference worker (bench_gpu.py takes the repo out for it)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# --- 2. environment -----------------------------------------------------------------------------------
{
  date -u; nproc; (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "no nvidia-smi")
  "$PY" - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "sm", f"{p.major}.{p.minor}", p.multi_processor_count, "SMs",
          "bf16", torch.cuda.is_bf16_supported())
for name in ("triton", "accelerate", "pydantic", "ema_pytorch", "einops", "x_clip", "kornia", "webdataset", "safetensors"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING", type(e).__name__, e)
import dalle2_pytorch
print("ours:", dalle2_pytorch.__file__)
EOF
} > "$OUT/6_env.txt" 2>&1
cat "$OUT/6_env.txt"
grep -q "MISSING" "$OUT/6_env.txt" && say "WARNING: a package is missing (see above)"

# --- 3. steps ----------------------------------------------------------------------------------------
TESTS_RC=""
FSDP_RESULT="not run"
write_summary() {  # tables first; rewritten after every step
  if [ -f "$OUT/bench/bench_gpu.jsonl" ]; then
    cp "$OUT/bench/bench_gpu.jsonl" "$OUT/2_bench_gpu.jsonl"
    "$PY" benchmarks/bench_gpu.py --table-from "$OUT/bench/bench_gpu.jsonl" > /dev/null 2>&1
  fi
  [ -f "$OUT/bench/profile.txt" ] && cp "$OUT/bench/profile.txt" "$OUT/5_profile.txt"
  {
    echo "# gpu_check $MODE, $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - START )) s"
    grep -m1 "^gpu " "$OUT/6_env.txt" || true
    grep -m1 "^python " "$OUT/6_env.txt" || true
    echo
    if [ -f "$OUT/bench/bench_gpu.md" ]; then cat "$OUT/bench/bench_gpu.md"; else echo "(no benchmark results yet: see 3_bench.log)"; fi
    echo
    echo "tests:${TESTS_RC:- not run}"
    echo "FSDP2: $FSDP_RESULT"
  } > "$OUT/1_summary.md"
}

run_tests() {  # $1: pytest -k expression, $2: time limit (s)
  [ -n "${SKIP_TESTS:-}" ] && return
  local limit; limit=$(left "$2")
  if [ "$limit" -lt 20 ]; then TESTS_RC="$TESTS_RC [$1] skipped: no time left;"; return; fi
  say "pytest tests/gpu -k '$1' (limit $limit s)"
  timeout --kill-after=10 "$limit" "$PY" -m pytest tests/gpu -q -x -p no:cacheprovider -k "$1" -o addopts="" \
    >> "$OUT/4_tests.log" 2>&1
  local rc=$?
  TESTS_RC="$TESTS_RC [$1] rc=$rc ($(tail -n 1 "$OUT/4_tests.log"));"
  say "tests [$1] rc=$rc: $(tail -n 1 "$OUT/4_tests.log")"
  write_summary
}

REF=(--reference-python "$PY")
[ -n "${SKIP_REF:-}" ] && REF=()
run_bench() {  # $1: benchmark budget (s); then bench_gpu.py arguments. Hard limit: budget + 60 s.
  local budget; budget=$(left "$1"); shift
  if [ "$budget" -lt 30 ]; then say "bench skipped: no time left"; return; fi
  local hard; hard=$(left $(( budget + 60 )))
  say "bench_gpu.py (budget $budget s, limit $hard s) $*"
  timeout --kill-after=20 "$hard" "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --dtype bf16 "${QUICK[@]}" \
    --out "$OUT/bench" --budget-s "$budget" "$@" 2>&1 | tee -a "$OUT/3_bench.log"
  say "bench rc=${PIPESTATUS[0]}"
  write_summary
}

run_fsdp() {  # accelerate launch with the shipped FSDP2 config, one process: train 4 steps, stop, resume to 6
  [ -n "${SKIP_FSDP:-}" ] && return
  local limit; limit=$(left 150)
  if [ "$limit" -lt 40 ]; then FSDP_RESULT="skipped: no time left"; return; fi
  local run=/tmp/gpu_check_fsdp; rm -rf "$run"
  local cfg=(--config_file train_configs/decoder_tiny_cpu.json --override "data.webdataset_base_url=$REPO/tests/fixtures/reference_shards/{}.tar"
             --override "tracker.data_path=$run" --override train.epochs=1)
  local launch=("$PY" -m accelerate.commands.launch --config_file train_configs/accelerate/fsdp2.yaml --num_processes 1
                --main_process_port 29533)
  [ "$DEVICE" = cpu ] && launch=("$PY")  # accelerate does not shard on CPU: the plain script
  say "FSDP2 (limit $limit s): ${launch[*]} train_decoder.py (4 steps, then resume to 6)"
  { timeout --kill-after=10 $(( limit * 6 / 10 )) "${launch[@]}" train_decoder.py "${cfg[@]}" --max-steps 4 && \
    timeout --kill-after=10 $(( limit * 4 / 10 )) "${launch[@]}" train_decoder.py "${cfg[@]}" --max-steps 6; } \
    >> "$OUT/4_tests.log" 2>&1
  local rc=$?
  local steps
  steps=$("$PY" - "$run" <<'EOF' 2>&1
import json, sys
from pathlib import Path
recs = [json.loads(l) for l in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines() if l.strip()]
steps = [r["step"] for r in recs if r.get("train/loss") is not None]
print(f"train steps logged {steps}; losses finite: {all(r['train/loss'] == r['train/loss'] for r in recs if 'train/loss' in r)}")
EOF
)
  FSDP_RESULT="rc=$rc; $(echo "$steps" | tail -n 1); $(grep -h "wraps the blocks\|resumed from" "$OUT/4_tests.log" | tail -n 2 | cut -c1-200 | tr '\n' ' ')"
  say "FSDP2: $FSDP_RESULT"
  write_summary
}

# --- 4. the mode's steps --------------------------------------------------------------------------------
ALL=unet188_train,prior_train,unet_laion_train,decoder_sample,prior_sample
if [ "$MODE" = explore ]; then
  run_tests "not compile and not script" 90
  # every workload uncompiled first (reference, the baseline and each eager fast path), then compiles
  run_bench "${BUDGET_S:-130}" "${REF[@]}" --sample-repeats 1 --workloads "${WORKLOADS:-$ALL}" \
    --variants "${VARIANTS:-eager,fused,casts,channels_last}" --variants-for "prior_train=eager,fused,casts" \
    --variants-for "decoder_sample=casts,channels_last" --variants-for "prior_sample=casts" \
    --profile "casts,channels_last,reference"
  run_bench "${BUDGET2_S:-150}" --workloads "${WORKLOADS2:-unet188_train,prior_train,unet_laion_train}" \
    --variants "compile,fused+casts+compile" --variants-for "prior_train=compile" \
    --variants-for "unet_laion_train=compile"
elif [ "$MODE" = final ]; then
  # the reference and our default first (every row of the table), then the compiled variants
  run_bench "${BUDGET_S:-120}" "${REF[@]}" --workloads "${WORKLOADS:-$ALL}" --variants casts
  run_bench "${BUDGET2_S:-150}" --workloads "${WORKLOADS2:-unet188_train,prior_train,unet_laion_train}" \
    --variants "${VARIANTS:-compile}"
  run_tests "compile or script" 90
  run_fsdp
else  # smoke: everything once, tiny, on CPU
  run_tests "not compile and not script" 120
  run_bench 240 "${REF[@]}" --variants "eager,fused,casts,channels_last,compile" --profile "casts"
  run_fsdp
fi

# --- 5. done: the summary, and its headline table last on the console --------------------------------------
write_summary
rm -rf "$OUT/bench"
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
echo "tests:${TESTS_RC:- not run}"
echo "FSDP2: $FSDP_RESULT"
sed -n '/^| workload | ours (variant)/,/^$/p' "$OUT/1_summary.md"
