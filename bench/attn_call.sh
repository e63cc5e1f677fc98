#!/usr/bin/env bash
# A short device call (twelfth session of issue 4, when little device time was left): the
# GPU tests of the CUDA decode attention and the add-norm default, then int4 decode tok/s of
# the Llama-3-8B-shaped artifact with the attention on the Triton kernel (default) and on the
# CUDA one (OPTIMIZER_ATTN_CUDA=1), alternating, then the per-layer profile of each where
# time is left. One tree; no peer.
#   python3 bench/prebuild_cuda.py; run(command="bash bench/attn_call.sh",
#   carry=[".carry-cuda"], timeout_s=...)
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} OPTIMIZER_CACHE=/tmp/optcache
mkdir -p "$OUT" /tmp/optcache /dev/shm/d8 /dev/shm/d32
[ -d .carry-cuda/optcache ] && cp -r .carry-cuda/optcache/. /tmp/optcache/
t0=$(date +%s)
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1 || tail -3 /tmp/pip.log
setsid nohup python3 bench/decode.py --build-only --schemes int4 --work /dev/shm/d32 \
  > /dev/shm/d32/build.log 2>&1 < /dev/null &
setsid nohup python3 bench/decode.py --build-only --layers 8 --schemes int4 --work /dev/shm/d8 \
  > /dev/shm/d8/build.log 2>&1 < /dev/null &
PYTHONSAFEPATH=1 timeout 150 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider \
  tests/test_kernels_fused_gpu.py::TestCudaDecode \
  tests/test_cuda_runtime_gpu.py::TestGPU::test_decode_cuda_attention \
  tests/test_cuda_runtime_gpu.py::TestGPU::test_decode_add_norm_split \
  tests/test_kernels_gpu.py::TestMma::test_add_norm_entry 2>&1 | tee "$OUT/tests.log" | tail -15
wait_built() { while [ ! -f $1/built ] && pgrep -f "work $1" > /dev/null; do sleep 2; done
               [ -f $1/built ] || { echo "build of $1 failed:"; tail -5 $1/build.log; }; }
wait_built /dev/shm/d32
for r in 1 2; do
  for v in X=0 OPTIMIZER_ATTN_CUDA=1; do
    echo "=== decode int4 $v run $r ($(( $(date +%s) - t0 )) s)"
    env $v timeout 90 python3 bench/decode.py --work /dev/shm/d32 --schemes int4 \
      --batches 1,2,4 --prefill 0 --peers "" 2>&1 | tail -1
  done
done
wait_built /dev/shm/d8
for v in X=0 OPTIMIZER_ATTN_CUDA=1; do
  echo "=== profile $v ($(( $(date +%s) - t0 )) s)"
  env $v timeout 60 python3 bench/decode_profile.py /dev/shm/d8/int4 2>&1 | grep -v -i warn \
    | sed -n '/^| # |/,$p'
done
echo "all done $(( $(date +%s) - t0 )) s"
