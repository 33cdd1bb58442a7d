"""What the commands that sample (generate, chat) check and build alike from their options."""

from __future__ import annotations

from llmgen.errors import UsageError


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < 2**64:
        raise UsageError(f"--seed must be an integer from 0 to 2**64 - 1, got {seed}")


def sampling_settings(where: str = "", **options):
    """generation.SamplingSettings from option values; an out-of-range one is a usage error."""
    from llmgen.generation import SamplingSettings

    try:
        return SamplingSettings(**options)
    except ValueError as e:
        raise UsageError(f"{where}{e}") from None


def seeded_generator(seed: int | None, device: str = "cpu"):
    """A torch.Generator seeded with `seed`, or from the system's entropy without one."""
    import torch

    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator
