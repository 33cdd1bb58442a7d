"""From a path on disk to a ready model and its tokenizer.

Detect the layout from the files present (weights/layout.py), read the config and the tensors memory-mapped
(weights/meta.py, hf.py, gguf_model.py), check names and shapes strictly (weights/shapes.py), build the module
on the meta device and assign the tensors into it; then quantize (quantization/) and, for a tensor-parallel
rank, keep only its shard (parallel/).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmgen.config import LlamaConfig, ModelConfig
from llmgen.errors import LLMGenError, UsageError
from llmgen.models import Model
from llmgen.models.llama import Llama
from llmgen.parallel.shard import Shard, build_config, local_config, shard_state
from llmgen.quantization.bf16 import bf16_on_kernels
from llmgen.quantization.model import QUANTIZATIONS, quantize_model
from llmgen.tokenization.files import MODEL_VOCABULARIES, tokenizer_from_path
from llmgen.tokenization.tiktoken_files import get_tokenizer, load_llama3
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.weights import maps
from llmgen.weights.gguf_model import read_llama_gguf
from llmgen.weights.gguf_vocab import gguf_tokenizer
from llmgen.weights.hf import read_hf, rename, reorder_rope_rows
from llmgen.weights.layout import Layout, detect_layout, meta_tokenizer_path
from llmgen.weights.memory import check_memory
from llmgen.weights.meta import read_meta
from llmgen.weights.shapes import check_layers, checked_meta_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: Model
    tokenizer: Tokenizer
    config: ModelConfig
    layout: str  # "meta", "hf" or "gguf"
    path: Path
    load_seconds: float
    # --quantize int4/int8 on a float checkpoint: the source it was quantized from (quantization/cache.py),
    # and whether this run wrote it.
    quantized_from: Path | None = None
    cache_written: bool = False
    cache_problem: str | None = None  # why the cache could not be used (then it was quantized in memory)


def load_weights(path: Path, *, device: str = "cpu", dtype: str = "auto") -> tuple[Model, Layout]:
    """The model module with its checkpoint's weights (all dequantized), in eval mode on `device`."""
    model, layout, _ = _load_weights(path, device, dtype, keep_quantized=False)
    return model, layout


def _load_weights(path: Path, device: str, dtype: str, keep_quantized: bool, shard: Shard | None = None
                  ) -> tuple[Model, Layout, dict[str, Any]]:
    """With keep_quantized, a GGUF file's quantized matrices (and embedding) come back as stored, by
    parameter name, and their modules stay empty (on the meta device) for quantize_model to fill.
    shard: only a tensor-parallel rank's part of each weight is read (parallel/shard.py); the model's config
    then has the rank's heads and MLP width."""
    layout = detect_layout(Path(path))
    # By llmgen's names: tensors, and what stays as stored until used (model-parallel parts, GGUF blocks).
    state: dict[str, Any]
    config: ModelConfig
    if layout.kind == "meta":
        config, state = read_meta(layout.directory, keep_parts=shard is not None)
    elif layout.kind == "gguf":
        config, state, layout.gguf_file = read_llama_gguf(layout.directory, keep_quantized=keep_quantized)
        state = rename(state, maps.GGUF_LLAMA)
    else:
        config, state = read_hf(layout.directory)
    if shard is not None:
        local = local_config(config, shard)  # refuses a split that does not come out even
        state, config = shard_state(config, state, shard), local
    if layout.kind == "hf" and isinstance(config, LlamaConfig):  # after sharding: a rank reorders only its own heads
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
    """Weights (quantized as asked, see quantization/model.py) and the tokenizer that goes with them.

    quantize "auto" keeps a GGUF file's quantized weights as stored on a CPU (on llmgen's kernels), and
    everything else as stored; "int4" also quantizes float matrices to 4 bits.
    own_kernels=False: PyTorch's int4 kernel instead of llmgen's (for torch.compile; see quantize_model).
    cache_quantized: int4/int8 on a Meta-layout checkpoint (or a Hugging Face LLaMA weights/sources.py reads)
    quantize it once into a cached GGUF file and run that (quantization/cache.py), instead of quantizing in
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
        from llmgen.weights.sources import writable

        source = layout.directory if writable(layout.directory) else None
    cache_problem = None
    if source is not None:
        from llmgen.quantization.cache import CacheUnwritable, quantized_copy

        try:
            cached, cache_written = quantized_copy(source, quantize)
        except CacheUnwritable as e:
            cache_problem, source = str(e), None
        else:
            tokenizer_path = tokenizer_path or meta_tokenizer_path(source) or source  # the source's own tokenizer
            path, quantize = cached, "auto"  # the cached file's blocks, kept as stored
    shard = None if tensor_parallel is None else tensor_parallel.shard
    model, layout, stored = _load_weights(path, device, dtype, keep_quantized=on_cpu and quantize in ("auto", "int4"),
                                          shard=shard)
    if quantize == "auto":
        quantize = "int4" if stored else "bf16" if _bf16_on_kernels(model, on_cpu, own_kernels) else "none"
    if quantize == "bf16" and isinstance(model, Llama):  # (_bf16_on_kernels takes LLaMA-family models only)
        bf16_on_kernels(model, own_kernels)
    elif quantize != "none":
        quantize_model(model, quantize, stored, own_kernels)
    if tensor_parallel is not None:
        from llmgen import parallel
        from llmgen.parallel.layers import parallelize

        first, stop = tensor_parallel.shard.vocab_rows(model.config.vocab_size)
        parallelize(model, first, stop, tensor_parallel.all_reduce)
        parallel.mark(model, tensor_parallel)
    config = model.config
    tokenizer = tokenizer_from_path(tokenizer_path) if tokenizer_path else _tokenizer_for(layout, config)
    if tokenizer.n_vocab > config.vocab_size:
        raise LLMGenError(f"the tokenizer has {tokenizer.n_vocab} tokens but the model's vocabulary only "
                          f"{config.vocab_size}: they do not belong together")
    return LoadedModel(model, tokenizer, config, layout.kind, Path(path), time.perf_counter() - started,
                       quantized_from=source, cache_written=cache_written, cache_problem=cache_problem)


def _bf16_on_kernels(model: Model, on_cpu: bool, own_kernels: bool) -> bool:
    """Whether a float checkpoint runs as stored on llmgen's bf16 kernel (quantization/bf16.bf16_on_kernels): a
    LLaMA-family model whose weights are bfloat16, on a CPU where the kernels run."""
    from llmgen import kernels

    return (on_cpu and own_kernels and isinstance(model, Llama) and model.norm.weight.dtype == torch.bfloat16
            and kernels.library() is not None)


def _stored_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """The checkpoint's precision: the dtype that holds most of its weights."""
    elements: dict[torch.dtype, int] = {}
    for t in tensors:
        elements[t.dtype] = elements.get(t.dtype, 0) + t.numel()
    return max(elements, key=lambda dtype: elements[dtype]) if elements else torch.float32


def _resolve_dtype(requested: str, stored: torch.dtype, device: str) -> torch.dtype:
    if requested != "auto":
        if requested not in DTYPES:
            raise UsageError(f"unknown dtype {requested!r}; choose auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    # Keep the checkpoint's precision, except float16 on a CPU, where it has no fast kernels.
    if stored == torch.float16 and not str(device).startswith("cuda"):
        return torch.float32
    return stored if stored in DTYPES.values() else torch.float32


def _assign(config: ModelConfig, state: dict[str, Any]) -> Model:
    """Check names and shapes against the config, then assign the tensors; weights kept as stored stay
    out (see _load_weights)."""
    check_layers(config, state)
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and (not tensor.is_floating_point() or tensor.layout != torch.strided):
            raise LLMGenError(f"tensor {name!r} holds {tensor.dtype} ({tensor.layout}), not dense floating-point "
                              "weights")
    model = checked_meta_model(config, {name: tuple(tensor.shape) for name, tensor in state.items()})
    tensors = {name: t for name, t in state.items() if isinstance(t, torch.Tensor)}
    model.load_state_dict(tensors, strict=len(tensors) == len(state), assign=True)
    return model


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
