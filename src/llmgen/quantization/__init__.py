"""Quantized weights at run time: linear layers and heads on llmgen's kernels, bf16 as stored, the pass that swaps a
model's layers, and the cache of quantized GGUF files."""
