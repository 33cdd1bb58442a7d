"""Pure nn.Modules: math only, no I/O, no printing."""

from llmgen.models.gpt2 import GPT2
from llmgen.models.llama import Llama

__all__ = ["GPT2", "Llama", "build_model"]


def build_model(config):
    """The module for a config (GPT2Config or LlamaConfig)."""
    return {"gpt2": GPT2, "llama": Llama}[config.arch](config)
