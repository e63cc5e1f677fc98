"""Exporters: an IR `Graph` -> a checkpoint other tools load.

    export_hf_quantized(graph, "dir/", "gptq")   HF directory, GPTQ v1 layout (AutoGPTQ,
                                                 GPTQModel, transformers, vLLM)
    export_hf_quantized(graph, "dir/", "awq")    HF directory, AWQ GEMM layout (AutoAWQ,
                                                 transformers, vLLM)
"""

from optimizer.exporters.hf_quantized import export_hf_quantized

__all__ = ["export_hf_quantized"]
