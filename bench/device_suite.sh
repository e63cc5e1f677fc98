#!/usr/bin/env bash
# The GPU checks and benchmarks, batched for a lent GPU machine (bench/README.md).
#
#   bash bench/device_suite.sh kernels   # GPU tests, kernel benchmarks; starts the 8B builds
#   bash bench/device_suite.sh e2e       # SmolLM2 on the GPU, decode benchmark, peer anchor
#
# Run from the repo root on the GPU machine; logs and tables go to $OUT (default /tmp/out).
# `kernels` starts bench/decode.py --build-only in its own session (setsid) so the 8B
# checkpoint and its artifacts are built in /dev/shm while the GPU tests run; `e2e`, run
# next on the same machine, waits for them. The SmolLM2 GGUF travels in two parts
# (.carry1/part1 with `kernels`, .carry2/part2 + sha256 with `e2e`).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1 \
  || { echo "pip install -e . failed"; tail -5 /tmp/pip.log; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
W=/dev/shm/decode
case "${1:-}" in
kernels)
  mkdir -p $W
  [ -f .carry1/part1 ] && cp .carry1/part1 /tmp/smollm2.part1
  setsid nohup python3 bench/decode.py --build-only --work $W > $W/build.log 2>&1 < /dev/null &
  python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" \
    | tail -25
  python3 bench/kernels_fused.py 2>&1 | tee "$OUT/kernels_fused.md" | tail -30
  python3 bench/gemm_int8.py --quick 2>&1 | tee "$OUT/gemm_int8.md" | tail -40
  python3 bench/gemm.py 2>&1 | tee "$OUT/gemm.log" | tail -75
  echo "--- 8B builds so far:"; tail -4 $W/build.log
  ;;
e2e)
  if [ -f .carry2/part2 ]; then
    cat /tmp/smollm2.part1 .carry2/part2 > /tmp/smollm2.gguf
    (cd /tmp && sha256sum smollm2.gguf | cut -d' ' -f1) | diff - <(cut -d' ' -f1 .carry2/sha256) \
      && export SMOLLM2_GGUF=/tmp/smollm2.gguf || echo "SmolLM2 GGUF checksum mismatch"
  fi
  python3 -m pytest -q -m "gpu and slow" tests/ -p no:cacheprovider 2>&1 \
    | tee "$OUT/smollm2.log" | tail -8
  while [ ! -f $W/built ] && pgrep -f "decode.py --build-only" > /dev/null; do sleep 5; done
  tail -4 $W/build.log
  python3 bench/decode.py --work $W --out "$OUT/decode.md" 2>&1 | tee "$OUT/decode.log" \
    | tail -30
  [ -f .peer/anchor_decode.py ] && python3 .peer/anchor_decode.py 2>&1 \
    | tee "$OUT/anchor_decode.log" | tail -12
  ;;
*) echo "usage: bash bench/device_suite.sh kernels|e2e"; exit 2 ;;
esac
