"""From a path on disk to a ready model and its tokenizer.

Detect the layout from the files present, read the config, build the module on the meta device (no
memory for random init), read the tensors memory-mapped, rename them with the maps in maps.py, check
names and shapes strictly, and assign them into the module.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from llmgen.config import HF_LLAMA_FAMILIES, GPT2Config, LlamaConfig, ModelConfig
from llmgen.errors import LLMGenError, UsageError
from llmgen.models import build_model
from llmgen.parallel.shard import Shard, build_config, local_config, shard_state
from llmgen.quantize import QUANTIZATIONS, bf16_on_kernels, quantize_model
from llmgen.tokenizers import MODEL_VOCABULARIES, Tokenizer, get_tokenizer, load_llama3, tokenizer_from_path
from llmgen.weights import maps
from llmgen.weights.gguf_format import GGUFFile, gguf_tokenizer, read_llama_gguf
from llmgen.weights.memory import check_memory
from llmgen.weights.readers import read_json, read_shards, shards_from_index

EXPECTED_FILES = (
    "params.json + consolidated.*.pth (Meta layout), or config.json + model.safetensors, "
    "model-*-of-*.safetensors with model.safetensors.index.json, or pytorch_model.bin (Hugging Face layout)"
)
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")
LAYER_INDEX = re.compile(r"(?:layers|h)\.(\d+)\.")  # our names: layers.N. (LLaMA), h.N. (GPT-2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    layout: str  # "meta", "hf" or "gguf"
    path: Path
    load_seconds: float
    # --quantize int4/int8 on a float checkpoint: the source it was quantized from (quantized_cache.py),
    # and whether this run wrote it.
    quantized_from: Path | None = None
    cache_written: bool = False
    cache_problem: str | None = None  # why the cache could not be used (then it was quantized in memory)


@dataclass
class Layout:
    kind: str  # "meta", "hf" or "gguf"
    directory: Path
    gguf_file: GGUFFile | None = None  # kept open after reading: it also holds the tokenizer


def detect_layout(path: Path) -> Layout:
    path = Path(path)
    if not path.exists():
        raise LLMGenError(f"model path not found: {path}")
    if path.is_file() and path.suffix == ".gguf":
        return Layout("gguf", path)
    directory = path if path.is_dir() else path.parent
    if (directory / "config.json").is_file() and any((directory / f).is_file() for f in HF_WEIGHT_FILES):
        return Layout("hf", directory)
    if (directory / "config.json").is_file() and list(directory.glob("model-*-of-*.safetensors")):
        return Layout("hf", directory)
    for candidate in (directory, directory / "original"):
        if (candidate / "params.json").is_file():
            return Layout("meta", candidate)
    present = sorted(p.name for p in directory.iterdir())[:8]
    raise LLMGenError(f"{directory} has no model layout llmgen knows; expected {EXPECTED_FILES}; "
                      f"found: {', '.join(present) or 'nothing'}")


def load_weights(path: Path, *, device: str = "cpu", dtype: str = "auto") -> tuple[torch.nn.Module, Layout]:
    """The model module with its checkpoint's weights (all dequantized), in eval mode on `device`."""
    model, layout, _ = _load_weights(path, device, dtype, keep_quantized=False)
    return model, layout


def _load_weights(path: Path, device: str, dtype: str, keep_quantized: bool, shard: Shard | None = None
                  ) -> tuple[torch.nn.Module, Layout, dict[str, object]]:
    """With keep_quantized, a GGUF file's quantized matrices (and embedding) come back as stored, by
    parameter name, and their modules stay empty (on the meta device) for quantize_model to fill.
    shard: only a tensor-parallel rank's part of each weight is read (parallel/shard.py); the model's config
    then has the rank's heads and MLP width."""
    layout = detect_layout(Path(path))
    if layout.kind == "meta":
        config, state = _read_meta(layout.directory, keep_parts=shard is not None)
    elif layout.kind == "gguf":
        config, state, layout.gguf_file = read_llama_gguf(layout.directory, keep_quantized=keep_quantized)
        state = _rename(state, maps.GGUF_LLAMA)
    else:
        config, state = _read_hf(layout.directory)
    if shard is not None:
        local = local_config(config, shard)  # refuses a split that does not come out even
        state, config = shard_state(config, state, shard), local
    if layout.kind == "hf" and config.arch == "llama":  # after sharding: a rank reorders only its own heads
        state = reorder_rope_rows(state, config)
    state = {name: t.contiguous() if isinstance(t, torch.Tensor) else t for name, t in state.items()}
    stored = {name: value for name, value in state.items() if not isinstance(value, torch.Tensor)}
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    target = _resolve_dtype(dtype, _stored_dtype(tensors), device)
    if layout.kind != "gguf":  # GGUF files were checked as they were read
        # Memory-mapped tensors cost nothing until converted.
        check_memory(sum(t.numel() * target.itemsize for t in tensors if t.dtype != target), layout.directory.name)
    model = _assign(build_config(config, state) if shard is not None else config, state)
    model.config = config  # a rank's: its heads and MLP width, the whole vocabulary (parallel/layers.py)
    model.to(dtype=target)
    if not stored:
        model.to(device=device)
    return model.eval(), layout, stored


def load_model(path: Path, *, device: str = "cpu", dtype: str = "auto", quantize: str = "auto",
               tokenizer_path: Path | None = None, own_kernels: bool = True,
               cache_quantized: bool = False, tensor_parallel=None) -> LoadedModel:
    """Weights (quantized as asked, see quantize.py) and the tokenizer that goes with them.

    quantize "auto" keeps a GGUF file's quantized weights as stored on a CPU (on llmgen's kernels), and
    everything else as stored; "int4" also quantizes float matrices to 4 bits.
    own_kernels=False: PyTorch's int4 kernel instead of llmgen's (for torch.compile; see quantize_model).
    cache_quantized: int4/int8 on a Meta-layout checkpoint (or a Hugging Face LLaMA gguf_writer writes)
    quantize it once into a cached GGUF file and run that (quantized_cache.py), instead of quantizing in
    memory at every load.
    tensor_parallel: a parallel.group.TensorParallel: load this rank's shard only, joined to the other
    ranks' by all-reduces (parallel/); each rank quantizes its own shard in memory (no cache).
    """
    if quantize not in QUANTIZATIONS:
        raise UsageError(f"unknown quantization {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    on_cpu = not str(device).startswith("cuda")
    if quantize in ("int8", "int4") and not on_cpu:
        raise LLMGenError(f"--quantize {quantize} uses PyTorch's CPU kernels; use it with --device cpu")
    started = time.perf_counter()
    source, cache_written = None, False
    if cache_quantized and quantize in ("int4", "int8") and on_cpu and own_kernels and tensor_parallel is None \
            and (layout := detect_layout(Path(path))).kind in ("meta", "hf"):
        from llmgen.weights.gguf_writer import writable

        source = layout.directory if writable(layout.directory) else None
    cache_problem = None
    if source is not None:
        from llmgen.weights.quantized_cache import CacheUnwritable, quantized_copy

        try:
            cached, cache_written = quantized_copy(source, quantize)
        except CacheUnwritable as e:
            cache_problem, source = str(e), None
        else:
            tokenizer_path = tokenizer_path or _meta_tokenizer_path(source) or source  # the source's own tokenizer
            path, quantize = cached, "auto"  # the cached file's blocks, kept as stored
    shard = None if tensor_parallel is None else tensor_parallel.shard
    model, layout, stored = _load_weights(path, device, dtype, keep_quantized=on_cpu and quantize in ("auto", "int4"),
                                          shard=shard)
    if quantize == "auto":
        quantize = "int4" if stored else "bf16" if _bf16_on_kernels(model, on_cpu, own_kernels) else "none"
    if quantize == "bf16":
        bf16_on_kernels(model, own_kernels)
    elif quantize != "none":
        quantize_model(model, quantize, stored, own_kernels)
    if tensor_parallel is not None:
        from llmgen import parallel
        from llmgen.parallel.layers import parallelize

        parallelize(model, *shard.vocab_rows(model.config.vocab_size), tensor_parallel.all_reduce)
        parallel.mark(model, tensor_parallel)
    config = model.config
    tokenizer = tokenizer_from_path(tokenizer_path) if tokenizer_path else _tokenizer_for(layout, config)
    if tokenizer.n_vocab > config.vocab_size:
        raise LLMGenError(f"the tokenizer has {tokenizer.n_vocab} tokens but the model's vocabulary only "
                          f"{config.vocab_size}: they do not belong together")
    return LoadedModel(model, tokenizer, config, layout.kind, Path(path), time.perf_counter() - started,
                       quantized_from=source, cache_written=cache_written, cache_problem=cache_problem)


def _bf16_on_kernels(model: torch.nn.Module, on_cpu: bool, own_kernels: bool) -> bool:
    """Whether a float checkpoint runs as stored on llmgen's bf16 kernel (quantize.bf16_on_kernels): a
    LLaMA-family model whose weights are bfloat16, on a CPU where the kernels run."""
    from llmgen import kernels

    return (on_cpu and own_kernels and model.config.arch == "llama" and model.norm.weight.dtype == torch.bfloat16
            and kernels.library() is not None)


def _meta_tokenizer_path(directory: Path) -> Path | None:
    """A Meta-layout checkpoint's own tokenizer.model (beside it or one level up)."""
    return next((p for p in (directory / "tokenizer.model", directory.parent / "tokenizer.model") if p.is_file()), None)


def _stored_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """The checkpoint's precision: the dtype that holds most of its weights."""
    elements: dict[torch.dtype, int] = {}
    for t in tensors:
        elements[t.dtype] = elements.get(t.dtype, 0) + t.numel()
    return max(elements, key=elements.get) if elements else torch.float32


def _resolve_dtype(requested: str, stored: torch.dtype, device: str) -> torch.dtype:
    if requested != "auto":
        if requested not in DTYPES:
            raise UsageError(f"unknown dtype {requested!r}; choose auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    # Keep the checkpoint's precision, except float16 on a CPU, where it has no fast kernels.
    if stored == torch.float16 and not str(device).startswith("cuda"):
        return torch.float32
    return stored if stored in DTYPES.values() else torch.float32


# --- Meta layout -----------------------------------------------------------------------------------

def _read_meta(directory: Path, keep_parts: bool = False) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """keep_parts: a checkpoint in model-parallel files keeps each split tensor's parts apart
    (ModelParallelParts), for a tensor-parallel rank to cut its own part from."""
    params = read_json(directory / "params.json")
    shard_paths = sorted(directory.glob("consolidated.*.pth"))
    if not shard_paths:
        raise LLMGenError(f"{directory} has params.json but no consolidated.*.pth weights")
    shards = [read_shards([p]) for p in shard_paths]
    state = shards[0] if len(shards) == 1 else _merge_model_parallel(shards, join=not keep_parts)
    state.pop("rope.freqs", None)  # Llama 2 era checkpoints carry precomputed RoPE frequencies
    config = LlamaConfig.from_meta(params, tie_embeddings="output.weight" not in state)
    return config, state


def _merge_model_parallel(shards: list[dict[str, torch.Tensor]], join: bool = True) -> dict[str, torch.Tensor]:
    """Concatenate model-parallel shards along each tensor's split dimension (maps.META_SHARD_DIM); with
    join False, leave them side by side, unread (ModelParallelParts)."""
    merged = {}
    for name in shards[0]:
        parts = [shard.get(name) for shard in shards]
        if any(p is None for p in parts):
            raise LLMGenError(f"tensor {name!r} is missing from some of the consolidated.*.pth shards")
        dim = maps.META_SHARD_DIM.get(maps.strip_layer(name))
        if dim is None:
            merged[name] = parts[0]
        elif any(p.dim() <= dim or p.shape[:dim] + p.shape[dim + 1:] != parts[0].shape[:dim] + parts[0].shape[dim + 1:]
                 for p in parts):
            raise LLMGenError(f"tensor {name!r} has parts of shapes that do not join along dimension {dim}")
        else:
            merged[name] = torch.cat(parts, dim=dim) if join else ModelParallelParts(parts, dim)
    return merged


@dataclass
class ModelParallelParts:
    """One tensor of a checkpoint saved as model-parallel parts (Meta's consolidated.NN.pth), side by side
    along `dim` and not joined: a tensor-parallel rank reads only the pieces its own part covers (Llama 3
    70B's eight files are 140 GB; each of eight ranks then reads one)."""

    parts: list[torch.Tensor]
    dim: int

    @property
    def shape(self) -> torch.Size:
        size = list(self.parts[0].shape)
        size[self.dim] = sum(p.shape[self.dim] for p in self.parts)
        return torch.Size(size)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """As Tensor.narrow: a view of one part where the range lies within it, else the pieces joined."""
        if dim != self.dim:
            return torch.cat([p.narrow(dim, start, length) for p in self.parts], dim=self.dim)
        pieces, first = [], 0
        for part in self.parts:
            size = part.shape[dim]
            low, high = max(start, first), min(start + length, first + size)
            if low < high:
                pieces.append(part.narrow(dim, low - first, high - low))
            first += size
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


# --- Hugging Face layout ---------------------------------------------------------------------------

def _read_hf(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and tensors by llmgen's names; q/k rows still in Hugging Face's order (reorder_rope_rows)."""
    hf_config = read_json(directory / "config.json")
    model_type = hf_config.get("model_type")
    state = read_shards(_hf_weight_files(directory))
    if model_type == "gpt2":
        return GPT2Config.from_hf(hf_config), _rename(
            {k.removeprefix("transformer."): v for k, v in state.items()},
            {k.removeprefix("transformer."): v for k, v in maps.HF_GPT2.items()},
            transposed=maps.HF_GPT2_TRANSPOSED, ignored=maps.HF_GPT2_IGNORED,
        )
    if model_type in HF_LLAMA_FAMILIES:
        config = LlamaConfig.from_hf(hf_config)
        if model_type == "phi3":
            state = _split_phi3(state, config)
        ignored = set(maps.HF_LLAMA_IGNORED) | ({"lm_head.weight"} if config.tie_embeddings else set())
        if model_type == "gemma3_text":
            # Gemma's RMSNorm scales by (1 + weight): stored here as the weight llmgen's RMSNorm multiplies by.
            state = {k: v.float() + 1 if "norm" in k.rsplit(".", 2)[-2] else v for k, v in state.items()}
            return config, _rename(state, maps.HF_GEMMA3, ignored=ignored)
        return config, _rename(state, maps.HF_LLAMA, ignored=ignored)
    raise LLMGenError(f"{directory / 'config.json'}: model_type {model_type!r:.40} is not supported "
                      f"(gpt2, {', '.join(HF_LLAMA_FAMILIES)})")


def reorder_rope_rows(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face LLaMA-family checkpoint's q/k rows (maps.LLAMA_ROPE_PERMUTED) into RoPE's interleaved
    pairs, for the heads config has (a tensor-parallel rank's, once cut)."""
    heads = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "one_head": 1}
    reordered = {}
    for name, tensor in state.items():
        count = maps.LLAMA_ROPE_PERMUTED.get(maps.strip_layer(name))
        if count is not None:
            _require_rows(name, tensor, 2 * heads[count])
            tensor = _unpermute_rope(tensor, heads[count], config.rotary_dim)
        reordered[name] = tensor
    return reordered


def _split_phi3(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Phi-3 stores q, k and v as one qkv_proj and gate and up as one gate_up_proj: split them by rows into
    the names the LLaMA map knows (views: nothing is copied)."""
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    split = {}
    for name, tensor in state.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            _require_rows(name, tensor, 1)
            if tensor.dim() != 2 or tensor.size(0) != q_rows + 2 * kv_rows:
                raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not q, k and v's "
                                  f"{q_rows + 2 * kv_rows} rows")
            prefix = name.removesuffix("qkv_proj.weight")
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), tensor.split((q_rows, kv_rows, kv_rows))):
                split[f"{prefix}{part}.weight"] = rows
        elif name.endswith("mlp.gate_up_proj.weight"):
            if tensor.dim() != 2 or tensor.size(0) != 2 * config.ffn_dim:
                raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not gate and up's "
                                  f"{2 * config.ffn_dim} rows")
            prefix = name.removesuffix("gate_up_proj.weight")
            split[f"{prefix}gate_proj.weight"], split[f"{prefix}up_proj.weight"] = tensor.chunk(2)
        else:
            split[name] = tensor
    return split


def _hf_weight_files(directory: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            return shards_from_index(directory / index)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    return sorted(directory.glob("model-*-of-*.safetensors"))


def _rename(state: dict[str, torch.Tensor], table: dict[str, str], *, transposed=frozenset(),
            ignored=frozenset()) -> dict[str, torch.Tensor]:
    """Checkpoint names -> ours through a template table; reshape what the maps say must be reshaped."""
    renamed, unexpected = {}, []
    for name, tensor in state.items():
        template = re.sub(r"\.\d+\.", ".{}.", name, count=1)
        layer = re.search(r"\.(\d+)\.", name)
        if any(name == s or name.endswith("." + s) for s in ignored):
            continue
        if template not in table:
            unexpected.append(name)
            continue
        if any(name.endswith(s) for s in transposed):
            _require_matrix(name, tensor, 1)
            tensor = tensor.t()  # a view: made contiguous once sharded (_load_weights), copying only a shard
        renamed[table[template].format(layer.group(1) if layer else "")] = tensor
    if unexpected:
        raise LLMGenError(_names_error("has unexpected tensor", unexpected))
    return renamed


def _require_matrix(name: str, tensor: torch.Tensor, rows_multiple_of: int) -> None:
    """Before reshaping a tensor the maps say to reshape: it must be a matrix of the expected rows."""
    if tensor.dim() != 2 or tensor.size(0) % rows_multiple_of:
        raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not a matrix with rows in "
                          f"multiples of {rows_multiple_of}")


def _require_rows(name: str, tensor: torch.Tensor, rows_multiple_of: int) -> None:
    """A matrix or vector (a bias, a norm's weight) whose rows come in multiples of rows_multiple_of."""
    if tensor.dim() not in (1, 2) or tensor.size(0) % rows_multiple_of:
        raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not rows in multiples of "
                          f"{rows_multiple_of}")


def _names_error(what: str, names: list[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"the checkpoint {what} {names[0]!r}{more}"


def _unpermute_rope(weight: torch.Tensor, n_heads: int, rotary_dim: int | None = None) -> torch.Tensor:
    """HF's q/k rows (n_heads, 2, head_dim/2, dim) -> Meta's interleaved (n_heads, head_dim/2, 2, dim);
    a vector (bias, norm weight) as a matrix of one column. With partial RoPE only each head's first
    rotary_dim rows are in halves; the rows after them pass through, and stay."""
    if weight.dim() == 1:
        return _unpermute_rope(weight[:, None], n_heads, rotary_dim)[:, 0].contiguous()
    rows, cols = weight.shape
    head_dim = rows // n_heads
    rotary_dim = rotary_dim or head_dim
    if rotary_dim > head_dim or rotary_dim % 2 or head_dim % 2:
        raise LLMGenError(f"a q/k tensor of {rows} rows has heads of {head_dim}, which cannot turn "
                          f"{rotary_dim} dimensions each (check the config's heads and partial_rotary_factor)")
    if rotary_dim == head_dim:
        return weight.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)
    heads = weight.view(n_heads, head_dim, cols)
    turned = heads[:, :rotary_dim].reshape(n_heads, 2, rotary_dim // 2, cols).transpose(1, 2)
    return torch.cat((turned.reshape(n_heads, rotary_dim, cols), heads[:, rotary_dim:]), dim=1).reshape(rows, cols)


# --- into the module ---------------------------------------------------------------------------------

def _assign(config: ModelConfig, state: dict[str, object]) -> torch.nn.Module:
    """Check names and shapes against the config, then assign the tensors; weights kept as stored stay
    out (see _load_weights)."""
    _check_layers(config, state)
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and (not tensor.is_floating_point() or tensor.layout != torch.strided):
            raise LLMGenError(f"tensor {name!r} holds {tensor.dtype} ({tensor.layout}), not dense floating-point "
                              "weights")
    model = _checked_meta_model(config, {name: tuple(tensor.shape) for name, tensor in state.items()})
    tensors = {name: t for name, t in state.items() if isinstance(t, torch.Tensor)}
    model.load_state_dict(tensors, strict=len(tensors) == len(state), assign=True)
    return model


def check_shapes(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """The tensors a config implies, by llmgen's names, against a checkpoint's: each there, in its shape,
    and no other (for a checkpoint read without building a model: `llmgen quantize`)."""
    _check_layers(config, shapes)
    _checked_meta_model(config, shapes)


def _check_layers(config: ModelConfig, names) -> None:
    """The layers the tensors hold against the config's count, first: a hostile n_layers of 10**9 must not
    build a model of that size before the names disagree."""
    layers = {int(m.group(1)) for name in names if (m := LAYER_INDEX.match(name))}
    if layers != set(range(config.n_layers)):
        raise LLMGenError(f"the config says {config.n_layers} layers, but the checkpoint holds tensors for "
                          f"{len(layers)} (layer numbers {min(layers, default=0)}-{max(layers, default=0)})")


def _checked_meta_model(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """The model built on the meta device, once the checkpoint's names and shapes are its own."""
    with torch.device("meta"), _no_random_init():
        model = build_model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise LLMGenError(_names_error("is missing tensor", missing))
    unexpected = [k for k in shapes if k not in expected]
    if unexpected:
        raise LLMGenError(_names_error("has unexpected tensor", unexpected))
    for name, shape in shapes.items():
        if tuple(shape) != tuple(expected[name].shape):
            raise LLMGenError(f"tensor {name!r} has shape {list(shape)}, but the config implies "
                              f"{list(expected[name].shape)}")
    return model


@contextmanager
def _no_random_init():
    """Build modules without their random initialisation: every weight comes from the checkpoint, and on
    the meta device nn.Embedding's normal_ goes through a decomposition that imports torch._dynamo
    (about 2 s, most of a small model's load time)."""
    classes = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    saved = [cls.reset_parameters for cls in classes]
    for cls in classes:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, method in zip(classes, saved):
            cls.reset_parameters = method


def model_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer that goes with a model (a GGUF file's metadata, or a directory's tokenizer files),
    without reading its weights."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return gguf_tokenizer(GGUFFile(path))
    return tokenizer_from_path(path)


def _tokenizer_for(layout: Layout, config: ModelConfig) -> Tokenizer:
    if layout.gguf_file is not None:
        return gguf_tokenizer(layout.gguf_file)
    directory = layout.directory
    for loader in MODEL_VOCABULARIES:  # tokenizer.model, tokenizer.json, vocab.json + merges.txt
        if (tokenizer := loader(directory)) is not None:
            return tokenizer
    if (directory.parent / "tokenizer.model").is_file():  # Meta's layout: the shards in a subdirectory
        return load_llama3(directory.parent / "tokenizer.model")
    # No tokenizer shipped with the weights: the family's standard one, when the vocabulary fits it.
    if config.arch == "gpt2":
        return get_tokenizer("gpt2")
    if config.vocab_size >= 128256:
        return get_tokenizer("llama3")
    raise LLMGenError(f"no tokenizer found with the model in {directory}; pass --tokenizer PATH")
