"""Pure nn.Modules: math only, no I/O, no printing."""

from llmgen.models.gpt2 import GPT2
from llmgen.models.llama import Llama

__all__ = ["GPT2", "Llama", "Model", "build_model"]

Model = GPT2 | Llama  # what build_model makes: every decoder, loader and generator takes one


def build_model(config) -> Model:
    """The module for a config (GPT2Config or LlamaConfig)."""
    return {"gpt2": GPT2, "llama": Llama}[config.arch](config)
