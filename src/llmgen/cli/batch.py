"""`llmgen generate --batch FILE.jsonl`: many prompts through one loaded model, one JSON result per line.

Each input line is a JSON object: "prompt" (required) and any of "max_new_tokens", "temperature",
"top_k", "top_p", "seed", "stop" (a string or a list of them), overriding the command's options for that
line. Results come in input order, each written as soon as it is done. The whole input is read and
checked before the model loads, so a bad line fails at once. The prompts run one after another on the
one model (decode steps are one token of one sequence on llmgen's kernels); what --batch saves is loading
the model for each (benchmarks/batch_throughput.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from llmgen.cli.text_input import check_utf8, read_text_file
from llmgen.errors import UsageError

OPTIONS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int, "stop": list}


@dataclass
class BatchItem:
    prompt: str
    options: dict = field(default_factory=dict)


def read_batch(source: str) -> list[BatchItem]:
    """The items of a JSON-lines file (or '-': stdin), each checked; blank lines are skipped."""
    text = read_text_file(source, "--batch")
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_item(line, number))
    if not items:
        raise UsageError(f"--batch {source} holds no prompts")
    return items


def _item(line: str, number: int) -> BatchItem:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise UsageError(f"--batch line {number} is not a JSON object") from None
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), str) or not value["prompt"]:
        raise UsageError(f"--batch line {number} needs a non-empty \"prompt\" string")
    unknown = sorted(set(value) - {"prompt", *OPTIONS})
    if unknown:
        raise UsageError(f"--batch line {number}: unknown key {unknown[0]!r} (known: prompt, {', '.join(OPTIONS)})")
    options = {}
    for key, kind in OPTIONS.items():
        if key not in value:
            continue
        option = value[key]
        if key == "stop" and isinstance(option, str):
            option = [option]
        valid = (isinstance(option, list) and all(isinstance(s, str) for s in option) if kind is list else
                 isinstance(option, int) and not isinstance(option, bool) if kind is int else
                 isinstance(option, (int, float)) and not isinstance(option, bool) and math.isfinite(option))
        if not valid:
            raise UsageError(f"--batch line {number}: {key} must be {'a list of strings' if kind is list else kind.__name__}")
        options[key] = option
    if "seed" in options and not 0 <= options["seed"] < 2**64:
        raise UsageError(f"--batch line {number}: seed must be from 0 to 2**64 - 1")
    for text in [value["prompt"], *options.get("stop", [])]:
        check_utf8(text, f"--batch line {number}")
    return BatchItem(value["prompt"], options)
