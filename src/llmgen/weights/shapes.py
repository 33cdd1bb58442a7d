"""A checkpoint's tensor names and shapes against what its config implies, checked before anything is built or
written: the model is built on the meta device (no memory, no random init) for its state dict's shapes."""
from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from llmgen.config import ModelConfig
from llmgen.errors import LLMGenError
from llmgen.models import Model, build_model

LAYER_INDEX = re.compile(r"(?:layers|h)\.(\d+)\.")  # our names: layers.N. (LLaMA), h.N. (GPT-2)


def check_shapes(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """The tensors a config implies, by llmgen's names, against a checkpoint's: each there, in its shape,
    and no other (for a checkpoint read without building a model: `llmgen quantize`)."""
    check_layers(config, shapes)
    checked_meta_model(config, shapes)


def check_layers(config: ModelConfig, names) -> None:
    """The layers the tensors hold against the config's count, first: a hostile n_layers of 10**9 must not
    build a model of that size before the names disagree."""
    layers = {int(m.group(1)) for name in names if (m := LAYER_INDEX.match(name))}
    if layers != set(range(config.n_layers)):
        raise LLMGenError(f"the config says {config.n_layers} layers, but the checkpoint holds tensors for "
                          f"{len(layers)} (layer numbers {min(layers, default=0)}-{max(layers, default=0)})")


def checked_meta_model(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> Model:
    """The model built on the meta device, once the checkpoint's names and shapes are its own."""
    with torch.device("meta"), no_random_init():
        model = build_model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise LLMGenError(names_error("is missing tensor", missing))
    unexpected = [k for k in shapes if k not in expected]
    if unexpected:
        raise LLMGenError(names_error("has unexpected tensor", unexpected))
    for name, shape in shapes.items():
        if tuple(shape) != tuple(expected[name].shape):
            raise LLMGenError(f"tensor {name!r} has shape {list(shape)}, but the config implies "
                              f"{list(expected[name].shape)}")
    return model


@contextmanager
def no_random_init():
    """Build modules without their random initialisation: every weight comes from the checkpoint, and on
    the meta device nn.Embedding's normal_ goes through a decomposition that imports torch._dynamo
    (about 2 s, most of a small model's load time)."""
    classes = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    saved = [cls.reset_parameters for cls in classes]
    for cls in classes:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, method in zip(classes, saved):
            cls.reset_parameters = method


def names_error(what: str, names: list[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"the checkpoint {what} {names[0]!r}{more}"
