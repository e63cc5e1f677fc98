#!/usr/bin/env bash
# The device call prepared for issue 4's next session (written 2026-12-08, end of the twelfth
# session). The twelfth session measured the current defaults at 470.8 / 472.0 tok/s int4
# decode at batch 1 on an H100 (74% of the limit) but had no device time left to run the
# peer beside them or the whole GPU test suite. This call:
#   - runs the GPU tests of the engine and the kernels that changed (TestMma, the runtime,
#     the fused kernels with the CUDA decode attention), 240 s at most;
#   - tree A (this tree) against tree B (309eea8: before the add-norm split went on at batch 1
#     and before the CUDA decode attention), A B A B, int4 decode at batch 1 / 2 / 4;
#   - VARIANTS: the split up to batch 2 (a tie at 2 as a variant in the twelfth session);
#   - the peer (../shared/peer/anchor_decode.py) last, in the same call.
#
# Before the call, here (the W4A16 library takes ~1.5-2.5 minutes to build per tree):
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b .carry-cuda/peer
#   git archive 309eea8 | tar -x -C .carry-cuda/tree-b
#   cp ../shared/peer/anchor_decode.py .carry-cuda/peer/
#   python3 bench/prebuild_cuda.py
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/..")
# then: run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
set -o pipefail
export GPU_TESTS=${GPU_TESTS:-"tests/test_kernels_gpu.py::TestMma tests/test_cuda_runtime_gpu.py
  tests/test_kernels_fused_gpu.py"} SWEEP=0
export VARIANTS=${VARIANTS:-"OPTIMIZER_FUSE_ADD_NORM_MAX_M=2"} BUDGET_S=${BUDGET_S:-560}
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
