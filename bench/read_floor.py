"""How fast one projection's int4 weights can be read at all: the floor under the CUDA W4A16
decode kernel at M = 1, isolated and in place (the read kernels are bench/read_floor.cu).

    python3 bench/read_floor.py [--shapes "qkv 8B,o 7B,gateup 8B,down 8B"] [--m 1]
    python3 bench/read_floor.py --in-place ARTIFACT [--batch 1]

Isolated, per shape (CUDA-graph replay over rotating weight copies, as bench/gemm.py), in µs
and % of the measured copy bandwidth (bytes: the weights and scales):
- ``ours``: the decode kernel with the config `pick_config` gives it;
- ``pattern``: that config's load schedule alone (no MMA, unpacking, x or split-K sum), at
  its own occupancy and capped at the decode kernel's (16 warps per SM: its 127 registers);
- ``linear``: the same bytes read flat, U loads in flight per thread, over grid sizes; the
  best of these is the floor for that many bytes.
Before timing, each read kernel's XOR of every word it read is checked against the XOR of
the weight words computed on the CPU: a read kernel that skipped or repeated words fails.

In place: `decode_profile`'s per-layer table of the artifact, as it runs, and again with
every W4A16 projection of M <= 4 replaced by the pattern read of its own weights (y = 0),
in one process: what a layer would take if the projections cost only their reads. This
is a measurement stand-in inside the benchmark only; nothing outside bench/ uses it.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

WARPS_PER_SM = 16            # the decode kernel's: 127 registers a thread (ncu, 5th session)
SMEM_PER_SM = 233472         # bytes of shared memory per SM on sm_90 (228 KiB)


def library() -> ctypes.CDLL:
    try:
        from optimizer.kernels import cuda_build
    except ImportError:
        from kernels import cuda_build
    lib = cuda_build.load(str(BENCH / "read_floor.cu"),
                          "sm_%d%d" % torch.cuda.get_device_capability())
    lib.read_pattern_launch.restype = lib.read_linear_launch.restype = ctypes.c_int
    lib.read_pattern_launch.argtypes = ([ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
                                        + [ctypes.c_int] * 5 + [ctypes.c_size_t, ctypes.c_void_p]
                                        + [ctypes.c_int] * 2)
    lib.read_linear_launch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int, ctypes.c_int]
    lib.read_floor_error_string.restype = ctypes.c_char_p
    lib.read_floor_error_string.argtypes = [ctypes.c_int]
    return lib


def cap_smem(ctas_per_sm: int) -> int:
    """Dynamic shared memory per CTA that lets at most ``ctas_per_sm`` CTAs share an SM
    (each CTA also takes 1 KiB of the SM's shared memory for itself)."""
    return -(-(SMEM_PER_SM // (ctas_per_sm + 1)) // 128) * 128


def xor_words(t: torch.Tensor) -> int:
    """XOR of all 32-bit words of a tensor (on the CPU)."""
    a = t.detach().contiguous().cpu().numpy().view(np.uint32)
    return int(np.bitwise_xor.reduce(a.ravel()))


class Reader:
    """Launches the read kernels on a prepared W4A16 layer (qweight [KP/8, N] int32,
    sz [G, N] int32)."""

    def __init__(self) -> None:
        from optimizer.kernels import pdl
        self.lib = library()
        self.pdl = pdl
        self.sink = torch.zeros(1, dtype=torch.int32, device="cuda")

    def _ok(self, err: int, what: str) -> None:
        if err:
            raise RuntimeError(f"{what}: launch failed: "
                               f"{self.lib.read_floor_error_string(err).decode()}")

    def pattern(self, prepared: dict, y: torch.Tensor, cfg, split: int, smem: int = 0,
                check: bool = False) -> None:
        qweight, sz = prepared["qweight"], prepared["sz"]
        kp, n = qweight.shape[0] * 8, qweight.shape[1]
        gs = kp // sz.shape[0]
        szn = 4 if gs == 32 else 2 if gs == 64 else 1
        if gs > 128:
            raise ValueError(f"read_floor: groups of {gs} rows are not modelled (32, 64, 128)")
        stream = torch.cuda.current_stream().cuda_stream
        self._ok(self.lib.read_pattern_launch(
            cfg.warps, cfg.inflight, szn, qweight.data_ptr(), sz.data_ptr(), y.data_ptr(),
            self.sink.data_ptr(), y.shape[0], n, kp, split, y.stride(0), smem, stream,
            int(self.pdl.enabled(y)), int(check)), "read_pattern")

    def linear(self, flat: torch.Tensor, u: int, ctas: int, check: bool = False) -> None:
        stream = torch.cuda.current_stream().cuda_stream
        self._ok(self.lib.read_linear_launch(u, ctas, flat.data_ptr(), flat.numel() * 4 // 16,
                                             self.sink.data_ptr(), stream,
                                             int(self.pdl.enabled(flat)), int(check)),
                 "read_linear")

    def checked(self, launch, expect: int) -> bool:
        self.sink.zero_()
        launch()
        torch.cuda.synchronize()
        return (int(self.sink.item()) & 0xFFFFFFFF) == expect


def isolated(shapes: list[str], m: int) -> None:
    import gemm                                      # bench/gemm.py
    from optimizer.kernels.device_info import sm_count
    from optimizer.kernels.w4a16 import cuda_decode as cd
    from optimizer.kernels.w4a16 import triton_gemm as tg

    bw = gemm.copy_bandwidth()
    sms = sm_count(torch.device("cuda"))
    rd = Reader()
    print(f"{torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s; M = {m}")
    print("| shape | MB read | ours µs (%) | pattern µs (%) | pattern at ours' occupancy "
          "µs (%) | best linear µs (%) | linear config |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in shapes:
        k, n = gemm.SHAPES[name]
        layer = gemm.Layer(k, n)
        nbytes = layer.bytes["ours"]
        pct = lambda us: f"{us:.2f} ({100 * nbytes / (us * 1e-6) / bw:.0f}%)"  # noqa: E731
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        y = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        cfg = cd.pick_config(m, n, k, sms)
        split = cfg.split_k or cd.choose_split(m, k, cfg)
        p0 = layer.ours[0]
        want = xor_words(p0["qweight"])
        capped = cap_smem(WARPS_PER_SM // cfg.warps)
        for smem in (0, capped):
            if not rd.checked(lambda: rd.pattern(p0, y, cfg, split, smem, True), want):
                raise SystemExit(f"{name}: the pattern read did not read every weight word once")
        ours = gemm.graph_timed(lambda p: tg.w4a16_linear(x, p, config=cfg), layer.ours, 10.0)
        pat = gemm.graph_timed(lambda p: rd.pattern(p, y, cfg, split), layer.ours, 10.0)
        pat_cap = gemm.graph_timed(lambda p: rd.pattern(p, y, cfg, split, capped),
                                   layer.ours, 10.0)
        best = None
        flats = [p["qweight"].view(-1) for p in layer.ours]
        for u in (2, 4, 8):
            for per_sm in (1, 2, 4, 8):
                ctas = per_sm * sms
                if not rd.checked(lambda: rd.linear(flats[0], u, ctas, True), want):
                    raise SystemExit(f"{name}: the linear read (u={u}, {ctas} CTAs) did not "
                                     f"read every word once")
                us = gemm.graph_timed(lambda f, u=u, c=ctas: rd.linear(f, u, c), flats, 10.0)
                if best is None or us < best[0]:
                    best = (us, f"u{u}, {per_sm} CTAs/SM of 256 threads (weights only)")
        print(f"| {name} | {nbytes / 1e6:.1f} | {pct(ours)} | {pct(pat)} | {pct(pat_cap)} | "
              f"{pct(best[0])} | {best[1]} |", flush=True)
        del layer


def in_place(path: Path, batch: int) -> None:
    import decode_profile                            # bench/decode_profile.py
    from optimizer.kernels.device_info import sm_count
    from optimizer.kernels.w4a16 import cuda_decode as cd
    from optimizer.kernels.w4a16 import triton_gemm as tg

    print(decode_profile.profile(path, batch, 160, 20))
    rd = Reader()
    real = tg.w4a16_linear

    def read_only(x, prepared, bias=None, **kw):
        m = x.shape[0] if x.dim() == 2 else 0
        if not (0 < m <= 4) or "perm" in prepared or kw:
            return real(x, prepared, bias, **kw)
        kp, n = prepared["qweight"].shape[0] * 8, prepared["qweight"].shape[1]
        cfg = cd.pick_config(m, n, kp, sm_count(x.device))
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        rd.pattern(prepared, y, cfg, cfg.split_k or cd.choose_split(m, kp, cfg))
        return y

    tg.w4a16_linear = read_only
    try:
        print("\nThe same, each W4A16 projection replaced by the read of its weights:\n")
        print(decode_profile.profile(path, batch, 160, 20))
    finally:
        tg.w4a16_linear = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="qkv 8B,o 7B,gateup 8B,down 8B")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--in-place", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.in_place:
        in_place(a.in_place, a.batch)
    else:
        isolated([s.strip() for s in a.shapes.split(",")], a.m)


if __name__ == "__main__":
    main()
