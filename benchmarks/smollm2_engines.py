"""The default model (SmolLM2-135M-Instruct, GGUF Q4_1) in llmgen, transformers and llama.cpp, side by side.

    python benchmarks/smollm2_engines.py [--rounds 3] [--new-tokens 64]

Set-up for the peers (not needed by llmgen): `pip install llama-cpp-python` (compiles llama.cpp, 10+
minutes on 2 cores) and the test extras (transformers, accelerate). Engines missing are skipped.
Greedy decoding of the same prompt; 2 threads everywhere (the machine's cores); fresh process per run;
engines interleaved; medians. Ratios are each engine's value over llmgen's (its default, 4-bit).
"llmgen --compile" counts its compile as loading (minutes on a machine's first run, then seconds: Inductor
keeps what it compiled on disk).
"""

from __future__ import annotations

import time

from common import engines_main, llama_cpp_greedy, llmgen_greedy, measurements, transformers_greedy

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. Write a short story about a cat."
# llmgen: its default for this file (--quantize auto: the Q4_1 weights stay 4-bit, on llmgen's own kernels
# at the CPU's best level), then forced levels: avx2 is what most laptops and desktops run.
QUANTIZE = {"llmgen int8": "int8", "llmgen fp32": "none"}
KERNELS = {"llmgen avx2": "avx2", "llmgen portable": "portable", "llmgen pytorch-int4": "0"}  # LLMGEN_KERNELS
OWN_KERNELS = {"llmgen --compile": False}  # torch.compile traces PyTorch's int4 kernel, not llmgen's
ENGINES = ["llmgen", "llmgen avx2", "llmgen portable", "llmgen pytorch-int4", "llmgen --compile", "llmgen int8",
           "llmgen fp32", "transformers", "llama.cpp"]


def worker(engine: str, new_tokens: int) -> dict:
    import os

    os.environ["LLMGEN_KERNELS"] = KERNELS.get(engine, "auto")  # before llmgen chooses a level
    import torch

    from llmgen import assets

    torch.set_num_threads(2)
    path = assets.locate("smollm2-135m-instruct-q4_1")
    started = time.perf_counter()
    if engine.startswith("llmgen"):
        from llmgen.decode import choose_decoder
        from llmgen.loading import load_model

        loaded = load_model(path, quantize=QUANTIZE.get(engine, "auto"), own_kernels=OWN_KERNELS.get(engine, True))
        prompt = loaded.tokenizer.encode(PROMPT)
        decoder = choose_decoder(loaded.model, compile=engine == "llmgen --compile")
        if engine == "llmgen --compile":
            llmgen_greedy(loaded.model, prompt, 2, decoder)  # compiles: counted as loading
        ready = time.perf_counter()
        stamps = llmgen_greedy(loaded.model, prompt, new_tokens, decoder)
    elif engine == "transformers":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        ready = time.perf_counter()
        prompt = tokenizer(PROMPT)["input_ids"]
        stamps = transformers_greedy(model, prompt, new_tokens)
    else:
        from llama_cpp import Llama

        llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
        ready = time.perf_counter()
        prompt = llm.tokenize(PROMPT.encode(), add_bos=False)
        stamps = llama_cpp_greedy(llm, prompt, new_tokens)
    return measurements(ready - started, len(prompt), stamps)


def main() -> None:
    engines_main(__file__, worker, ENGINES, "SmolLM2-135M-Instruct Q4_1 GGUF, greedy, {new_tokens} new tokens, "
                 "2 threads, median of {rounds} interleaved rounds", new_tokens=64)


if __name__ == "__main__":
    main()
