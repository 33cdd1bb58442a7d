"""Model configurations as small dataclasses, read from Meta's params.json or Hugging Face's config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from llmgen.errors import LLMGenError

# Checkpoints are hostile: every size is an int in a range that real models stay well inside (the largest
# open models have dim 16384, 126 layers, 256k vocabularies), so a bad file fails here, before anything is
# built or allocated from its numbers.
INT_RANGES = {
    "vocab_size": (1, 1 << 22), "context_length": (1, 1 << 24), "dim": (1, 1 << 16), "n_layers": (1, 1024),
    "n_heads": (1, 1024), "n_kv_heads": (1, 1024), "ffn_dim": (1, 1 << 20), "head_dim": (0, 4096), "rotary_dim": (0, 4096),
    "original_context_length": (1, 1 << 24),
}
POSITIVE_FLOATS = {"norm_eps", "rope_theta", "factor", "low_freq_factor", "high_freq_factor"}


def check_fields(config) -> None:
    """Types and ranges of a config dataclass's numeric fields; one clear error for the first bad one."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in INT_RANGES:
            low, high = INT_RANGES[f.name]
            _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                     f"config value {f.name} must be an integer from {low} to {high}, got {value!r:.60}")
        elif f.name in POSITIVE_FLOATS:
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                     and value > 0, f"config value {f.name} must be a positive number, got {value!r:.60}")


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    context_length: int = 1024  # learned positions: the model cannot see further back
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    norm_eps: float = 1e-5
    # GPT-2's are dim // n_heads and 4 dim; a tensor-parallel shard (parallel/) has fewer heads and a
    # narrower MLP of the same dim.
    head_dim: int = 0
    ffn_dim: int = 0

    arch = "gpt2"

    def __post_init__(self):
        if self.ffn_dim == 0 and isinstance(self.dim, int):
            object.__setattr__(self, "ffn_dim", 4 * self.dim)
        check_fields(self)
        if self.head_dim == 0:
            _require(self.dim % self.n_heads == 0, f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> GPT2Config:
        return cls(
            vocab_size=_get(config, "vocab_size"),
            context_length=_get(config, "n_positions", "n_ctx"),
            dim=_get(config, "n_embd"),
            n_layers=_get(config, "n_layer"),
            n_heads=_get(config, "n_head"),
            norm_eps=config.get("layer_norm_epsilon", 1e-5),
        )


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling (rope_type "llama3")."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192

    def __post_init__(self):
        check_fields(self)
        _require(self.high_freq_factor > self.low_freq_factor,
                 f"rope scaling needs high_freq_factor > low_freq_factor, got {self.high_freq_factor} "
                 f"and {self.low_freq_factor}")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 128256
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn_dim: int = 14336
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    context_length: int = 8192
    tie_embeddings: bool = False
    head_dim: int = field(default=0)  # 0: dim // n_heads
    # Per-frequency divisors of the RoPE frequencies (head_dim / 2 of them), as llama.cpp's converter
    # stores Llama 3.1+ scaling in a GGUF's rope_freqs tensor; None: rope_scaling (or none) applies.
    rope_freq_factors: tuple[float, ...] | None = None
    # The families that differ from LLaMA in small ways (ARCHITECTURES in from_hf says which is which):
    qkv_bias: bool = False  # Qwen2: a bias on the q, k and v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head (head_dim) before RoPE
    # Phi-3's "longrope": RoPE's rotations scaled by this (q.k by its square); 1: none.
    rope_attention_factor: float = 1.0
    # Gemma 3: embeddings times sqrt(dim), RMSNorm on attention's and the MLP's outputs too (post_norms),
    # GeGLU, its own attention scale, and local layers that attend to the last sliding_window positions
    # with their own RoPE base, between global ones.
    embedding_scale: float = 1.0
    post_norms: bool = False
    activation: str = "silu"  # or "gelu_tanh"
    attention_scale: float = 0.0  # 0: head_dim ** -0.5
    sliding_window: int = 0  # 0: no local layers
    local_layers: tuple[bool, ...] = ()  # per layer, whether it is local (empty: none)
    local_rope_theta: float = 0.0  # Gemma's local layers' own base (unscaled); 0: they turn as global ones do
    # Phi-4-mini's partial RoPE: only each head's first rotary_dim dimensions turn, the rest pass through;
    # 0: all of head_dim.
    rotary_dim: int = 0

    arch = "llama"

    def __post_init__(self):
        check_fields(self)
        if self.head_dim == 0:
            _require(self.dim % self.n_heads == 0, f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        _require(self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads == 0,
                 f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        _require(self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for RoPE")
        if self.rotary_dim == 0:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        _require(self.rotary_dim % 2 == 0 and self.rotary_dim <= self.head_dim,
                 f"rotary_dim {self.rotary_dim} must be even and at most head_dim {self.head_dim}")
        _require(self.activation in ("silu", "gelu_tanh"), f"activation {self.activation!r:.30} is not supported")
        _require(not self.local_layers or (len(self.local_layers) == self.n_layers and self.sliding_window > 0),
                 "local layers need a sliding window and one flag per layer")
        for name in ("embedding_scale", "attention_scale", "rope_attention_factor", "local_rope_theta"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                     f"config value {name} must be a finite number >= 0, got {value!r:.40}")
        if self.rope_freq_factors is not None:
            factors = self.rope_freq_factors
            _require(len(factors) == self.rotary_dim // 2 and all(math.isfinite(f) and f > 0 for f in factors),
                     f"rope frequency factors must be {self.rotary_dim // 2} positive numbers, got {len(factors)}")

    @classmethod
    def from_meta(cls, params: dict[str, Any], *, tie_embeddings: bool) -> LlamaConfig:
        """Meta's params.json: the FFN width is derived from dim, multiple_of and ffn_dim_multiplier."""
        dim = _get(params, "dim")
        hidden = int(2 * (4 * dim) / 3)
        if params.get("ffn_dim_multiplier") is not None:
            hidden = int(_number(params, "ffn_dim_multiplier", 1.0, high=64) * hidden)
        multiple_of = _get(params, "multiple_of") if "multiple_of" in params else 256
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        scaled = bool(params.get("use_scaled_rope", False))
        n_heads = _get(params, "n_heads")
        return cls(
            vocab_size=_get(params, "vocab_size"),
            dim=dim,
            n_layers=_get(params, "n_layers"),
            n_heads=n_heads,
            n_kv_heads=params.get("n_kv_heads") or n_heads,
            ffn_dim=hidden,
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=params.get("rope_theta", 10000.0),
            # Meta's reference code scales by 8 whenever use_scaled_rope is set.
            rope_scaling=RopeScaling(factor=_number(params, "rope_scaling_factor", 8.0)) if scaled else None,
            context_length=params.get("max_seq_len", 131072 if scaled else 8192),
            tie_embeddings=tie_embeddings,
        )

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> LlamaConfig:
        """config.json of LlamaForCausalLM and the families that are LLaMA with small differences:
        MistralForCausalLM (LLaMA's math; a sliding window on every layer), Qwen2ForCausalLM (q/k/v bias;
        a window on the upper layers when use_sliding_window), Qwen3ForCausalLM (q/k RMSNorm) and
        Phi3ForCausalLM (q/k/v and gate/up fused in the checkpoint, split as read; longrope and partial
        RoPE; a sliding window)."""
        model_type = config.get("model_type", "llama")
        if model_type == "gemma3_text":
            return cls._from_gemma3(config)
        if model_type not in HF_LLAMA_FAMILIES:
            raise LLMGenError(f"config.json: model_type {model_type!r} is not a LLaMA-family model "
                              f"({', '.join(HF_LLAMA_FAMILIES)})")
        if model_type in ("llama", "mistral", "phi3") and (config.get("attention_bias") or config.get("mlp_bias")):
            raise LLMGenError("config.json: attention_bias and mlp_bias are not supported for llama/mistral/phi3")
        # transformers 5 moves rope_theta and rope_scaling into rope_parameters.
        rope = _object(config, "rope_parameters") or _object(config, "rope_scaling")
        partial = config.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
        if not isinstance(partial, (int, float)) or isinstance(partial, bool) or not 0 < partial <= 1:
            raise LLMGenError(f"config.json: partial_rotary_factor must be a number in (0, 1], got {partial!r:.20}")
        context = _positive_int(config, "max_position_embeddings", 8192)
        window, local_layers = _sliding_window(config, model_type)
        rope_theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling, factors, attention_factor = None, None, 1.0
        if rope_type in ("longrope", "su"):
            # Phi-3's long-context RoPE: within the original window the frequencies are divided by
            # short_factor and the rotations scaled by sqrt(1 + log(scale) / log(original window)); the long
            # factors serve positions beyond it, so the context stops at the original window here.
            original = _get(rope, "original_max_position_embeddings") if "original_max_position_embeddings" in rope \
                else _get(config, "original_max_position_embeddings")
            short = rope.get("short_factor")
            if not isinstance(short, list) or not all(isinstance(f, (int, float)) for f in short):
                raise LLMGenError("config.json: longrope needs short_factor, a list of numbers")
            factors = tuple(float(f) for f in short)
            scale = context / original
            default = 1.0 if scale <= 1.0 or original < 2 else math.sqrt(1 + math.log(scale) / math.log(original))
            attention_factor = _number(rope, "attention_factor", default) if rope.get("attention_factor") else default
            context = min(context, original)
        elif rope_type == "llama3":
            scaling = RopeScaling(
                factor=_number(rope, "factor"),
                low_freq_factor=_number(rope, "low_freq_factor"),
                high_freq_factor=_number(rope, "high_freq_factor"),
                original_context_length=_get(rope, "original_max_position_embeddings"),
            )
        elif rope_type not in ("default", None):
            raise LLMGenError(f"config.json: rope type {rope_type!r} is not supported (default, llama3, longrope)")
        n_heads = _get(config, "num_attention_heads")
        head_dim = _positive_int(config, "head_dim", _get(config, "hidden_size") // n_heads)
        rotary_dim = int(head_dim * partial)  # as transformers computes it
        if rotary_dim < 2:
            raise LLMGenError(f"config.json: partial_rotary_factor {partial} leaves no pair of dimensions to turn")
        return cls(
            vocab_size=_get(config, "vocab_size"),
            dim=_get(config, "hidden_size"),
            n_layers=_get(config, "num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            ffn_dim=_get(config, "intermediate_size"),
            norm_eps=config.get("rms_norm_eps", 1e-5),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            context_length=context,
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim") or 0,
            qkv_bias=model_type == "qwen2" or (model_type == "qwen3" and bool(config.get("attention_bias", False))),
            qk_norm=model_type == "qwen3",
            rope_freq_factors=factors,
            rope_attention_factor=float(attention_factor),
            rotary_dim=rotary_dim,
            sliding_window=window if local_layers else 0,
            local_layers=local_layers,
        )


    @classmethod
    def _from_gemma3(cls, config: dict[str, Any]) -> LlamaConfig:
        """Gemma3ForCausalLM's config.json (model_type gemma3_text)."""
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if config.get(key) is not None:
                raise LLMGenError(f"config.json: {key} is not supported")
        if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise LLMGenError(f"config.json: hidden_activation {config.get('hidden_activation')!r:.30} is not supported")
        n_layers, dim = _get(config, "num_hidden_layers"), _get(config, "hidden_size")
        _require(n_layers <= INT_RANGES["n_layers"][1],  # before a type a layer is made of a hostile count
                 f"config value n_layers must be an integer from 1 to {INT_RANGES['n_layers'][1]}, got {n_layers}")
        layer_types = config.get("layer_types")
        if layer_types is None:  # every sliding_window_pattern-th layer global
            pattern = _positive_int(config, "sliding_window_pattern", _positive_int(config, "_sliding_window_pattern", 6))
            layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
        if not isinstance(layer_types, list) or len(layer_types) != n_layers or not set(layer_types) <= {
                "sliding_attention", "full_attention"}:
            raise LLMGenError("config.json: layer_types must name sliding_attention or full_attention per layer")
        # RoPE: transformers 5 keys it by layer type; older files give rope_theta, rope_local_base_freq and
        # rope_scaling (linear: frequencies divided by a factor, for the global layers).
        rope = _object(config, "rope_parameters")
        full = _object(rope, "full_attention") if "full_attention" in rope else {**rope, **_object(config, "rope_scaling")}
        local = _object(rope, "sliding_attention")
        theta = full.get("rope_theta", config.get("rope_theta", 1_000_000.0))
        local_theta = local.get("rope_theta", config.get("rope_local_base_freq", 10_000.0))
        head_dim = _positive_int(config, "head_dim", dim // _get(config, "num_attention_heads"))
        factors = None
        if full.get("rope_type", full.get("type", "default")) == "linear":
            factors = (float(_number(full, "factor")),) * (head_dim // 2)
        elif full.get("rope_type", full.get("type", "default")) not in ("default", None):
            raise LLMGenError(f"config.json: Gemma 3 rope type {full.get('rope_type')!r:.30} is not supported")
        n_heads = _get(config, "num_attention_heads")
        return cls(
            vocab_size=_get(config, "vocab_size"), dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads, ffn_dim=_get(config, "intermediate_size"),
            norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=theta,
            context_length=_positive_int(config, "max_position_embeddings", 32768),
            tie_embeddings=bool(config.get("tie_word_embeddings", True)), head_dim=head_dim,
            rope_freq_factors=factors, qkv_bias=bool(config.get("attention_bias", False)), qk_norm=True,
            embedding_scale=dim ** 0.5, post_norms=True, activation="gelu_tanh",
            attention_scale=_number(config, "query_pre_attn_scalar", float(head_dim)) ** -0.5,
            sliding_window=_get(config, "sliding_window"),
            local_layers=tuple(t == "sliding_attention" for t in layer_types), local_rope_theta=local_theta,
        )


def _sliding_window(config: dict[str, Any], model_type: str) -> tuple[int, tuple[bool, ...]]:
    """(window, which layers attend only to the last `window` positions) as transformers reads them:
    Mistral's and Phi-3's sliding_window applies to every layer; Qwen2/3's only with use_sliding_window, to
    the layers from max_window_layers on; a layer_types list, where config.json has one, says it per layer.
    No window, or one as long as the context: (0, ())."""
    if config.get("sliding_window") is None or not (
            model_type in ("mistral", "phi3") or config.get("use_sliding_window") is True):
        return 0, ()
    window = _get(config, "sliding_window")
    n_layers = _get(config, "num_hidden_layers")
    _require(n_layers <= INT_RANGES["n_layers"][1],  # before a flag a layer is made of a hostile count
             f"config value n_layers must be an integer from 1 to {INT_RANGES['n_layers'][1]}, got {n_layers}")
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        local = tuple(t == "sliding_attention" for t in layer_types)
    elif model_type in ("qwen2", "qwen3"):
        first = config.get("max_window_layers", 0)
        first = first if isinstance(first, int) and not isinstance(first, bool) else 0
        local = tuple(i >= first for i in range(n_layers))
    else:
        local = (True,) * n_layers
    if window >= _positive_int(config, "max_position_embeddings", 8192) or not any(local):
        return 0, ()
    return window, local


# Hugging Face model types that LlamaConfig.from_hf reads (model/llama.py runs them all).
HF_LLAMA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text")


ModelConfig = GPT2Config | LlamaConfig


def _get(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in config:
            value = config[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LLMGenError(f"config key {key!r} must be a positive integer, got {value!r:.60}")
            return value
    raise LLMGenError(f"config is missing the key {keys[0]!r}")


def _object(config: dict[str, Any], key: str) -> dict[str, Any]:
    """A JSON object under key ({} when absent or null)."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LLMGenError(f"config key {key!r} must be an object, got {value!r:.60}")
    return value


def _positive_int(config: dict[str, Any], key: str, default: int) -> int:
    """An optional positive integer (the default when absent or null)."""
    if config.get(key) is None:
        return default
    return _get(config, key)


def _number(config: dict[str, Any], key: str, default: float | None = None, high: float = math.inf) -> float:
    """A positive, finite number (an optional key when a default is given)."""
    if key not in config and default is not None:
        return default
    if key not in config:
        raise LLMGenError(f"config is missing the key {key!r}")
    value = config[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= high \
            or not math.isfinite(value):
        raise LLMGenError(f"config key {key!r} must be a positive number, got {value!r:.60}")
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise LLMGenError(message)
