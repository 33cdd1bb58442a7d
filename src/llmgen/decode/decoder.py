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

    @property
    def prompt_path(self) -> str:
        """How a block of tokens (a prompt, a speculative check) is computed, for --stats."""
        if not self.use_kernels:
            return "the model's forward"
        from llmgen import kernels

        if kernels.matmul_path(2) == "gemm":
            return "one call for each block of tokens, 4-bit matmuls as a GEMM (each weight unpacked once a tile of rows)"
        return "one call for each block of tokens, 4-bit matmuls a row at a time (GEMV)"

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

    def block(self, tokens: list[int], pos: int, last_only: bool = False) -> torch.Tensor:
        """tokens at positions pos.. (written into the caches) -> (len(tokens), vocab) float32 logits, or
        (1, vocab) for the last with last_only: a prompt's chunk, or a speculative check. On llmgen's kernels
        for a LLaMA, one call that computes each row bit for bit as __call__ would; else the model's forward."""
        tokens_t = torch.tensor(tokens, device=self.device)
        if self.use_kernels and hasattr(self.family, "kernel_block"):
            plan = self.current_plan()
            return self.family.kernel_block(self.model, plan, tokens_t, torch.tensor([pos]), last_only)
        return self.model(tokens_t[None], pos, last_only=last_only)[0].float()

    @property
    def batches_sequences(self) -> bool:
        """Whether rows() can step several sequences (cache slots) in one call."""
        return self.use_kernels and hasattr(self.family, "kernel_rows")

    def rows(self, tokens: list[int], positions: list[int], slots: list[int], logit_rows: list[int]) -> torch.Tensor:
        """Row m: tokens[m] at positions[m] of cache slot slots[m] (model.setup_cache(n_slots, ...)) ->
        (len(logit_rows), vocab) float32 logits of the rows listed, for continuous batching (batching.py).
        A slot's rows come in position order; each row is what that sequence alone would compute."""
        def longs(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)

        return self.family.kernel_rows(self.model, self.current_plan(), longs(tokens), longs(positions),
                                       longs(slots), longs(logit_rows))

    def prefill(self, tokens: list[int], pos: int, batch_size: int) -> torch.Tensor:
        """tokens at positions pos.., in chunks of at most batch_size (what a forward holds at once stays
        bounded on long prompts) -> the last token's (1, vocab) logits."""
        for start in range(0, len(tokens), batch_size):
            logits = self.block(tokens[start:start + batch_size], pos + start, last_only=True)
        return logits

    def step(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.family.pytorch_step(self.model, self.plan, token, pos, mask)
