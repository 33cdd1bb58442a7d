"""llmgen: command-line text generation with GPT-2 and LLaMA-3-family models written in PyTorch."""

__version__ = "0.1.0"
