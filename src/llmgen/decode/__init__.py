"""One-token decode steps, beside the models: which one runs, and why, is decided here and nowhere else.

The models (models/) are the math: one forward, used for prefill. A decode step computes the same
thing for one token over the KV cache, written flat for speed (decode/llama.py, decode/gpt2.py), on one
of three paths:
- "llmgen kernels (LEVEL)": llmgen's C++ kernels (kernels/) at the CPU's level (avx512, avx2, portable):
  a LLaMA's blocks in one call where every block is int4 on them, a GPT-2's attention per block;
- "pytorch": PyTorch's ops (any dtype, any device, int8 and PyTorch's int4 kernel);
- "torch.compile": the pytorch step compiled with Inductor (`generate --compile`, decode/compiled.py).
choose_decoder returns a Decoder for a loaded model with its name and the reason it was chosen;
`llmgen generate --stats` prints both.
"""

from __future__ import annotations

import os

from llmgen import kernels, parallel
from llmgen.decode.compiled import CompiledDecoder
from llmgen.decode.decoder import Decoder, family
from llmgen.models import Model

__all__ = ["CompiledDecoder", "Decoder", "choose_decoder", "family"]


def choose_decoder(model: Model, *, compile: bool = False) -> Decoder:
    """The decoder a loaded model gets: llmgen's kernels where they run it, else PyTorch's ops;
    torch.compile when asked (on PyTorch's kernels: load with own_kernels=False)."""
    if compile:
        return CompiledDecoder(model)
    device = next(model.parameters()).device
    if device.type != "cpu":
        return Decoder(model, "pytorch", f"the model is on {device.type}; llmgen's kernels are for CPUs")
    if kernels.library() is None:
        return Decoder(model, "pytorch", kernels.unavailable_reason() or "llmgen's kernels do not run here")
    if blocker := family(model).kernel_blocker(model):
        return Decoder(model, "pytorch", f"llmgen's kernels cannot run it: {blocker}")
    what = "every block's matmuls are on them" if model.config.arch == "llama" else "attention on them"
    if (sharded := parallel.of(model)) is not None:
        what += f", a tensor-parallel shard of {sharded.world} (all-reduces between the kernel calls)"
    level = kernels.level()
    why = "the CPU's best level" if _level_is_auto() else f"LLMGEN_KERNELS={level}"
    return Decoder(model, f"llmgen kernels ({level})", f"{what}; {why}", use_kernels=True)


def _level_is_auto() -> bool:
    return os.environ.get("LLMGEN_KERNELS", "auto").strip().lower() in ("", "auto", "1")
