"""Tiny checkpoints in each real layout, written with transformers (the reference) and torch.save.

Same random weights go to the reference model and to disk; tests load the disk copy with llmgen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

META_NAMES = {  # HF Llama name -> Meta name (the inverse of llmgen's map, written out independently)
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
META_LAYER_NAMES = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}


def hf_gpt2(**overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    config.update(overrides)
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**config)).eval()


def hf_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=1000, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
    config.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():  # RMSNorm weights start at 1; randomise them so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# Tiny configs of the LLaMA-like families, in transformers' own classes (config class, model class).
HF_FAMILIES = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24}),  # head_dim * heads != hidden_size
    # Phi-4-mini's partial RoPE: 3/4 of each head turns, the rest passes through.
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": None, "pad_token_id": 0, "partial_rotary_factor": 0.75}),
    # Sliding windows of 8 (40-token prompts cross them): Mistral's on every layer, Qwen2's from
    # max_window_layers on.
    "mistral-swa": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2-swa": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 8,
                                                      "max_window_layers": 1}),
    # Local layers with a window of 8 (so prompts of 40 tokens cross it) around a global one.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "num_hidden_layers": 3, "query_pre_attn_scalar": 24, "head_dim": 16}),
}


def hf_family(family: str, **overrides):
    """A tiny random model of a LLaMA-like family (HF_FAMILIES), norms and biases randomised so a wrong
    mapping shows."""
    import transformers

    config_class, model_class, extra = HF_FAMILIES[family]
    config = dict(vocab_size=1000, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False)
    config.update(extra)
    config.update(overrides)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()
    # Gemma's RMSNorm scales by 1 + weight: its weights around 0 give the same 0.5-1.5 scales as the others'.
    norm_low = -0.5 if family == "gemma3" else 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(norm_low, norm_low + 1)
            elif name.endswith(".bias"):
                p.uniform_(-0.5, 0.5)
    return model


def save_hf(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def permute_hf_to_meta(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    # Undo transformers' convert_llama_weights_to_hf permute (which maps Meta -> HF).
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def save_meta(model, directory: Path, *, shards: int = 1, extra_params: dict | None = None) -> Path:
    """Write a HF Llama's weights as Meta's consolidated.NN.pth + params.json."""
    cfg = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        if name in META_NAMES:
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            state[META_NAMES[name]] = tensor.clone()
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            tensor = permute_hf_to_meta(tensor, cfg.num_attention_heads)
        elif rest == "self_attn.k_proj.weight":
            tensor = permute_hf_to_meta(tensor, cfg.num_key_value_heads)
        state[f"layers.{layer}.{META_LAYER_NAMES[rest]}"] = tensor.clone()
    directory.mkdir(parents=True, exist_ok=True)
    split_dims = {"tok_embeddings": 0, "output": 0, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}
    for shard in range(shards):
        part = {}
        for name, tensor in state.items():
            key = name.split(".")[-2]
            dim = split_dims.get(key)
            part[name] = tensor if dim is None else tensor.chunk(shards, dim=dim)[shard].clone()
        torch.save(part, directory / f"consolidated.{shard:02d}.pth")
    params = {
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size, "multiple_of": 32,
        "ffn_dim_multiplier": None, "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_parameters["rope_theta"],
        **(extra_params or {}),
    }
    (directory / "params.json").write_text(json.dumps(params))
    return directory


def smollm2_hf(directory: Path) -> Path:
    """The real SmolLM2-135M-Instruct (the embedded GGUF's weights) in Hugging Face layout, as the hub
    serves it: config.json, bfloat16 model.safetensors, tokenizer.json, tokenizer_config.json and
    generation_config.json, all written by transformers. transformers' GGUF loader gives the tokenizer
    GPT-2's pre-tokenizer; SmolLM2's own splits numerals off first (shared/FACTS.md), so it is set here
    as the real tokenizer.json has it."""
    import shutil

    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    from llmgen import assets

    gguf_path = assets.locate("smollm2-135m-instruct-q4_1")
    source = directory.parent / f"{directory.name}-gguf"
    source.mkdir(parents=True, exist_ok=True)
    (source / gguf_path.name).symlink_to(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_path.name, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_path.name)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.save_pretrained(directory)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(directory)
    shutil.rmtree(source)
    return directory
