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
from types import ModuleType

import torch

from llmgen import kernels, parallel
from llmgen.models.kv_cache import DecodeWindow


def family(model: torch.nn.Module) -> ModuleType:
    """The decode module of a model's architecture."""
    from llmgen.decode import gpt2, llama

    return {"llama": llama, "gpt2": gpt2}[model.config.arch]


class Decoder:
    """(token, pos) -> (vocab,) float32 logits, after model.setup_cache and a prefill up to pos.

    The plan of plain functions a step runs over is built on the first step after each setup_cache.
    """

    def __init__(self, model: torch.nn.Module, name: str, reason: str, use_kernels: bool = False,
                 window_step: int = DecodeWindow.STEP):
        self.model, self.name, self.reason = model, name, reason
        self.family, self.use_kernels, self.window_step = family(model), use_kernels, window_step
        self.device = next(model.parameters()).device
        self.plan = None

    def __repr__(self) -> str:
        return f"decoder: {self.name} ({self.reason})"

    def cache_length(self, needed: int) -> int:
        """The cache to set up for `needed` positions."""
        return needed

    def current_plan(self):
        if self.plan is None or self.plan.caches[0] is not self.family.first_cache(self.model):
            self.plan = self.family.Plan.of(self.model, self.window_step, self.use_kernels)
        return self.plan

    def __call__(self, token: int, pos: int) -> torch.Tensor:
        plan = self.current_plan()
        token_t, pos_t = torch.tensor([token], device=self.device), torch.tensor([pos], device=self.device)
        if self.use_kernels:
            return self.family.kernel_step(self.model, plan, token_t, pos_t)
        return self.step(token_t, pos_t, plan.window.at(pos))

    def step(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.family.pytorch_step(self.model, self.plan, token, pos, mask)


def choose_decoder(model: torch.nn.Module, *, compile: bool = False) -> Decoder:
    """The decoder a loaded model gets: llmgen's kernels where they run it, else PyTorch's ops;
    torch.compile when asked (on PyTorch's kernels: load with own_kernels=False)."""
    if compile:
        from llmgen.decode.compiled import CompiledDecoder

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
