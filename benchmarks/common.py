"""Shared by the side-by-side benchmarks: run engines in fresh processes, interleaved, print a table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = [("load_s", "load s"), ("prefill_tok_s", "prompt tok/s"), ("ttft_s", "first token s"),
           ("decode_tok_s", "decode tok/s"), ("peak_rss_mb", "peak RSS MB")]


def meta_shapes(params: dict, ffn_dim: int, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """The tensors of a Meta-layout LLaMA checkpoint with these params.json values, by name and shape."""
    dim, kv = params["dim"], params["n_kv_heads"] * params["dim"] // params["n_heads"]
    shapes = {"tok_embeddings.weight": (params["vocab_size"], dim), "norm.weight": (dim,)}
    if not tied:
        shapes["output.weight"] = (params["vocab_size"], dim)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        shapes |= {p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (kv, dim),
                   p + "attention.wv.weight": (kv, dim), p + "attention.wo.weight": (dim, dim),
                   p + "feed_forward.w1.weight": (ffn_dim, dim), p + "feed_forward.w2.weight": (dim, ffn_dim),
                   p + "feed_forward.w3.weight": (ffn_dim, dim),
                   p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,)}
    return shapes


def save_meta_checkpoint(directory: Path, state: dict, params: dict) -> Path:
    """consolidated.00.pth (written under a temporary name, then renamed: a killed run leaves no half
    file that looks done), params.json and the real LLaMA-3 tokenizer.model."""
    import shutil

    import torch

    from llmgen import assets

    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "consolidated.00.pth.partial"
    torch.save(state, partial)
    partial.rename(directory / "consolidated.00.pth")
    (directory / "params.json").write_text(json.dumps(params))
    shutil.copy(assets.locate("llama3"), directory / "tokenizer.model")
    return directory


def llmgen_greedy(model, prompt: list[int], new_tokens: int, decoder=None) -> list[float]:
    """Greedy generation with llmgen; the start time, then the time each token arrived."""
    from llmgen.generation import SamplingSettings, generate_ids

    stamps = [time.perf_counter()]
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0)
    for _ in generate_ids(model, prompt, settings, decoder=decoder):
        stamps.append(time.perf_counter())
    return stamps


def transformers_greedy(model, prompt: list[int], new_tokens: int) -> list[float]:
    """The same greedy loop with a transformers model and its own KV cache; stamps as llmgen_greedy."""
    import torch

    stamps = [time.perf_counter()]
    with torch.inference_mode():
        out = model(torch.tensor([prompt]), use_cache=True)
        past, token = out.past_key_values, out.logits[0, -1].argmax()
        stamps.append(time.perf_counter())
        for _ in range(new_tokens - 1):
            out = model(token.view(1, 1), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[0, -1].argmax()
            int(token)
            stamps.append(time.perf_counter())
    return stamps


def llama_cpp_greedy(llm, prompt: list[int], new_tokens: int) -> list[float]:
    """The same greedy loop in llama.cpp (llama-cpp-python); stamps as llmgen_greedy."""
    stamps = [time.perf_counter()]
    llm.eval(prompt)
    for _ in range(new_tokens):
        token = llm.sample(top_k=1, temp=0.0)
        stamps.append(time.perf_counter())
        llm.eval([token])
    return stamps


def gguf_engine_worker(path, engine: str, new_tokens: int, prompt_text: str, kernels: str) -> dict:
    """One measurement of `engine` ("llmgen ..." with LLMGEN_KERNELS=kernels, or "llama.cpp") greedy on a
    GGUF file, 2 threads: load, prefill, decode, peak RSS."""
    import os

    os.environ["LLMGEN_KERNELS"] = kernels
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    if engine.startswith("llmgen"):
        from llmgen.decode import choose_decoder
        from llmgen.loading import load_model

        loaded = load_model(path)
        decoder = choose_decoder(loaded.model)
        ready = time.perf_counter()
        prompt = loaded.tokenizer.encode(prompt_text)
        stamps = llmgen_greedy(loaded.model, prompt, new_tokens, decoder)
        extra = {"decoder": repr(decoder)}
    else:
        from llama_cpp import Llama

        llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
        ready = time.perf_counter()
        prompt = llm.tokenize(prompt_text.encode(), add_bos=False)
        stamps = llama_cpp_greedy(llm, prompt, new_tokens)
        extra = {}
    return {**measurements(ready - started, len(prompt), stamps), **extra}


def measurements(load_s: float, prompt_tokens: int, stamps: list[float]) -> dict:
    """A worker's result: stamps[0] is when the prompt went in, stamps[1:] when each token came out."""
    first = stamps[1] - stamps[0]
    return {
        "load_s": load_s,
        "prefill_tok_s": prompt_tokens / first,
        "ttft_s": first,
        "decode_tok_s": (len(stamps) - 2) / (stamps[-1] - stamps[1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_interleaved(script: str, engines: list[str], extra_args: list[str], rounds: int) -> dict[str, dict]:
    """Median of each metric per engine; each run is `python script --worker ENGINE ...` in a new process."""
    results: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(rounds):
        for engine in engines:
            done = subprocess.run([sys.executable, script, "--worker", engine, *extra_args],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{engine} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            results[engine].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {e: {k: statistics.median(r[k] for r in runs) for k, _ in METRICS if k in runs[0]}
            for e, runs in results.items() if runs}


def machine() -> str:
    """The line every benchmark table starts with: date, CPU, its vector instructions, llmgen's kernel level."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    simd = [f for f in ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    from llmgen import kernels

    level = kernels.level() or f"none ({kernels.unavailable_reason()})"
    return (f"{datetime.date.today()} · {cpu} · {os.cpu_count()} cores · {' '.join(simd) or 'no AVX'} · "
            f"llmgen kernels: {level} (LLMGEN_KERNELS={os.environ.get('LLMGEN_KERNELS', 'auto')})\n")


def print_table(medians: dict[str, dict], reference: str = "llmgen") -> None:
    """Values with each engine's ratio to the reference engine's."""
    print("| engine | " + " | ".join(label for _, label in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    base = medians.get(reference, {})
    for engine, values in medians.items():
        cells = []
        for key, _ in METRICS:
            if key not in values:
                cells.append("")
                continue
            text = f"{values[key]:.2f}" if key.endswith("_s") else f"{values[key]:.1f}"
            if engine != reference and base.get(key):
                text += f" ({values[key] / base[key]:.2f}x)"
            cells.append(text)
        print(f"| {engine} | " + " | ".join(cells) + " |")


def prepare_in_own_process(prepare) -> None:
    """Run prepare (a module-level function that makes a benchmark's files) in a process of its own: making
    files (a model built by transformers) grows a process, and each worker forked from it would start with
    that peak RSS."""
    import multiprocessing

    maker = multiprocessing.get_context("spawn").Process(target=prepare)
    maker.start()
    maker.join()
    if maker.exitcode != 0:
        raise SystemExit(f"preparing the benchmark's files failed (exit {maker.exitcode})")


def engines_main(script: str, worker, engines: list[str], title: str, new_tokens: int, prepare=None) -> None:
    """The command line of a side-by-side benchmark: --rounds, --new-tokens, --engines, and --worker ENGINE
    (one measurement in this process, printed as JSON, which run_interleaved reads). `title` is formatted
    with new_tokens and rounds; `prepare` makes the benchmark's files first."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--engines", default=",".join(engines))
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.new_tokens)))
        return
    if prepare is not None:
        prepare_in_own_process(prepare)
    print(machine())
    medians = run_interleaved(script, args.engines.split(","), ["--new-tokens", str(args.new_tokens)], args.rounds)
    print(title.format(new_tokens=args.new_tokens, rounds=args.rounds) + "\n")
    print_table(medians)
