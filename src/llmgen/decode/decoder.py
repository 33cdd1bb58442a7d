"""A Decoder: one-token decode steps for a loaded model, over the plan of its family's decode module."""

from __future__ import annotations

from types import ModuleType

import torch

from llmgen.models import Model
from llmgen.models.kv_cache import DecodeWindow


def family(model: Model) -> ModuleType:
    """The decode module of a model's architecture."""
    from llmgen.decode import gpt2, llama

    return {"llama": llama, "gpt2": gpt2}[model.config.arch]


class Decoder:
    """(token, pos) -> (vocab,) float32 logits, after model.setup_cache and a prefill up to pos.

    The plan of plain functions a step runs over is built on the first step after each setup_cache.
    """

    def __init__(self, model: Model, name: str, reason: str, use_kernels: bool = False,
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
