#!/usr/bin/env bash
# The GPU checks and benchmarks, batched for a lent GPU machine (bench/README.md).
#
#   bash bench/device_suite.sh kernels   # 8B builds, GPU tests, fused-kernel and decode
#                                        # benchmarks (PDL on/off), the peer anchor
#   bash bench/device_suite.sh e2e       # SmolLM2 on the GPU (test + CLI), GEMM benchmark
#
# Run from the repo root on the GPU machine; logs and tables go to $OUT (default /tmp/out).
# `kernels` also runs the GEMV sweep, profiles a decode step of each artifact in place
# (bench/decode_profile.py) and times int4 decode with the CUDA W4A16 decode kernel off (A/B). It starts
# bench/decode.py --build-only in its own session (setsid) so the 8B
# checkpoint and its artifacts are built in /dev/shm while the GPU tests run, then waits for
# them. Environment: SCHEMES (bf16,int4), PEERS (decode.py's --peers, none by default: the
# anchor script is the peer), GPU_TESTS (test files), TEST_TIMEOUT (s), NPF_SWEEP (W4A16
# prefetch depths to time int4 decode with, e.g. "0 8 16"). The SmolLM2 GGUF
# travels in two parts (.carry1/part1 with `kernels`, .carry2/part2 + sha256 with `e2e`,
# run next on the same warm machine). Carry .carry-cuda too (bench/prebuild_cuda.py).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# CUDA libraries built before the call by bench/prebuild_cuda.py and carried as .carry-cuda:
# with the same nvcc they have the same cache keys, so nothing is built here
export OPTIMIZER_CACHE=${OPTIMIZER_CACHE:-/tmp/optcache}
if [ -d .carry-cuda/optcache ]; then
  mkdir -p "$OPTIMIZER_CACHE" && cp -r .carry-cuda/optcache/. "$OPTIMIZER_CACHE"/
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1 \
  || { echo "pip install -e . failed"; tail -5 /tmp/pip.log; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
W=/dev/shm/decode
case "${1:-}" in
kernels)
  mkdir -p $W
  [ -f .carry1/part1 ] && cp .carry1/part1 /tmp/smollm2.part1
  setsid nohup python3 bench/decode.py --build-only --schemes ${SCHEMES:-bf16,int4} \
    --work $W > $W/build.log 2>&1 < /dev/null &
  # PDL smoke check first: if PDL-launched kernels fail here, the rest runs without PDL
  if ! python3 bench/pdl_smoke.py > "$OUT/pdl_smoke.log" 2>&1; then
    echo "PDL smoke check failed: OPTIMIZER_PDL=0 from here on"; export OPTIMIZER_PDL=0
  fi
  tail -8 "$OUT/pdl_smoke.log"
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -n 6 ${GPU_TESTS:-tests/} \
    -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
  python3 bench/kernels_fused.py 2>&1 | tee "$OUT/kernels_fused.md" | tail -30
  python3 bench/gemv_sweep.py 2>&1 | tee "$OUT/gemv_sweep.log" | tail -16
  while [ ! -f $W/built ] && pgrep -f "decode.py --build-only" > /dev/null; do sleep 5; done
  tail -3 $W/build.log
  python3 bench/decode.py --work $W --schemes ${SCHEMES:-bf16,int4} --peers "${PEERS:-}" \
    --pdl-ab --out "$OUT/decode.md" 2>&1 | tee "$OUT/decode.log" | tail -16
  python3 bench/decode_profile.py $W/int4 $W/bf16 --batch 1 2>&1 | grep -v -i warn \
    > "$OUT/decode_profile.md"; head -14 "$OUT/decode_profile.md"
  echo "--- int4 with the Triton W4A16 kernel at every M (OPTIMIZER_W4A16_MMA=0)"
  OPTIMIZER_W4A16_MMA=0 python3 bench/decode.py --work $W --schemes int4 --batches 1,2,4,8 \
    --prefill 0 --peers "" 2>&1 | tail -1
  [ -f .peer/anchor_decode.py ] && python3 .peer/anchor_decode.py 2>&1 \
    | tee "$OUT/anchor_decode.log" | tail -12
  for npf in ${NPF_SWEEP:-}; do        # W4A16's L2 prefetch depth (kernels/w4a16, PDL)
    echo "--- OPTIMIZER_PREFETCH=$npf"
    OPTIMIZER_PREFETCH=$npf python3 bench/decode.py --work $W --schemes int4 --batches 1 \
      --prefill 0 --peers "" 2>&1 | grep "ours int4 B=1"
  done
  ;;
e2e)
  if [ -f .carry2/part2 ]; then
    cat /tmp/smollm2.part1 .carry2/part2 > /tmp/smollm2.gguf
    (cd /tmp && sha256sum smollm2.gguf | cut -d' ' -f1) | diff - <(cut -d' ' -f1 .carry2/sha256) \
      && export SMOLLM2_GGUF=/tmp/smollm2.gguf || echo "SmolLM2 GGUF checksum mismatch"
  fi
  python3 -m pytest -q -m "gpu and slow" tests/ -p no:cacheprovider 2>&1 \
    | tee "$OUT/smollm2.log" | tail -8
  if [ -n "${SMOLLM2_GGUF:-}" ]; then
    python3 -m optimizer.cli "$SMOLLM2_GGUF" --int4 --target cuda --device cuda \
      --calib-samples 16 --calib-seq-len 128 -o /tmp/s4 2>&1 | tail -2
    python3 -m optimizer.cli run /tmp/s4 --device cuda --prompt "The capital of France is" \
      --max-new-tokens 64 2>&1 | tail -4
  fi
  python3 bench/gemm.py 2>&1 | tee "$OUT/gemm.log" | tail -75
  ;;
*) echo "usage: bash bench/device_suite.sh kernels|e2e"; exit 2 ;;
esac
