"""GGUF (llama.cpp's format): LLaMA-architecture config, weights and tokenizer from one file.

Built on the `gguf` package's reader. Quantized tensors (Q8_0, Q4_0, Q4_1, ...) are dequantized to
float32 at load. GGUF lists shapes innermost-first, the reverse of torch, and llama.cpp's converter
already stores q/k rows in Meta's interleaved RoPE order, which is ours, so no permutation is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.tokenizers import GPT2_PATTERN, LLAMA3_PATTERN, Tokenizer, encoding_from_vocab

# GGUF tensor names -> ours (Meta's), `{}` for the layer number.
GGUF_LLAMA = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attention_norm.weight",
    "blk.{}.attn_q.weight": "layers.{}.attention.wq.weight",
    "blk.{}.attn_k.weight": "layers.{}.attention.wk.weight",
    "blk.{}.attn_v.weight": "layers.{}.attention.wv.weight",
    "blk.{}.attn_output.weight": "layers.{}.attention.wo.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.ffn_norm.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.feed_forward.w1.weight",
    "blk.{}.ffn_down.weight": "layers.{}.feed_forward.w2.weight",
    "blk.{}.ffn_up.weight": "layers.{}.feed_forward.w3.weight",
}

# tokenizer.ggml.pre -> the pre-tokenizer regex of that vocabulary.
PRE_TOKENIZER_PATTERNS = {
    "default": GPT2_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "smollm": r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
}
TOKEN_TYPE_NORMAL = 1
STOP_TOKEN_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")


class GGUFFile:
    """Metadata and tensor table of a GGUF file (memory-mapped; nothing dequantized until asked)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self._reader = GGUFReader(self.path)
        except (ValueError, KeyError, IndexError, OSError, TypeError, OverflowError, MemoryError,
                UnicodeDecodeError, AssertionError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LLMGenError(f"{self.path.name} is not a readable GGUF file: {reason[:200]}") from None

    def get(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise LLMGenError(f"{self.path.name}: GGUF metadata has no {key!r}")
        return value

    @property
    def tensors(self):
        return self._reader.tensors

    def metadata(self) -> dict[str, Any]:
        """Every key except the long tokenizer arrays."""
        skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
        return {k: self.get(k) for k in self._reader.fields if k not in skip and not k.startswith("GGUF.")}

    def tensor(self, index: int) -> torch.Tensor:
        """One tensor dequantized to float32, in torch's shape order."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensors[index]
        shape = [int(d) for d in reversed(t.shape)]
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                array = t.data
            else:
                array = dequantize(t.data, t.tensor_type)
            # A copy: F32/F16 data is a read-only view of the memory-mapped file.
            return torch.from_numpy(array.astype("float32").reshape(shape))
        except (NotImplementedError, ValueError) as e:
            raise LLMGenError(f"{self.path.name}: tensor {t.name} of type {t.tensor_type.name} "
                              f"cannot be read: {e}") from None


def read_llama_gguf(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor], GGUFFile]:
    gguf_file = GGUFFile(path)
    arch = gguf_file.require("general.architecture")
    if arch != "llama":
        raise LLMGenError(f"{gguf_file.path.name}: GGUF architecture {arch!r} is not supported (llama)")
    names = [t.name for t in gguf_file.tensors]
    if "rope_freqs.weight" in names:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF rope_freqs (Llama 3.1 rope scaling) is not supported yet")
    n_heads = gguf_file.require("llama.attention.head_count")
    tokens = gguf_file.get("tokenizer.ggml.tokens")
    config = LlamaConfig(
        vocab_size=gguf_file.get("llama.vocab_size") or (len(tokens) if tokens else 0) or 0,
        dim=gguf_file.require("llama.embedding_length"),
        n_layers=gguf_file.require("llama.block_count"),
        n_heads=n_heads,
        n_kv_heads=gguf_file.get("llama.attention.head_count_kv") or n_heads,
        ffn_dim=gguf_file.require("llama.feed_forward_length"),
        norm_eps=gguf_file.get("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=gguf_file.get("llama.rope.freq_base", 10000.0),
        context_length=gguf_file.get("llama.context_length", 2048),
        tie_embeddings="output.weight" not in names,
    )
    if config.vocab_size <= 0:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF metadata gives no vocabulary size")
    state = {name: gguf_file.tensor(i) for i, name in enumerate(names)}
    return config, state, gguf_file


def gguf_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """The vocabulary stored in the GGUF metadata as a tiktoken Encoding (byte-level BPE models)."""
    model = gguf_file.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise LLMGenError(f"{gguf_file.path.name}: GGUF tokenizer model {model!r} is not supported (gpt2)")
    pre = gguf_file.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF pre-tokenizer {pre!r} is not supported "
                          f"({', '.join(PRE_TOKENIZER_PATTERNS)})")
    tokens = gguf_file.require("tokenizer.ggml.tokens")
    types = gguf_file.get("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    special = {token for token, kind in zip(tokens, types) if kind != TOKEN_TYPE_NORMAL}
    encoding = encoding_from_vocab(f"gguf:{gguf_file.path.name}", vocab, PRE_TOKENIZER_PATTERNS[pre], special)
    stop = {vocab[t] for t in STOP_TOKEN_TEXTS if t in vocab}
    if (eos := gguf_file.get("tokenizer.ggml.eos_token_id")) is not None:
        stop.add(int(eos))
    bos = gguf_file.get("tokenizer.ggml.bos_token_id") if gguf_file.get("tokenizer.ggml.add_bos_token") else None
    template = gguf_file.get("tokenizer.chat_template") or ""
    chat_format = "chatml" if "<|im_start|>" in template else "llama3" if "<|start_header_id|>" in template else None
    return Tokenizer(name=f"gguf:{pre}", encoding=encoding, bos_id=bos, stop_ids=tuple(sorted(stop)),
                     chat_format=chat_format)
