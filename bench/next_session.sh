#!/usr/bin/env bash
# The device call prepared for the next session (branch exp/gusilu; compiled for sm_90 and
# CPU-tested here, not yet run on a GPU), ~350 s: the gate-up projection's SiLU-mul in the
# W4A16 decode kernel's epilogue (engine node w4a16_silu; one kernel fewer per layer).
#   1. GPU tests: TestMma (with test_gate_up_silu, test_gate_up_silu_entry) and the CUDA
#      runtime against the CPU reference (tests/test_cuda_runtime_gpu.py);
#   2. bench/ab_trees.sh: this branch (A) against main (B), profile and int4 decode
#      A B A B, and A with the fusion off (OPTIMIZER_FUSE_GU_SILU=0);
# Everything it prints is also in $OUT/ab.log (only the last 12,000 characters of a
# call's output come back).
#
# Before it, here (nvcc 13.0; ~3 min on 2 cores):
#   rm -rf .carry-cuda && mkdir -p .carry-cuda/tree-b
#   git archive main | tar -x -C .carry-cuda/tree-b
#   python3 bench/prebuild_cuda.py
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/../../.carry-cuda")
# then, with this branch checked out in the working tree the run tool sends:
# run(command="bash bench/next_session.sh", carry=[".carry-cuda"], timeout_s=600).
set -u
export GPU_TESTS="tests/test_kernels_gpu.py::TestMma tests/test_cuda_runtime_gpu.py"
export TEST_TIMEOUT=240 SWEEP=0 BUDGET_S=0 VARIANTS="OPTIMIZER_FUSE_GU_SILU=0"
mkdir -p "${OUT:-/tmp/out}"
bash bench/ab_trees.sh .carry-cuda/tree-b 2>&1 | tee "${OUT:-/tmp/out}/ab.log"
