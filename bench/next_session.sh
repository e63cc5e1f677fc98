#!/usr/bin/env bash
# The device call of issue 4's twelfth session (2026-12-07). It measures, in the decode step
# of the Llama-3-8B-shaped int4 artifact:
#   - tree A (this tree) against tree B (309eea8), A B A B: A's default change is the residual
#     add + RMSNorm split over the projections around it at batch 1 (measured as the variant
#     OPTIMIZER_FUSE_ADD_NORM=1 earlier this session: 471.5 against 464 tok/s at batch 1, a
#     tie at 2, slower at 4, so now on at M = 1 only);
#   - OPTIMIZER_ATTN_CUDA=1: the decode attention on the new CUDA kernel
#     (kernels/attention/decode_attn.cu: a cluster of up to 8 CTAs per (sequence, kv head),
#     the partial softmax sums combined in distributed shared memory, the k/v rows
#     prefetched into L2 before the PDL wait);
# after the GPU tests of the new code, and the peer last.
#
# Before the call, here:
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b .carry-cuda/peer
#   git archive 309eea8 | tar -x -C .carry-cuda/tree-b
#   cp ../shared/peer/anchor_decode.py .carry-cuda/peer/
#   python3 bench/prebuild_cuda.py          # tree B's libraries are the same
# then: run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
set -o pipefail
export GPU_TESTS=${GPU_TESTS:-"tests/test_kernels_fused_gpu.py::TestCudaDecode
  tests/test_cuda_runtime_gpu.py::TestGPU::test_decode_cuda_attention
  tests/test_cuda_runtime_gpu.py::TestGPU::test_decode_add_norm_split
  tests/test_kernels_gpu.py::TestMma::test_add_norm_entry"} SWEEP=0
export VARIANTS=${VARIANTS:-"OPTIMIZER_ATTN_CUDA=1"} BUDGET_S=${BUDGET_S:-560}
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
