#!/usr/bin/env bash
# exp/attn, call 2 of the ninth session: decode attention configs in the decode step.
set -u
export GPU_TESTS="tests/test_kernels_fused_gpu.py" TEST_TIMEOUT=150 SWEEP=0 BUDGET_S=0
export BATCHES=1,4
export VARIANTS="OPTIMIZER_ATTN_CHUNK=256 OPTIMIZER_ATTN_CHUNK=256,OPTIMIZER_ATTN_BLOCK_N=128 OPTIMIZER_ATTN_CHUNK=256,OPTIMIZER_ATTN_BLOCK_N=256,OPTIMIZER_ATTN_WARPS=8 OPTIMIZER_ATTN_CHUNK=256,OPTIMIZER_ATTN_STAGES=3 OPTIMIZER_ATTN_CHUNK=128"
export EXTRA="timeout 80 python3 bench/kernels_fused.py --sweep --batches 1 --contexts 160,4096"
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
