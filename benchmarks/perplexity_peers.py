"""`llmgen perplexity` against llama.cpp's logits by the same method, and what quantization costs on SmolLM2.

    python benchmarks/perplexity_peers.py [--ctx 256] [--text /usr/share/common-licenses/GPL-3]

1. PPL of the default model (SmolLM2-135M-Instruct Q4_1) on a real text by `llmgen perplexity`, and by
   llama-perplexity's method computed here over llama.cpp's own logits (llama-cpp-python, logits_all):
   same tokens (llama.cpp's tokenizer), same chunks, same scored half. llama-cpp-python ships no
   llama-perplexity binary; the method is 20 lines (llmgen/perplexity.py cites the original).
2. `llmgen perplexity --reference`: the float32 model (the Q4_1 file dequantized, `--quantize none`)
   against Q4_1 as stored and requantized Q8_0 and Q4_K_M files (benchmarks/kquant_files.py): PPL, mean KL
   divergence, top-1 agreement.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def llama_cpp_perplexity(path: str, text: str, n_ctx: int) -> tuple[float, float, int]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else False
    bos = llm.token_bos()
    nlls = []
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = ids[start:start + n_ctx]
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            row = logits[j]
            top = row.max()
            nlls.append(-(row[chunk[j + 1]] - top - math.log(np.exp(row - top).sum())))
    nll = np.array(nlls)
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt(nll.var() / (len(nll) - 1)), len(ids)


def llmgen(*args: str) -> dict:
    done = subprocess.run(["llmgen", "perplexity", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    from kquant_files import smollm2_file

    from llmgen.cli.model_path import resolve_model

    default = str(resolve_model(None)[0])
    text = Path(args.text).read_text()
    ours = llmgen(default, args.text, "-c", str(args.ctx))
    theirs, theirs_error, their_tokens = llama_cpp_perplexity(default, text, args.ctx)
    print(f"text: {args.text}, chunks of {args.ctx}, {ours['chunks']} chunks, {ours['scored_tokens']} scored tokens\n")
    print("| engine | tokens | PPL |")
    print("| --- | ---: | ---: |")
    print(f"| llmgen perplexity | {ours['tokens']} | {ours['ppl']:.4f} ± {ours['ppl_error']:.4f} |")
    print(f"| llama.cpp logits, same method | {their_tokens} | {theirs:.4f} ± {theirs_error:.4f} |")
    print(f"\ndifference: {100 * (ours['ppl'] / theirs - 1):+.3f}%\n")
    print("| model vs float32 reference | PPL | mean KLD | same top token |")
    print("| --- | ---: | ---: | ---: |")
    for name, path, quantize in (("float32 (Q4_1 dequantized)", default, "none"), ("Q4_1 as stored", default, "auto"),
                                 ("Q8_0", str(smollm2_file("Q8_0")), "auto"),
                                 ("Q4_K_M", str(smollm2_file("Q4_K_M")), "auto")):
        r = llmgen(path, args.text, "-c", str(args.ctx), "-q", quantize, "--reference", default)
        print(f"| {name} | {r['ppl']:.4f} | {r['mean_kld']:.5f} ± {r['kld_error']:.5f} | "
              f"{100 * r['top1_agreement']:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
