#!/usr/bin/env bash
# attn-tile, call 4 of the ninth session: the GPU tests of the final attention tile policy
# and one int4 decode A/B against main.
set -u
export GPU_TESTS="tests/test_kernels_fused_gpu.py tests/test_cuda_runtime_gpu.py"
export TEST_TIMEOUT=170 SWEEP=0 BUDGET_S=0 BATCHES=1,2,4
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
