#!/usr/bin/env bash
# The device call prepared for the next session of issue 4 (written 2026-12-07, when no GPU
# was lent, so none of it has run on a GPU yet). It measures, in the decode step of the
# Llama-3-8B-shaped int4 artifact, what that session landed switched off:
#   - OPTIMIZER_FUSE_QKV_ROPE=1: the qkv projection's RoPE and KV-cache write in the W4A16
#     decode kernel's epilogue (the _rope_cache_kernel, ~1.3 us a layer, goes);
#   - OPTIMIZER_W4A16_PICK=28672:2/2/1/0: gate-up at 2 warps per CTA (896 CTAs of 64 threads
#     at ~127 registers fit 132 SMs in one wave, where 4 warps take 1.70 waves);
#   - the fusion with o at 8 warps (o's weight loads start under PDL beside attention).
# and runs the GPU tests of the new code first (TestMma: test_qkv_rope*, the 2-warp configs;
# test_cuda_runtime_gpu.py: test_decode_qkv_rope_epilogue against the CPU reference).
# Tree B is main before that session (93682a9): the kernels it runs by default are
# SASS-identical, so A and B should tie. About 560 s.
#
# Before the call, here (the libraries take ~2-3 minutes each to build):
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b .carry-cuda/peer
#   git archive 93682a9 | tar -x -C .carry-cuda/tree-b
#   cp ../shared/peer/anchor_decode.py .carry-cuda/peer/
#   python3 bench/prebuild_cuda.py
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/..")
# then: run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
# If the fusion wins, make it the default in runtime/cuda_ops.group_nodes (and README).
set -o pipefail
export GPU_TESTS="tests/test_kernels_gpu.py::TestMma tests/test_cuda_runtime_gpu.py" SWEEP=0
export VARIANTS="OPTIMIZER_FUSE_QKV_ROPE=1 OPTIMIZER_W4A16_PICK=28672:2/2/1/0 \
OPTIMIZER_FUSE_QKV_ROPE=1,OPTIMIZER_W4A16_WK16=0" BUDGET_S=${BUDGET_S:-560}
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
