"""The benchmarks' GPT-2 and hand-made LLaMA weights as GGUF files, so that llama.cpp runs the same model
as llmgen. A LLaMA checkpoint in Meta's layout goes through `llmgen quantize`'s writer
(llmgen/weights/gguf_write.py, which also provides the tokenizer metadata used here).
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

from llmgen.weights.gguf_write import add_bpe_tokenizer, write_gguf
from llmgen.weights.sources import open_source


def write(path: Path, writer: gguf.GGUFWriter, tensors: list[tuple[str, torch.Tensor]], quantize: str) -> Path:
    """Tensors as named; matrices in `quantize` (F32, BF16 or Q4_1), vectors and position tables in F32.

    Streamed: the tensor table first, then one tensor converted and written at a time, so that a 16 GB
    checkpoint never sits in memory whole.
    """
    def kind_of(name: str, tensor: torch.Tensor) -> gguf.GGMLQuantizationType:
        matrix = tensor.dim() == 2 and "position" not in name
        return getattr(gguf.GGMLQuantizationType, quantize) if matrix else gguf.GGMLQuantizationType.F32

    def gguf_bytes(tensor: torch.Tensor, kind: gguf.GGMLQuantizationType) -> np.ndarray:
        if kind == gguf.GGMLQuantizationType.BF16 and tensor.dtype == torch.bfloat16:
            return tensor.contiguous().view(torch.int16).numpy().view(np.uint8)  # already bfloat16: as is
        array = tensor.detach().float().numpy()
        return array if kind == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, kind)

    for name, tensor in tensors:
        kind = kind_of(name, tensor)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(name, tuple(tensor.shape), np.dtype(np.float32), 4 * tensor.numel())
        else:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(tuple(tensor.shape), kind)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=kind)
    partial = path.with_suffix(".partial")
    writer.write_header_to_file(partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, tensor in tensors:
        writer.write_tensor_data(gguf_bytes(tensor, kind_of(name, tensor)))
    writer.close()
    partial.rename(path)
    return path


def gpt2_gguf(hf_directory: Path, path: Path, quantize: str = "F32") -> Path:
    """A Hugging Face GPT2LMHeadModel directory (safetensors) as a llama.cpp "gpt2" GGUF."""
    if path.is_file():
        return path
    from safetensors.torch import load_file

    from llmgen.tokenization.tiktoken_files import get_tokenizer

    state = {k.removeprefix("transformer."): v for k, v in load_file(hf_directory / "model.safetensors").items()}
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("h."))
    dim = state["wte.weight"].shape[1]
    writer = gguf.GGUFWriter(None, "gpt2")
    writer.add_context_length(state["wpe.weight"].shape[0])
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(4 * dim)
    writer.add_block_count(n_layers)
    writer.add_head_count(dim // 64)
    writer.add_layer_norm_eps(1e-5)
    encoding = get_tokenizer("gpt2").encoding
    add_bpe_tokenizer(writer, encoding._mergeable_ranks, encoding._special_tokens, "gpt-2", 50256, 50256)
    # (GGUF name, HF name, transposed): HF's Conv1D stores (in, out), GGUF wants (out, in) like nn.Linear.
    names = [("token_embd.weight", "wte.weight", False), ("position_embd.weight", "wpe.weight", False),
             ("output_norm.weight", "ln_f.weight", False), ("output_norm.bias", "ln_f.bias", False),
             ("output.weight", "wte.weight", False)]
    for i in range(n_layers):
        for ours, theirs, transposed in [("attn_norm", "ln_1", False), ("attn_qkv", "attn.c_attn", True),
                                         ("attn_output", "attn.c_proj", True), ("ffn_norm", "ln_2", False),
                                         ("ffn_up", "mlp.c_fc", True), ("ffn_down", "mlp.c_proj", True)]:
            names += [(f"blk.{i}.{ours}.weight", f"h.{i}.{theirs}.weight", transposed),
                      (f"blk.{i}.{ours}.bias", f"h.{i}.{theirs}.bias", False)]
    tensors = [(ours, state[theirs].T.contiguous() if transposed else state[theirs]) for ours, theirs, transposed in names]
    return write(path, writer, tensors, quantize)


def llama_gguf(meta_directory: Path, path: Path, params: dict | None = None, quantize: str = "BF16") -> Path:
    """A Meta-layout LLaMA-3 checkpoint as a llama.cpp "llama" GGUF, written by `llmgen quantize`'s writer."""
    if path.is_file():
        return path
    return write_gguf(open_source(meta_directory), path, quantize.lower())
