"""Speculative decoding (--speculate ngram) against plain greedy on the default model, in one process run.

    python benchmarks/speculative.py [--rounds 3] [--new-tokens 160]

Three input-grounded tasks on real texts (a copy-edit of the GPL's preamble, a summary of llmgen's
README, a raw continuation of CPython's textwrap.py) and three open-ended prompts. Each round runs every
prompt plain and speculative, alternately; medians over rounds. The benchmark asserts that both give the
same ids (greedy, -t 0), and prints tokens/s (prefill excluded), the ratio, acceptance and tokens per pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GPL = Path("/usr/share/common-licenses/GPL-3")


def tasks() -> list[tuple[str, str, bool]]:
    """(name, prompt, chat) for each task."""
    preamble = GPL.read_text().split("Preamble", 1)[1][:1500] if GPL.is_file() else ""
    readme = (ROOT / "README.md").read_text()[:2500]
    code = Path(textwrap.__file__).read_text()
    cut = code.index("    def _split(")  # a method body that reuses the class's identifiers
    return [
        ("edit: GPL preamble", "Correct any errors in the following text and write it out in full:\n\n" + preamble,
         True),
        ("summary: README", "Summarize this README, quoting its commands:\n\n" + readme, True),
        ("code: textwrap.py", code[max(0, cut - 3000):cut + 40], False),
        ("open: story", "Write a short story about a lighthouse keeper.", True),
        ("open: explain", "Explain how a CPU cache works.", True),
        ("open: list", "Give me ten ideas for a weekend trip.", True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=160)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from llmgen.chat import chat_prompt_ids
    from llmgen.cli.model_path import resolve_model
    from llmgen.decode import choose_decoder
    from llmgen.generation import SamplingSettings, generate_ids
    from llmgen.loading import load_model
    from llmgen.speculative import NgramDrafter, SpeculationStats

    torch.set_num_threads(2)
    loaded = load_model(resolve_model(None)[0])
    model, tokenizer = loaded.model, loaded.tokenizer
    decoder = choose_decoder(model)
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0)

    def run(ids: list[int], speculate: bool) -> tuple[list[int], float, SpeculationStats]:
        stats, stamps = SpeculationStats(), []
        out = []
        for token in generate_ids(model, ids, settings, stop_ids=tokenizer.stop_ids, decoder=decoder,
                                  drafter=NgramDrafter() if speculate else None, speculation=stats):
            out.append(token)
            stamps.append(time.perf_counter())
        return out, (len(out) - 1) / (stamps[-1] - stamps[0]), stats

    print(f"{decoder!r}; {args.new_tokens} new tokens at most, greedy, 2 threads, medians of {args.rounds} rounds\n")
    print("| task | prompt tokens | tokens | plain tok/s | ngram tok/s | ratio | kept | tokens/pass |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, prompt, chat in tasks():
        ids = chat_prompt_ids(tokenizer, prompt, None) if chat else tokenizer.encode(prompt)
        plain_speeds, spec_speeds = [], []
        for _ in range(args.rounds):
            plain, plain_speed, _ = run(ids, False)
            spec, spec_speed, stats = run(ids, True)
            assert spec == plain, f"{name}: speculative output differs from plain greedy"
            plain_speeds.append(plain_speed)
            spec_speeds.append(spec_speed)
        p, s = statistics.median(plain_speeds), statistics.median(spec_speeds)
        print(f"| {name} | {len(ids)} | {len(plain)} | {p:.1f} | {s:.1f} | {s / p:.2f}x | "
              f"{100 * stats.acceptance:.0f}% | {stats.tokens_per_pass:.2f} |", flush=True)


if __name__ == "__main__":
    main()
