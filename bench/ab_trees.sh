#!/usr/bin/env bash
# Decode A/B of two source trees in one device call: this tree (A) against another (B, e.g.
# main before a change), on the same GPU, artifacts and minutes, runs alternating A B A B so
# that drift between runs shows as A-A and B-B spread.
#
#   git archive main | tar -x -C .carry-cuda/tree-b        # B: any commit's files
#   python3 bench/prebuild_cuda.py                        # A's libraries, .carry-cuda/optcache
#   (cd .carry-cuda/tree-b && python3 bench/prebuild_cuda.py --out "$PWD/../../.carry-cuda")
#   run(command="bash bench/ab_trees.sh .carry-cuda/tree-b", carry=[".carry-cuda"])
#
# Steps: the GPU tests of A (GPU_TESTS, default all of tests/ marked gpu); the W4A16 decode
# kernel sweep at M = 1, 4 under A; decode_profile of an 8-layer int4 artifact under A and B
# (per-layer table); decode tok/s of the Llama-3-8B-shaped int4 artifact at B = 1, 2, 4
# (SCHEMES adds others, e.g. "int4 bf16"), A B A B; VARIANTS (e.g. "OPTIMIZER_X=0 Y=0,Z=1"):
# profile and int4 decode of tree A once per setting (commas join switches set together);
# then EXTRA (a command line, run under A); the peer (anchor_decode.py) last, where
# .carry-cuda/peer/anchor_decode.py was carried and BUDGET_S (570) leaves it 150 s. SWEEP=0
# skips the sweep. The artifacts are built by A's code: the trees must agree on the artifact
# format. Switching trees is `pip install -e`.
set -u
B=$(realpath "${1:?usage: bash bench/ab_trees.sh OTHER_TREE}")
A=$PWD
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} OPTIMIZER_CACHE=/tmp/optcache
mkdir -p "$OUT" /tmp/optcache
[ -d .carry-cuda/optcache ] && cp -r .carry-cuda/optcache/. /tmp/optcache/
use() { python3 -m pip install -q --no-deps --no-build-isolation -e "$1" > /tmp/pip.log 2>&1 \
          || tail -3 /tmp/pip.log; }
t0=$(date +%s)
use "$A"
mkdir -p /dev/shm/d8 /dev/shm/d32
setsid nohup python3 bench/decode.py --build-only --layers 8 --schemes int4 --work /dev/shm/d8 \
  > /dev/shm/d8/build.log 2>&1 < /dev/null &
setsid nohup python3 bench/decode.py --build-only --schemes "$(echo ${SCHEMES:-int4} | tr ' ' ,)" \
  --work /dev/shm/d32 > /dev/shm/d32/build.log 2>&1 < /dev/null &
PYTHONSAFEPATH=1 timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -n 8 ${GPU_TESTS:-tests/} \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -4
[ "${SWEEP:-1}" = 1 ] && timeout 60 python3 bench/w4a16_mma_sweep.py --ms 1,4 2>&1 \
  | tee "$OUT/sweep.log" | tail -9
wait_built() { while [ ! -f $1/built ] && pgrep -f "work $1" > /dev/null; do sleep 2; done
               [ -f $1/built ] || { echo "build of $1 failed:"; tail -5 $1/build.log; }; }
wait_built /dev/shm/d8
tree() { [ $1 = A ] && echo "$A" || echo "$B"; }   # each tree runs its own bench scripts
# profile TREE [ENV=VALUE]: the per-layer table; decode TREE SCHEME [ENV=VALUE]: one tok/s row
profile() { (cd "$1" && env ${2:-X=} timeout 60 python3 bench/decode_profile.py \
               /dev/shm/d8/int4 2>&1) | grep -v -i warn | sed -n '/^| # |/,$p'; }
decode() { (cd "$1" && env ${3:-X=} timeout 90 python3 bench/decode.py --work /dev/shm/d32 \
              --schemes $2 --batches ${BATCHES:-1,2,4} --prefill 0 --peers "" 2>&1 | tail -1); }
for t in A B; do
  use "$(tree $t)"
  echo "=== profile $t ($(( $(date +%s) - t0 )) s)"
  profile "$(tree $t)"
done
wait_built /dev/shm/d32
for r in 1 2; do
  for t in A B; do
    use "$(tree $t)"
    for s in ${SCHEMES:-int4}; do
      echo "=== decode $s $t run $r"
      decode "$(tree $t)" $s
    done
  done
done
use "$A"
for v in ${VARIANTS:-}; do              # tree A with switches set, e.g. X=0 or X=0,Y=1
  echo "=== variant $v"
  profile "$A" "${v//,/ }"
  decode "$A" int4 "${v//,/ }"
done
if [ -n "${EXTRA:-}" ]; then                         # more commands, under tree A
  echo "=== EXTRA ($(( $(date +%s) - t0 )) s): $EXTRA"; bash -c "$EXTRA"
fi
left=$(( ${BUDGET_S:-570} - ($(date +%s) - t0) ))       # the peer only where time is left
if [ -f .carry-cuda/peer/anchor_decode.py ] && [ $left -gt 150 ]; then
  timeout $left python3 .carry-cuda/peer/anchor_decode.py 2>&1 | tee "$OUT/anchor_decode.log" \
    | tail -8
else echo "peer not run ($left s left)"; fi
echo "all done $(( $(date +%s) - t0 )) s"
