"""The named pipelines behind the CLI's flags, as explicit lists of pass specs.

Phases, and why in this order:
1. cleanup (dce): passes after it see only live nodes and weights;
2. quantization (gptq / quantize-rtn / awq / smoothquant): needs the float weights and, for
   the calibrated passes, the whole float graph to run calibration data through;
3. storage (cast-weights): last, so quantization works from the source precision; it only
   changes the float weights that remain (norms, embeddings, lm_head);
4. fusion (`CUDA_FUSION`, for fused-kernel backends): after all of the above (see below);
5. layout (`cuda-layout`, ``--target cuda``): last, so it lays out the final (fused)
   projections' tensors in the GPU kernels' layout and the artifact loads without repacking.

``--target cuda`` also stores the float weights as bfloat16 unless ``--dtype`` says
otherwise, and makes ``--int4`` GPTQ keep static groups (act-order still decides the order
in which columns are quantized, but every group is k // 128): one column-to-group map shared
by q/k/v and by gate/up lets fusion stack them and the kernel needs no input permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.errors import InvalidInput
from optimizer.pass_api import parse_pass_spec

CLEANUP = ["dce"]
INT4 = "gptq:bits=4,group_size=128,act_order=true,mse=2.4"   # GPTQ int4 g128, desc_act,
#   group ranges by least sum |Q(w) - w|^2.4 (measured on SmolLM2: ppl +13.5% -> +11.0%)
INT4_CUDA = INT4 + ",static_groups=true"              # the same, groups k // 128 (fusable)
INT8 = "quantize-rtn:bits=8,group_size=0,sym=true"    # weight-only int8, per channel
TARGETS = ("reference", "cuda")
CALIBRATED = ("gptq", "awq", "smoothquant")
QUANTIZING = ("quantize-rtn",) + CALIBRATED

# 4. fusion, for backends with fused kernels (CUDA); not wired into the CLI yet. After
#    quantization and cast-weights: the quantizing and smoothing passes look for single
#    `linear` nodes and for rms_norm -> linear sites (scale_fold), which fusion would hide,
#    and fusion stacks whatever tensors those phases produced (qlinear, qlinear_w8a8, cast
#    floats). Within the phase: fuse-qkv before fuse-rope-qk, which matches the split
#    fuse-qkv emits; fuse-gate-up and fuse-add-rmsnorm touch disjoint nodes (mlp; norms),
#    add-rmsnorm last so every rms_norm it sees is final.
CUDA_FUSION = ["fuse-qkv", "fuse-rope-qk", "fuse-gate-up", "fuse-add-rmsnorm"]
CUDA_LAYOUT = ["cuda-layout"]


@dataclass(frozen=True)
class BuildRequest:
    passes: tuple[str, ...] = ()          # explicit specs (';'-separated allowed)
    int4: bool = False
    int8: bool = False
    dtype: str | None = None
    calib: str | None = None
    calib_samples: int | None = None
    calib_seq_len: int | None = None
    quantize_lm_head: bool = False
    device: str | None = None             # where gptq's math runs ("cuda")
    target: str = "reference"             # "cuda": fusion + GPU kernel layout, bf16


def _with_options(spec: str, extra: dict[str, object]) -> str:
    name, opts = parse_pass_spec(spec)
    merged = {**{k: v for k, v in extra.items() if v is not None}, **opts}   # spec wins
    body = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in merged.items())
    return f"{name}:{body}" if body else name


def build_pipeline(req: BuildRequest) -> list[str]:
    """The pass specs for a build request (see the module docstring for the phases)."""
    explicit = [s.strip() for group in req.passes for s in group.split(";") if s.strip()]
    if sum([bool(explicit), req.int4, req.int8]) > 1:
        raise InvalidInput(None, "--int4, --int8 and --passes choose the pipeline: give one")
    if req.target not in TARGETS:
        raise InvalidInput(None, f"unknown target '{req.target}' ({', '.join(TARGETS)})")
    cuda = req.target == "cuda"
    if explicit:
        specs = explicit
    else:
        int4 = INT4_CUDA if cuda else INT4
        specs = CLEANUP + ([int4] if req.int4 else []) + ([INT8] if req.int8 else [])
    calib = {"calib": req.calib, "calib_samples": req.calib_samples,
             "calib_seq_len": req.calib_seq_len}
    out = []
    for spec in specs:
        name = parse_pass_spec(spec)[0]
        if name in CALIBRATED:
            spec = _with_options(spec, calib)
        if name in QUANTIZING and req.quantize_lm_head:
            spec = _with_options(spec, {"quantize_lm_head": True})
        if name == "gptq" and req.device:
            spec = _with_options(spec, {"device": req.device})
        out.append(spec)
    if any(v is not None for v in calib.values()) and not any(
            parse_pass_spec(s)[0] in CALIBRATED for s in out):
        raise InvalidInput(None, "--calib options need a calibrated pass (gptq, awq, "
                                 "smoothquant; --int4 uses gptq)")
    dtype = req.dtype or ("bfloat16" if cuda else None)
    if dtype:
        out.append(f"cast-weights:dtype={dtype}")
    if cuda:
        out += CUDA_FUSION + CUDA_LAYOUT
    return out
