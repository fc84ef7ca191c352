#!/usr/bin/env bash
# Runs the CUDA checks and benchmarks on an NVIDIA machine, one section after another, each under
# its own time limit so that one failure leaves the rest measured. Everything printed also goes
# to $LOG_DIR/cuda-all.log (default ./out/cuda-all); the exit code and seconds of each step are
# printed last and written to $LOG_DIR/summary.txt.
#
# usage: bash bench/cuda-all.sh [SECTION ...]     (default: tests block7b block70b)
#   tests     the GPU test tier: the op specs and the CUDA tests on the GPU alone (--tier gpu)
#   block7b   bench/cuda-block-step --shape 7b: default, and with 512 MiB of attention scores
#   block7b-variants   the same without graphs, with flash attention, with f32 GEMMs
#   profile   bench/cuda-block-step --shape 7b --profile: device time op by op
#   block70b  bench/cuda-block-step --shape 70b (block70b-variants: with flash attention)
#   attention bench/cuda-attention: attention alone per path (GEMMs, tensor-core kernels, flash)
#             at the 7b, 70b and small shapes
#   tc        the tensor-core attention's GPU tests, then the block steps (7b, 70b), the 7b
#             profile and the small run (then its perplexity) with EQAT_CUDA_ATTENTION=tc
#   e2e70b    bench/cuda-e2e-step --shape 70b (80 layers held packed)
#   e2e7b     bench/cuda-e2e-step --shape 7b
#   small     llama-small w2g64 end to end (Block-AP 1024 × 512, 2 epochs, + E2E-QP 1024 × 512)
#             on CUDA, first with empty kernel and token caches (a fresh EQAT_CACHE_DIR: kernels
#             compiled, calib.txt tokenised), then with both warm; then its test-mix perplexity.
#             Needs MODELS_DIR / DATA_DIR (default ../shared)
# Needs the built project (npm install) and the CUDA driver, NVRTC and cuBLASLt on the loader path.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-out/cuda-all}
MODELS_DIR=${MODELS_DIR:-../shared/models}
DATA_DIR=${DATA_DIR:-../shared/data}
mkdir -p "$LOG_DIR"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(tests block7b block70b)
summary=()

# run NAME LIMIT_S CMD...: one step with its own log and time limit
run() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*" | tee -a "$LOG_DIR/cuda-all.log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG_DIR/cuda-all.log"
  local rc=${PIPESTATUS[0]}
  summary+=("$name rc=$rc $((SECONDS - t0))s")
  echo "=== $name: rc=$rc after $((SECONDS - t0)) s" >> "$LOG_DIR/cuda-all.log"
}

for s in "${sections[@]}"; do
  case $s in
    tests) run tests "${TESTS_LIMIT:-420}" node scripts/run-tests.mjs --tier gpu ;;
    block7b)
      run block7b 90 node dist/bench/cuda-block-step.js --shape 7b
      EQAT_CUDA_ATTENTION_SCORE_MIB=512 run block7b-score512 60 node dist/bench/cuda-block-step.js --shape 7b ;;
    block7b-variants)
      EQAT_CUDA_GRAPHS=0 run block7b-nographs 60 node dist/bench/cuda-block-step.js --shape 7b
      EQAT_CUDA_ATTENTION=flash run block7b-flash 60 node dist/bench/cuda-block-step.js --shape 7b
      run block7b-f32 60 node dist/bench/cuda-block-step.js --shape 7b --precision f32 --steps 10 ;;
    profile) run profile7b 90 node dist/bench/cuda-block-step.js --shape 7b --profile ;;
    block70b)
      run block70b 120 node dist/bench/cuda-block-step.js --shape 70b ;;
    block70b-variants)
      EQAT_CUDA_ATTENTION=flash run block70b-flash 90 node dist/bench/cuda-block-step.js --shape 70b ;;
    attention)
      run attention7b 120 node dist/bench/cuda-attention.js --shape 7b
      run attention70b 120 node dist/bench/cuda-attention.js --shape 70b
      run attention-small 60 node dist/bench/cuda-attention.js --shape small --seqlen 512 ;;
    tc)
      # the kernels' GPU tests first: a fragment-layout mistake shows here, not as a slow or wrong benchmark
      EQAT_TEST_EMULATOR=0 run tc-tests 120 node --test --test-name-pattern="tensor cores|EQAT_CUDA_ATTENTION=tc" \
        dist/test/ops/attention.test.js dist/test/cuda/block-ap.test.js
      export EQAT_CUDA_ATTENTION=tc
      run block7b-tc 90 node dist/bench/cuda-block-step.js --shape 7b
      run block70b-tc 120 node dist/bench/cuda-block-step.js --shape 70b
      run profile7b-tc 90 node dist/bench/cuda-block-step.js --shape 7b --profile
      rm -rf out/small-w2g64-tc
      run small-tc 300 node dist/src/cli/main.js quantize --device cuda --model "$MODELS_DIR/llama-small" \
        --calib "$DATA_DIR/calib.txt" --out out/small-w2g64-tc --wbits 2 --group-size 64 --seed 2 \
        --block-ap-train-size 1024 --block-ap-seqlen 512 --block-ap-epochs 2 \
        --e2e-qp-train-size 1024 --e2e-qp-seqlen 512 --e2e-qp-micro-batch-size 4 --json --quiet
      run small-tc-eval 120 node dist/src/cli/main.js eval --device cuda --model out/small-w2g64-tc \
        --data "$DATA_DIR/test-mix.txt" --seqlen 512 --json
      unset EQAT_CUDA_ATTENTION ;;
    e2e70b) run e2e70b 400 node dist/bench/cuda-e2e-step.js --shape 70b ;;
    e2e7b) run e2e7b 200 node dist/bench/cuda-e2e-step.js --shape 7b ;;
    small)
      # twice: the first run tokenises calib.txt (cold token cache), the second finds it cached
      rm -rf out/small-w2g64 out/small-w2g64-warm
      EQAT_CACHE_DIR=$(mktemp -d)
      export EQAT_CACHE_DIR
      run small 300 node dist/src/cli/main.js quantize --device cuda --model "$MODELS_DIR/llama-small" \
        --calib "$DATA_DIR/calib.txt" --out out/small-w2g64 --wbits 2 --group-size 64 --seed 2 \
        --block-ap-train-size 1024 --block-ap-seqlen 512 --block-ap-epochs 2 \
        --e2e-qp-train-size 1024 --e2e-qp-seqlen 512 --e2e-qp-micro-batch-size 4 --json
      run small-warm 300 node dist/src/cli/main.js quantize --device cuda --model "$MODELS_DIR/llama-small" \
        --calib "$DATA_DIR/calib.txt" --out out/small-w2g64-warm --wbits 2 --group-size 64 --seed 2 \
        --block-ap-train-size 1024 --block-ap-seqlen 512 --block-ap-epochs 2 \
        --e2e-qp-train-size 1024 --e2e-qp-seqlen 512 --e2e-qp-micro-batch-size 4 --json --quiet
      run small-eval 120 node dist/src/cli/main.js eval --device cuda --model out/small-w2g64 \
        --data "$DATA_DIR/test-mix.txt" --seqlen 512 --json ;;
    *) echo "unknown section: $s" >&2; summary+=("$s unknown") ;;
  esac
done
echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$LOG_DIR/summary.txt"
