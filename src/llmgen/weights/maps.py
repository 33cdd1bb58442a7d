"""Weight-name maps as data: checkpoint names -> our module names, and what must be reshaped.

Templates use `{}` for the layer number. Our names are Meta's for LLaMA and nanoGPT's for GPT-2.
"""

from __future__ import annotations

import re

# Hugging Face GPT-2 (GPT2LMHeadModel or GPT2Model): our names minus the "transformer." prefix.
HF_GPT2 = {
    "transformer.wte.weight": "wte.weight",
    "transformer.wpe.weight": "wpe.weight",
    "transformer.ln_f.weight": "ln_f.weight",
    "transformer.ln_f.bias": "ln_f.bias",
    **{
        f"transformer.h.{{}}.{name}": f"h.{{}}.{name}"
        for name in [
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
            "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias",
        ]
    },
}
# GPT-2 stores these in Conv1D layout (in_features, out_features): transpose for nn.Linear.
HF_GPT2_TRANSPOSED = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
# Not weights: causal-mask buffers of old checkpoints, and the head tied to wte.
HF_GPT2_IGNORED = {"attn.bias", "attn.masked_bias", "lm_head.weight"}

# Hugging Face Llama (LlamaForCausalLM).
HF_LLAMA = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    # Qwen2: a bias on q, k and v; Qwen3: RMSNorm weights for each q and k head.
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.attention.wq.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.attention.wk.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.attention.wv.bias",
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attention.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attention.k_norm.weight",
}
# Hugging Face Gemma 3 (Gemma3ForCausalLM): LLaMA's names, but four norms a layer. Its
# post_attention_layernorm normalises attention's output (LLaMA's is the MLP's input norm).
HF_GEMMA3 = {
    **{k: v for k, v in HF_LLAMA.items() if "post_attention_layernorm" not in k and ".bias" not in k},
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.post_attention_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.post_ffn_norm.weight",
}

# GGUF tensor names -> ours (Meta's), `{}` for the layer number.
# llama.cpp's GGUF names (the "llama" architecture's, which the others llmgen reads share).
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
    # Qwen2: a bias on q, k and v; Qwen3: RMSNorm weights for each q and k head.
    "blk.{}.attn_q.bias": "layers.{}.attention.wq.bias",
    "blk.{}.attn_k.bias": "layers.{}.attention.wk.bias",
    "blk.{}.attn_v.bias": "layers.{}.attention.wv.bias",
    "blk.{}.attn_q_norm.weight": "layers.{}.attention.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "layers.{}.attention.k_norm.weight",
    # Gemma 3: RMSNorm on attention's and the MLP's outputs too (ffn_norm is its pre-feedforward norm).
    "blk.{}.post_attention_norm.weight": "layers.{}.post_attention_norm.weight",
    "blk.{}.post_ffw_norm.weight": "layers.{}.post_ffn_norm.weight",
}

# HF's conversion permuted q and k rows so RoPE rotates halves; undo it to rotate interleaved pairs: the
# rows of q and k, their biases, and the per-head norm weights (one head_dim each), by llmgen's names
# (after renaming; a tensor-parallel rank's after cutting: the reordering stays within each head).
# Value: which head count the rows are grouped by.
LLAMA_ROPE_PERMUTED = {"attention.wq.weight": "n_heads", "attention.wk.weight": "n_kv_heads",
                       "attention.wq.bias": "n_heads", "attention.wk.bias": "n_kv_heads",
                       "attention.q_norm.weight": "one_head", "attention.k_norm.weight": "one_head"}
HF_LLAMA_IGNORED = {"self_attn.rotary_emb.inv_freq"}

# Meta checkpoints split across model-parallel shards: the dimension each tensor is split along
# (column-parallel layers by output rows, row-parallel by input columns); absent = replicated.
META_SHARD_DIM = {
    "tok_embeddings.weight": 0,  # VocabParallelEmbedding in Llama 3
    "output.weight": 0,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
}


def strip_layer(name: str) -> str:
    """A layer's tensor name without its layer (layers.N. for LLaMA, h.N. for GPT-2): the key of the tables."""
    return re.sub(r"^(?:layers|h)\.\d+\.", "", name)


# Names of tensors llmgen reads under some layout that are in no table above: Phi-3's fused q/k/v and
# gate/up (split as read), GGUF's RoPE factors, Llama 2's precomputed frequencies.
OTHER_KNOWN = {"model.layers.{}.self_attn.qkv_proj.weight", "model.layers.{}.mlp.gate_up_proj.weight",
               "blk.{}.attn_qkv.weight", "rope_freqs.weight", "rope.freqs"}


def unknown_names(names) -> list[str]:
    """The tensor names that no layout llmgen reads has (a checkpoint holding one will not load)."""
    known = set(OTHER_KNOWN)
    for table in (HF_GPT2, HF_LLAMA, HF_GEMMA3, GGUF_LLAMA):
        known |= set(table) | set(table.values())
    known |= {name.removeprefix("transformer.") for name in HF_GPT2}
    ignored = HF_GPT2_IGNORED | HF_LLAMA_IGNORED
    return [name for name in names if re.sub(r"\.\d+\.", ".{}.", name, count=1) not in known
            and not any(name == s or name.endswith("." + s) for s in ignored)]
