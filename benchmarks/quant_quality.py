"""Quantized SmolLM2 against float32 on a fixed text: next-token agreement and perplexity.

    python benchmarks/quant_quality.py [--text /usr/share/common-licenses/GPL-3] [--tokens 1024]

The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) with its weights dequantized to float32, in int8,
and in 4 bits as stored on llmgen's own kernels (int8 activations) and on PyTorch's (bfloat16
activations). One forward pass over the first --tokens tokens of the text; agreement is the share of
positions whose most likely next token is float32's. tests/quantization/test_quantize.py asserts the same on a short
text (>= 90% agreement, < 0.1 change in log-perplexity).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llmgen import assets
from llmgen.loading import load_model

VARIANTS = {  # name -> load_model arguments
    "float32 (GGUF dequantized)": dict(quantize="none"),
    "int8 (per channel)": dict(quantize="int8"),
    "int4 as stored, llmgen's kernels": dict(quantize="auto"),
    "int4 as stored, PyTorch's kernel": dict(quantize="auto", own_kernels=False),
}


def main() -> None:
    from common import machine

    print(machine())
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = assets.locate("smollm2-135m-instruct-q4_1")
    logits, ids = {}, None
    for name, arguments in VARIANTS.items():
        loaded = load_model(path, **arguments)
        if ids is None:
            ids = torch.tensor([loaded.tokenizer.encode(args.text.read_text())[:args.tokens]])
        loaded.model.setup_cache(1, ids.size(1))
        with torch.inference_mode():
            logits[name] = loaded.model(ids, 0)[0]  # (T, vocab)
    reference = next(iter(logits.values())).argmax(-1)
    print(f"{ids.size(1)} tokens of {args.text}\n\n| weights | top-1 agreement with float32 | perplexity |\n|---|---|---|")
    for name, values in logits.items():
        agreement = (values.argmax(-1) == reference).float().mean().item()
        perplexity = math.exp(F.cross_entropy(values[:-1], ids[0, 1:]).item())
        print(f"| {name} | {agreement:.1%} | {perplexity:.2f} |")


if __name__ == "__main__":
    main()
