#!/usr/bin/env bash
# The device call prepared for the next session of issue 4 (written 2026-12-07, eleventh
# session, when the device budget ran out before these could run). It measures, in the
# decode step of the Llama-3-8B-shaped int4 artifact:
#   - tree A (this tree) against tree B (a79cfd1), A B A B: A's only default change is the
#     gate-up pick, MmaConfig(2, 2, 1, False), which the eleventh session measured as a
#     variant (OPTIMIZER_W4A16_PICK=28672:2/2/1/0: 464.5 against 455.3 tok/s at batch 1 on
#     an H100) but not as the default after fixing its split-K;
#   - OPTIMIZER_FUSE_ADD_NORM=1: the residual add + RMSNorm split over the projections around
#     it, with the producer's residual and weight loads issued together (its first version
#     tied at batch 1; the producers were +2 us each from element-by-element loads);
# and runs the GPU tests of the changed code first (TestMma: test_add_norm* and the picks;
# test_cuda_runtime_gpu.py: test_decode_add_norm_split against the CPU reference). The
# peer runs last where time is left. About 480 s.
#
# Before the call, here (the libraries take ~2.5 minutes each to build):
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b .carry-cuda/peer
#   git archive a79cfd1 | tar -x -C .carry-cuda/tree-b
#   cp ../shared/peer/anchor_decode.py .carry-cuda/peer/
#   python3 bench/prebuild_cuda.py
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/..")
# then: run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
# If the split wins, make it the default in runtime/cuda_ops.group_nodes (and README).
set -o pipefail
export GPU_TESTS="tests/test_kernels_gpu.py::TestMma tests/test_cuda_runtime_gpu.py" SWEEP=0
export VARIANTS="OPTIMIZER_FUSE_ADD_NORM=1" BUDGET_S=${BUDGET_S:-560}
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
