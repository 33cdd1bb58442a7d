"""The real SmolLM2 requantized to Q4_K_M, Q5_K_M, Q6_K and Q8_0: llmgen's float32 path against transformers,
and llmgen's quantized path against llama.cpp's on the same file.

    python benchmarks/kquant_quality.py [--text /usr/share/common-licenses/GPL-3] [--tokens 1024]

1. Parity: each file loaded with `--quantize none` (dequantized to float32) and by transformers' GGUF loader
   (float32), fed the same ids: greedy ids for 24 new tokens on prompts in English, code, Chinese and
   digits, and the largest logit difference over the prompt and the generated tokens.
2. Quality: one forward pass over the first --tokens tokens of a real text. The reference is the float32
   path's next-token choice at each position; "agreement" is the share of positions where a quantized
   engine picks the same: llmgen as it runs by default (blocks kept as stored, int8 activations) and
   llama.cpp on the same file (its own kernels, 8-bit activations).

Files come from kquant_files.py; needs transformers (test extras) and llama-cpp-python (`make bench-peers`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from llmgen.loading import load_model

PROMPTS = {
    "English": "The capital of France is",
    "code": "def fibonacci(n):\n    ",
    "Chinese": "武汉是一座历史悠久的城市，",
    "digits": "1, 2, 3, 5, 8, 13, 21,",
}
NEW_TOKENS = 24


def greedy(forward, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens by full forward passes (no cache: the same computation in both engines), and the
    logits at every position of prompt + new tokens but the last."""
    ids = list(prompt)
    for _ in range(n):
        logits = forward(torch.tensor([ids]))
        ids.append(int(logits[-1].argmax()))
    return ids[len(prompt):], forward(torch.tensor([ids[:-1]]))


def parity(path: Path) -> list[tuple[str, bool, float]]:
    from transformers import AutoModelForCausalLM, GgufConfig

    loaded = load_model(path, quantize="none")
    model = loaded.model
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    reference.eval()

    def ours(ids):
        model.setup_cache(1, ids.size(1))
        return model(ids, 0)[0]

    def theirs(ids):
        return reference(ids).logits[0]

    rows = []
    with torch.inference_mode():
        for name, text in PROMPTS.items():
            prompt = loaded.tokenizer.encode(text)
            our_ids, our_logits = greedy(ours, prompt, NEW_TOKENS)
            their_ids, their_logits = greedy(theirs, prompt, NEW_TOKENS)
            rows.append((name, our_ids == their_ids, (our_logits - their_logits).abs().max().item()))
    return rows


def top1(path: Path, ids: list[int]) -> dict[str, float]:
    from llama_cpp import Llama

    x = torch.tensor([ids])
    choices = {}
    with torch.inference_mode():
        for name, quantize in (("float32", "none"), ("llmgen", "auto")):
            model = load_model(path, quantize=quantize).model
            model.setup_cache(1, len(ids))
            choices[name] = model(x, 0)[0].argmax(-1).numpy()
    llm = Llama(model_path=str(path), n_ctx=len(ids) + 8, n_batch=512, logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids)
    choices["llama.cpp"] = np.asarray(llm.scores[:len(ids)]).argmax(-1)
    reference = choices.pop("float32")
    return {name: float((chosen == reference).mean()) for name, chosen in choices.items()}


def main() -> None:
    from common import machine
    from kquant_files import SMOLLM2_TYPES, smollm2_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(machine())
    files = {kind: smollm2_file(kind) for kind in SMOLLM2_TYPES}

    print(f"\n### --quantize none against transformers (float32, same ids), {NEW_TOKENS} greedy tokens\n")
    print("| file | " + " | ".join(PROMPTS) + " | largest logit difference |")
    print("|---|" + "---|" * (len(PROMPTS) + 1))
    for kind, path in files.items():
        rows = parity(path)
        same = " | ".join("same ids" if equal else "DIFFERENT" for _, equal, _ in rows)
        print(f"| {kind} | {same} | {max(d for _, _, d in rows):.1e} |", flush=True)

    tokenizer = load_model(files["Q8_0"], quantize="none").tokenizer
    ids = tokenizer.encode(args.text.read_text())[:args.tokens]
    print(f"\n### Top-1 agreement with the float32 path, {len(ids)} tokens of {args.text}\n")
    print("| file | llmgen (default) | llama.cpp | llmgen - llama.cpp |\n|---|---|---|---|")
    for kind, path in files.items():
        agreement = top1(path, ids)
        ours, theirs = agreement["llmgen"], agreement["llama.cpp"]
        print(f"| {kind} | {ours:.1%} | {theirs:.1%} | {100 * (ours - theirs):+.1f} points |", flush=True)


if __name__ == "__main__":
    main()
