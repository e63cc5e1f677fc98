#!/usr/bin/env bash
# The device call prepared for the eighth session (branch exp/wk16), one call, ~400 s:
#   1. GPU tests of the W4A16 decode kernel (TestMma), including the new 16-warp configs;
#   2. bench/ablate_w4a16.py --ms 1,4 with main's picks (OPTIMIZER_W4A16_WK16=0): the
#      `bare` and `skeleton` variants, not yet run, split the gap between the kernel and
#      its reads into the x path and the epilogue; then with this branch's picks;
#   3. bench/w4a16_mma_sweep.py on o and down, with the 16-warp candidates;
#   4. bench/ab_trees.sh: this branch against main (profile, int4 decode A B A B) and this
#      branch with the 16-warp picks off (VARIANTS), i.e. o and down at 16 warps per CTA
#      and no split (twice the warps per SM of main's picks, no split-K sum).
#
# Before it, here (nvcc 13.0; ~6 min on 2 cores):
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b
#   git archive main | tar -x -C .carry-cuda/tree-b
#   python3 bench/prebuild_cuda.py
#   OPTIMIZER_CACHE=$PWD/.carry-cuda/optcache python3 bench/ablate_w4a16.py --build-only
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/../../.carry-cuda")
# then: run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
set -u
export GPU_TESTS="tests/test_kernels_gpu.py::TestMma" TEST_TIMEOUT=150 SWEEP=0 BUDGET_S=0
export VARIANTS="OPTIMIZER_W4A16_WK16=0"
export EXTRA='echo "--- ablation, main picks"; OPTIMIZER_W4A16_WK16=0 timeout 90 python3 bench/ablate_w4a16.py --ms 1,4 2>&1 | grep -v -i warn
echo "--- ablation, 16-warp picks"; timeout 60 python3 bench/ablate_w4a16.py --ms 1,4 --shapes "o 7B,down 8B" 2>&1 | grep -v -i warn
echo "--- sweep"; timeout 90 python3 bench/w4a16_mma_sweep.py --ms 1,4 --shapes "o 7B,down 8B" 2>&1 | grep -v -i warn'
bash bench/ab_trees.sh .carry-cuda/tree-b
