"""When the Triton-interpreter test classes (``TestInterpreter`` in the *_gpu.py files) run:
only without a GPU (the GPU classes run there), with triton installed and
``TRITON_INTERPRET=1``, and where the interpreter handles runtime loop bounds (Triton 3.6's
does not with numpy >= 2.3: use numpy 2.2, e.g. ``PYTHONPATH=/tmp/tri`` as in those files).

    pytestmark = INTERPRETER_MARKS      # in a TestInterpreter class
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_problem() -> str | None:
    """Why the interpreter classes cannot run here, or None."""
    if not (HAS_TRITON and INTERPRET):
        return "needs triton and TRITON_INTERPRET=1"
    import triton
    import triton.language as tl

    @triton.jit
    def _loop(o_ptr, n):
        acc = 0
        for i in range(0, n):
            acc += i
        tl.store(o_ptr, acc)

    try:
        _loop[(1,)](torch.zeros(1, dtype=torch.int32), 4)
    except Exception as e:
        return f"the Triton interpreter fails on runtime loop bounds here ({e!r:.80})"
    return None


_PROBLEM = None if torch.cuda.is_available() else interpreter_problem()
INTERPRETER_MARKS = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="GPU: TestGPU runs"),
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
]
