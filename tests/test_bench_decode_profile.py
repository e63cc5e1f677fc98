"""bench/decode_profile.py's per-layer table on a synthetic kernel trace (CPU): the layer's
period found from the kernel names, and each position's marginal time equal to the time
built into the trace."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("decode_profile",
                                                  ROOT / "bench" / "decode_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LAYER = [("norm", 1.5), ("gemm", 6.0), ("rope", 1.25), ("attn", 5.5), ("gemm", 4.75),
         ("norm", 1.5), ("gemm", 20.5), ("silu", 1.0), ("gemm", 15.0)]


def trace(layers: int, steps: int, gap: float) -> list[tuple[float, float, str]]:
    """Kernels back to back with `gap` µs idle before each: per step an embedding, the
    layers, a final norm, the lm_head and the greedy kernel."""
    seq = [("emb", 2.0)] + LAYER * layers + [("norm", 1.0), ("gemv", 230.0), ("greedy", 3.5)]
    ev, t = [], 0.0
    for _ in range(steps):
        for name, dur in seq:
            t += gap
            ev.append((t, t + dur, name))
            t += dur
    return ev


def test_layer_period() -> None:
    mod = _module()
    names = [n for _, _, n in trace(8, 1, 0.0)]
    assert mod.layer_period(names) == len(LAYER)
    assert mod.layer_period(["a", "b", "c", "d", "e", "f", "g", "h"]) is None


def test_layer_table_marginal_times() -> None:
    """With a 0.25 µs gap before every kernel, each position's marginal time is its
    duration plus the gap; the rows follow the layer's order from some kernel on."""
    mod = _module()
    steps, gap = 3, 0.25
    ev = trace(8, steps, gap)
    marg, prev = [], ev[0][0]
    for start, end, _ in ev:
        marg.append(max(0.0, end - prev))
        prev = max(prev, end)
    rows = [ln for ln in mod.layer_table(ev, marg, steps) if ln.startswith("| ") and
            not ln.startswith("| #")]
    body = [r.split("|")[1:-1] for r in rows[:-1]]
    got = [(c[1].strip(), float(c[2]), float(c[3])) for c in body]
    assert len(got) == len(LAYER)
    shift = next(i for i in range(len(LAYER))
                 if [n for n, _, _ in got] == [n for n, _ in LAYER[i:] + LAYER[:i]])
    want = LAYER[shift:] + LAYER[:shift]
    for (name, m, own), (wname, dur) in zip(got, want):
        assert name == wname
        assert abs(m - (dur + gap)) < 0.011 and abs(own - dur) < 0.011
    total = float(rows[-1].split("|")[3])
    assert abs(total - sum(d + gap for _, d in LAYER)) < 0.011
