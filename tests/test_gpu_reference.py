"""GPU runs of the reference paths (skipped without a CUDA GPU): the runtime on
``device="cuda"`` against the CPU reference, and GPTQ's math on the GPU against the CPU."""

from __future__ import annotations

import pytest
import torch

import optimizer
from optimizer.passes.gptq_solver import gptq
from tiny_models import save_tiny

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("passes", [["dce"], ["quantize-rtn:bits=4,group_size=16"],
                                    ["quantize-rtn:bits=8,group_size=0,sym=true"]])
def test_cuda_runtime_matches_cpu_reference(tmp_path, passes) -> None:
    save_tiny("qwen2", tmp_path / "src", intermediate_size=72)
    graph = optimizer.PassManager(passes).run(optimizer.import_model(tmp_path / "src"))
    out = optimizer.save(graph, tmp_path / "art")
    ids = torch.randint(0, 96, (19,), generator=torch.Generator().manual_seed(0))
    cpu = optimizer.runtime.load(out).logits(ids)
    gpu = optimizer.runtime.load(out, device="cuda").logits(ids).cpu()
    assert (gpu - cpu).abs().max().item() < 1e-3 * max(1.0, cpu.abs().max().item())


def test_gptq_solver_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g)
    x = torch.randn(1024, 32, generator=g) @ torch.randn(32, 256, generator=g)
    h = 2 * x.T @ x / 1024
    cpu = gptq(w, h, 4, 64, False, act_order=True)
    gpu = gptq(w.cuda(), h.cuda(), 4, 64, False, act_order=True).to("cpu")
    assert (cpu.codes == gpu.codes).float().mean() > 0.98
    assert abs(cpu.rel_error - gpu.rel_error) < 0.1 * cpu.rel_error
