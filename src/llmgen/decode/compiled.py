"""Decode steps through torch.compile: `llmgen generate --compile` (opt-in).

A decode step on a small model is about a thousand tensor ops of a few microseconds of Python and
dispatch each. Inductor fuses the small ops between the matmuls into C++ kernels, and its C++ wrapper
calls them with no Python in between. That makes PyTorch's int4 steps a little faster, but compiling
takes minutes the first time on a machine and seconds in each later process (Inductor keeps its kernels
on disk), so it pays off only for long generations. It traces PyTorch ops only: models on llmgen's own
kernels (kernels/), faster again, are refused. benchmarks/RESULTS.md has the numbers. The graph is the
family's pytorch_step (decode/llama.py, decode/gpt2.py): the same code as the eager steps.
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch

from llmgen.decode.decoder import Decoder
from llmgen.errors import LLMGenError, first_line
from llmgen.models import Model

CACHE_STEP = 256  # KV caches are sized in steps of this, so that runs of similar length share one graph


class CompiledDecoder(Decoder):
    """The pytorch step compiled on its first call.

    Shapes must not change from step to step, or each position would compile anew: positions go in as
    tensors, and attention always covers the whole cache (unwritten positions are masked).
    """

    def __init__(self, model: Model):
        compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
        if not compiler:
            raise LLMGenError("--compile needs a C++ compiler (g++ or clang++; or set CXX)")
        if any(getattr(m, "own_kernel", False) for m in model.modules()):
            raise LLMGenError("--compile needs PyTorch's int4 kernel: load the model with own_kernels=False")
        # A window of the whole cache: the same shapes at every position.
        super().__init__(model, "torch.compile", "--compile: Inductor over PyTorch's ops",
                         window_step=model.config.context_length)
        self._compiled = torch.compile(self._pytorch_step, fullgraph=True, dynamic=False,
                                       options={"cpp_wrapper": True})

    def _pytorch_step(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.family.pytorch_step(self.model, self.plan, token, pos, mask)

    def cache_length(self, needed: int) -> int:
        """The cache to set up for `needed` positions: rounded up to CACHE_STEP, at most the context."""
        return min(-(-needed // CACHE_STEP) * CACHE_STEP, self.model.config.context_length)

    def step(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        try:
            with warnings.catch_warnings():  # Inductor's deprecation notices are not the user's business
                warnings.simplefilter("ignore")
                return self._compiled(token, pos, mask)
        except Exception as e:  # the compiler's own failures (no headers, a broken toolchain) are long
            raise LLMGenError(f"--compile failed: {first_line(e)[:300]}") from None
