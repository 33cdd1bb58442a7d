"""What `llmgen quantize` reads: a LLaMA-architecture checkpoint (Meta's layout, a Hugging Face LLaMA or Mistral
directory with a byte-level BPE tokenizer.json, a GGUF file) as its config, tokenizer and tensors by llmgen's
names, each tensor read only when asked (memory-mapped, or one at a time through safe_open)."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.tokenization.vocab import LLAMA3_PATTERN
from llmgen.weights import maps
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.gguf_model import gguf_llama_config
from llmgen.weights.gguf_vocab import gguf_tokenizer
from llmgen.weights.layout import detect_layout, hf_weight_files, meta_tokenizer_path, model_tokenizer
from llmgen.weights.maps import GGUF_LLAMA
from llmgen.weights.memory import release_file_pages
from llmgen.weights.meta import merge_model_parallel
from llmgen.weights.readers import read_json, read_torch


@dataclass
class SourceTensor:
    """One tensor of the source under llmgen's (Meta's) name, read when asked."""

    name: str
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]
    release: Callable[[torch.Tensor], None] = lambda tensor: None  # after it was written


@dataclass
class Source:
    config: LlamaConfig
    tokenizer: Tokenizer
    tensors: list[SourceTensor]
    tokenizer_fields: dict[str, object] | None = None  # a GGUF source's tokenizer.* metadata, copied as is
    name: str = ""
    files: tuple[Path, ...] = ()  # what it is read from: the output must be none of them


def open_source(path: Path) -> Source:
    """A checkpoint in Meta's layout or a LLaMA-architecture GGUF file, its tensors not yet read."""

    layout = detect_layout(Path(path))
    if layout.kind == "meta":
        return _meta_source(layout.directory)
    if layout.kind == "gguf":
        return _gguf_source(layout.directory)
    return _hf_source(layout.directory)


def writable(directory: Path) -> bool:
    """Whether open_source reads this model directory: Meta's layout, or a Hugging Face LLaMA/Mistral with a
    byte-level BPE tokenizer.json whose pre-tokenizer llama.cpp names (checked without reading weights)."""
    import json


    layout = detect_layout(Path(directory))
    if layout.kind == "meta":
        return True
    if layout.kind != "hf":
        return False
    try:
        config = json.loads((layout.directory / "config.json").read_text(encoding="utf-8"))
        spec = json.loads((layout.directory / "tokenizer.json").read_text(encoding="utf-8"))
        return (config.get("model_type") in ("llama", "mistral") and spec["model"].get("type") == "BPE"
                and _pre_tokenizer_name(spec) is not None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return False


# A tokenizer.json's pre-tokenizer -> llama.cpp's name for it (tokenizer.ggml.pre), for the byte-level BPE
# vocabularies of LLaMA-architecture models: LLaMA-3's regex, SmolLM2's digits-then-GPT-2, GPT-2's.
def _pre_tokenizer_name(spec: dict) -> str | None:

    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts if isinstance(p, dict)]
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if isinstance(p, dict) and p.get("type") == "Split"]
    if kinds == ["Split", "ByteLevel"] and regexes == [LLAMA3_PATTERN]:
        return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    return None


def _hf_source(directory: Path) -> Source:
    """A Hugging Face LLaMA or Mistral directory: safetensors read one tensor at a time (q and k rows put
    back in Meta's order), the byte-level BPE tokenizer.json written as llama.cpp's "gpt2" vocabulary."""
    import json

    from llmgen.weights.hf import unpermute_rope

    hf_config = read_json(directory / "config.json")
    if hf_config.get("model_type") not in ("llama", "mistral"):
        raise LLMGenError(f"{directory}: llmgen quantize writes LLaMA-architecture models (model_type llama, mistral), "
                          f"not {hf_config.get('model_type')!r:.30}")
    config = LlamaConfig.from_hf(hf_config)
    tokenizer_json = directory / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise LLMGenError(f"{directory} has no tokenizer.json to write into the GGUF file")
    try:
        spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        model = spec["model"]
        vocab, merges = model["vocab"], model["merges"]
        assert model.get("type") == "BPE" and isinstance(vocab, dict) and isinstance(merges, list)
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError, RecursionError):
        raise LLMGenError(f"{tokenizer_json}: not a BPE tokenizer.json llmgen can write to GGUF") from None
    pre = _pre_tokenizer_name(spec)
    if pre is None:
        raise LLMGenError(f"{tokenizer_json}: its pre-tokenizer is not one llmgen can name for llama.cpp "
                          f"(LLaMA-3's, SmolLM2's or GPT-2's byte-level BPE)")

    tokenizer = model_tokenizer(directory)
    fields = _bpe_fields(vocab, merges, spec.get("added_tokens") or [], pre, tokenizer, config.vocab_size)

    heads = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "one_head": 1}
    tensors = []
    for path in hf_weight_files(directory):
        names_shapes, read_one = _lazy_tensors(path, read_torch)
        for name, shape in names_shapes:
            if name == "lm_head.weight" and config.tie_embeddings:
                continue
            template = re.sub(r"\.\d+\.", ".{}.", name, count=1)
            if template not in maps.HF_LLAMA:
                if any(name.endswith(ignored) for ignored in maps.HF_LLAMA_IGNORED):
                    continue
                raise LLMGenError(f"{path.name}: unexpected tensor {name!r:.80}")
            layer = re.search(r"\.(\d+)\.", name)
            ours = maps.HF_LLAMA[template].format(layer.group(1) if layer else "")
            permute = heads.get(maps.LLAMA_ROPE_PERMUTED.get(maps.strip_layer(ours), ""))

            def read(name=name, read_one=read_one, permute=permute):
                tensor = read_one(name)
                return tensor if permute is None else unpermute_rope(tensor, permute)

            tensors.append(SourceTensor(ours, shape, read))
    return Source(config, tokenizer, tensors, tokenizer_fields=fields, name=directory.name,
                  files=_files_in(directory))


def _files_in(*directories: Path) -> tuple[Path, ...]:
    """Every file of a model directory (weights, configs, tokenizer), for the same-file check."""
    return tuple(p for directory in directories for p in sorted(directory.iterdir()) if p.is_file())


def _lazy_tensors(path: Path, read_torch) -> tuple[list[tuple[str, tuple[int, ...]]], Callable[[str], torch.Tensor]]:
    """A weight file's tensor names and shapes, and a reader of one tensor: safetensors through
    safe_open (only that tensor's bytes are read), torch files memory-mapped."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(path), framework="pt")
            names = [(name, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()]
        except (SafetensorError, OSError, ValueError) as e:
            raise LLMGenError(f"{path.name} is not a readable safetensors file: {str(e)[:200]}") from None
        return names, handle.get_tensor
    state = read_torch(path)
    return [(name, tuple(t.shape)) for name, t in state.items()], state.__getitem__


def _bpe_fields(vocab: dict, merges: list, added: list, pre: str, tokenizer: Tokenizer, vocab_size: int
                ) -> dict[str, object]:
    """A byte-level BPE tokenizer.json as llama.cpp's "gpt2" vocabulary metadata: tokens by id (unused
    padding up to the embedding's rows), added special tokens as CONTROL, the merges as "a b"."""
    import gguf

    size = max([vocab_size, *(i + 1 for i in vocab.values() if isinstance(i, int))])
    tokens, types = [f"[PAD{i}]" for i in range(size)], [int(gguf.TokenType.UNUSED)] * size
    for token, i in vocab.items():
        if isinstance(i, int) and 0 <= i < size:
            tokens[i], types[i] = token, int(gguf.TokenType.NORMAL)
    for entry in added:
        i = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(i, int) and 0 <= i < size and isinstance(entry.get("content"), str):
            tokens[i] = entry["content"]
            types[i] = int(gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED)
    pairs = [m if isinstance(m, str) else " ".join(m) for m in merges]
    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": pairs,
              "tokenizer.ggml.add_bos_token": tokenizer.bos_id is not None}
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.declared_bos_id
    if bos is not None:
        fields["tokenizer.ggml.bos_token_id"] = bos
    if tokenizer.eos_id is not None:
        fields["tokenizer.ggml.eos_token_id"] = tokenizer.eos_id
    if tokenizer.chat_template:
        fields["tokenizer.chat_template"] = tokenizer.chat_template
    return fields


def _meta_source(directory: Path) -> Source:
    from llmgen.weights.readers import read_json, read_torch

    params = read_json(directory / "params.json")
    shard_paths = sorted(directory.glob("consolidated.*.pth"))
    if not shard_paths:
        raise LLMGenError(f"{directory} has params.json but no consolidated.*.pth weights")
    shards = [read_torch(p) for p in shard_paths]  # memory-mapped: nothing is read yet
    for shard in shards:
        shard.pop("rope.freqs", None)
    config = LlamaConfig.from_meta(params, tie_embeddings="output.weight" not in shards[0])
    tokenizer_path = meta_tokenizer_path(directory)
    if tokenizer_path is None:
        raise LLMGenError(f"{directory} has no tokenizer.model to write into the GGUF file")
    from llmgen.tokenization.tiktoken_files import load_llama3

    tokenizer = load_llama3(tokenizer_path)

    def reader(name: str) -> Callable[[], torch.Tensor]:
        if len(shards) == 1:
            return lambda: shards[0][name]
        return lambda: cast(torch.Tensor, merge_model_parallel([{name: shard[name]} for shard in shards])[name])

    def merged_shape(name: str, shape: torch.Size) -> tuple[int, ...]:  # model-parallel parts side by side
        dim = maps.META_SHARD_DIM.get(maps.strip_layer(name))
        return tuple(size * len(shards) if i == dim else size for i, size in enumerate(shape))

    tensors = [SourceTensor(name, merged_shape(name, tensor.shape), reader(name), release=release_file_pages)
               for name, tensor in shards[0].items()]
    return Source(config, tokenizer, tensors, name=directory.name,
                  files=_files_in(directory) + ((tokenizer_path,) if tokenizer_path.parent != directory else ()))


def _gguf_source(path: Path) -> Source:

    gguf_file = GGUFFile(path)
    if gguf_file.typed("general.architecture", str) != "llama":
        raise LLMGenError(f"{path.name}: llmgen quantize rewrites GGUF architecture llama only")
    config = gguf_llama_config(gguf_file)
    tensors = []
    for i, t in enumerate(gguf_file.tensors):
        if t.name == "rope_freqs.weight":  # in config.rope_freq_factors; written again from there
            continue
        template = re.sub(r"\.\d+\.", ".{}.", t.name, count=1)
        if template not in GGUF_LLAMA:
            raise LLMGenError(f"{path.name}: unexpected GGUF tensor {t.name!r:.80}")
        layer = re.search(r"\.(\d+)\.", t.name)
        ours = GGUF_LLAMA[template].format(layer.group(1) if layer else "")

        def read(i=i):
            return gguf_file.tensor(i)

        def release(tensor: torch.Tensor, t=t) -> None:
            gguf_file.release(t.offset, t.n_bytes)

        tensors.append(SourceTensor(ours, tuple(reversed(t.shape)), read, release))
    fields = {k: v for k, v in gguf_file.fields.items() if k.startswith("tokenizer.")}
    return Source(config, gguf_tokenizer(gguf_file), tensors, tokenizer_fields=fields,
                  name=str(gguf_file.get("general.name", path.stem)), files=(path,))
