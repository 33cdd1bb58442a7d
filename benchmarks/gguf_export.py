"""The benchmarks' weights as GGUF files, so that llama.cpp runs the same model as llmgen.

llama.cpp reads only GGUF, and its converter is not installed with llama-cpp-python, so this writes
them with the gguf package's GGUFWriter: GGUF names and shapes for each tensor, the hyperparameters,
and the real tokenizer (tokens in GPT-2's byte-to-unicode spelling and the BPE merges, recovered from
tiktoken's ranks). Only the benchmarks use this; llmgen reads GGUF, it does not write it.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

from llmgen.tokenizers import bytes_to_unicode


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order: BPE of the token's bytes with only the
    ranks below its own stops at the two parts that were merged into it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, math.inf) for a, b in zip(parts, parts[1:])]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def add_bpe_tokenizer(writer: gguf.GGUFWriter, ranks: dict[bytes, int], special: dict[str, int], pre: str,
                      bos: int, eos: int) -> None:
    spell = bytes_to_unicode()
    text = lambda token: "".join(spell[b] for b in token)  # noqa: E731
    tokens = [""] * (max([*ranks.values(), *special.values()]) + 1)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for token, rank in ranks.items():
        tokens[rank] = text(token)
    for token, token_id in special.items():
        tokens[token_id], types[token_id] = token, gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{text(a)} {text(b)}" for a, b in merges_from_ranks(ranks)])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)


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

    from llmgen.tokenizers import get_tokenizer

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


def llama_gguf(meta_directory: Path, path: Path, params: dict, quantize: str = "BF16") -> Path:
    """A Meta-layout LLaMA-3 checkpoint (consolidated.00.pth, params.json) as a llama.cpp "llama" GGUF.

    Meta's q/k rows rotate interleaved pairs; llama.cpp's (like HF's) rotate the two halves. The rows are
    left as they are: right for random benchmark weights, not for real ones.
    """
    if path.is_file():
        return path
    from llmgen.tokenizers import load_llama3

    state = torch.load(meta_directory / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    dim, n_layers = params["dim"], params["n_layers"]
    writer = gguf.GGUFWriter(None, "llama")
    writer.add_context_length(8192)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(state["layers.0.feed_forward.w1.weight"].shape[0])
    writer.add_block_count(n_layers)
    writer.add_head_count(params["n_heads"])
    writer.add_head_count_kv(params["n_kv_heads"])
    writer.add_rope_freq_base(params["rope_theta"])
    writer.add_layer_norm_rms_eps(params["norm_eps"])
    writer.add_vocab_size(params["vocab_size"])
    writer.add_rope_dimension_count(dim // params["n_heads"])
    tokenizer = load_llama3(meta_directory / "tokenizer.model")
    encoding = tokenizer.encoding
    add_bpe_tokenizer(writer, encoding._mergeable_ranks, encoding._special_tokens, "llama-bpe",
                      tokenizer.bos_id, tokenizer.stop_ids[0])
    names = [("token_embd.weight", "tok_embeddings.weight"), ("output_norm.weight", "norm.weight"),
             ("output.weight", "output.weight")]
    for i in range(n_layers):
        names += [(f"blk.{i}.{ours}.weight", f"layers.{i}.{theirs}.weight") for ours, theirs in [
            ("attn_norm", "attention_norm"), ("attn_q", "attention.wq"), ("attn_k", "attention.wk"),
            ("attn_v", "attention.wv"), ("attn_output", "attention.wo"), ("ffn_norm", "ffn_norm"),
            ("ffn_gate", "feed_forward.w1"), ("ffn_up", "feed_forward.w3"), ("ffn_down", "feed_forward.w2")]]
    return write(path, writer, [(ours, state[theirs]) for ours, theirs in names], quantize)
