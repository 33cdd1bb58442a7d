"""`llmgen bench`: prompt processing and text generation speed, in llama-bench's tests and table.

    llmgen bench [MODEL] [-p 512] [-n 128] [-r 5] [-t THREADS] [-b 512] [--json | --csv] [--peer llama.cpp]

One row per test (ppN, tgN): the model, its size on disk, parameters, main weight format, the kernel
path, threads, and tokens per second as mean +- standard deviation over the repetitions. With
--peer llama.cpp, each test then runs through llama-cpp-python on the same file in a process of its own
(llmgen.peer_llama_cpp), right after llmgen's, and the table gains its rows and the ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional

import typer

from llmgen.cli import console
from llmgen.errors import LLMGenError, UsageError


def bench(
    model: Optional[str] = typer.Argument(None, help="A .gguf file or model directory; default: the embedded model."),
    n_prompt: List[int] = typer.Option([512], "--n-prompt", "-p", help="Prompt tokens of a ppN test (repeatable; "
                                                                          "0 for none)."),
    n_gen: List[int] = typer.Option([128], "--n-gen", "-n", help="Generated tokens of a tgN test (repeatable; 0 for "
                                                                   "none)."),
    repetitions: int = typer.Option(5, "--repetitions", "-r", help="Timed runs of each test, after a warm-up."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: PyTorch's)."),
    batch_size: int = typer.Option(512, "--batch-size", "-b", help="Most prompt tokens in one forward pass."),
    quantize: str = typer.Option("auto", "--quantize", "-q", help="auto, none, int8 or int4 (see generate)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per test instead of the table."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV instead of the table."),
    peer: Optional[str] = typer.Option(None, "--peer", help="llama.cpp: run each test through llama-cpp-python too."),
) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed, as llama-bench does."""
    tests = [(p, 0) for p in n_prompt if p] + [(0, n) for n in n_gen if n]
    if not tests:
        raise UsageError("no tests: give -p or -n a positive token count")
    if any(count < 0 for count in [*n_prompt, *n_gen]):
        raise UsageError("-p and -n take token counts >= 0")
    if repetitions < 1 or batch_size < 1 or (threads is not None and threads < 1):
        raise UsageError("-r, -b and -t take numbers >= 1")
    if as_json and as_csv:
        raise UsageError("--json or --csv, not both")
    if peer not in (None, "llama.cpp"):
        raise UsageError(f"unknown --peer {peer!r}; the peer llmgen knows is llama.cpp")
    import torch

    from llmgen import benchmarking
    from llmgen.cli.model_path import resolve_model
    from llmgen.decode import choose_decoder
    from llmgen.loading import load_model
    from llmgen.weights.inspect import inspect_path

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    path, _ = resolve_model(model)
    longest = max(p + n for p, n in tests)
    with console.status(f"loading {path.name}"):
        loaded = load_model(path, quantize=quantize, cache_quantized=True)
    if longest > loaded.config.context_length:
        raise UsageError(f"a test of {longest} tokens does not fit the model's window of {loaded.config.context_length}")
    decoder = choose_decoder(loaded.model)
    inspection = inspect_path(path)
    by_dtype = inspection.by_dtype()
    described = {"model": f"{loaded.config.arch} {_params(inspection.total_params)}",
                 "size": _size(sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))
                                   if f.is_file())),
                 "params": inspection.total_params, "format": max(by_dtype, key=lambda d: by_dtype[d]),
                 "path": decoder.name, "threads": threads}
    for index, (n_p, n_g) in enumerate(tests):
        with console.status(f"llmgen {'pp' if n_p else 'tg'}{n_p or n_g}"):
            result = benchmarking.run_test(loaded.model, decoder, n_p, n_g, repetitions, batch_size)
        rows = [{**described, "engine": "llmgen", "test": result.name, "samples": result.samples,
                 "mean": result.mean, "stddev": result.stddev}]
        if peer is not None:
            with console.status(f"llama.cpp {result.name}"):
                samples = _peer_samples(path, threads, batch_size, repetitions, n_p, n_g)
            peer_result = benchmarking.TestResult(result.name, n_p, n_g, samples)
            rows.append({**described, "engine": "llama.cpp", "path": "llama-cpp-python", "test": result.name,
                         "samples": samples, "mean": peer_result.mean, "stddev": peer_result.stddev,
                         "llmgen_ratio": result.mean / peer_result.mean})
        _emit_rows(rows, as_json, as_csv, first=index == 0)


COLUMNS = ("model", "size", "params", "format", "path", "threads", "engine", "test", "t/s")


def _emit_rows(rows: list[dict], as_json: bool, as_csv: bool, first: bool) -> None:
    """Rows as they are measured: JSON lines, CSV, or Markdown table lines (llama-bench's layout)."""
    for row in rows:
        if as_json:
            console.write(json.dumps(row) + "\n")
            continue
        ratio = f" ({row['llmgen_ratio']:.2f}x)" if "llmgen_ratio" in row else ""
        cells = [row["model"], row["size"], f"{_params(row['params'])}", row["format"], row["path"],
                 str(row["threads"]), row["engine"], row["test"]]
        if as_csv:
            if first:
                console.write(",".join([*COLUMNS[:-1], "mean_ts", "stddev_ts"]) + "\n")
                first = False
            console.write(",".join([*(f'"{c}"' for c in cells), f"{row['mean']:.2f}", f"{row['stddev']:.2f}"]) + "\n")
            continue
        if first:
            console.write("| " + " | ".join(COLUMNS) + " |\n")
            console.write("| " + " | ".join("---:" if c in ("size", "params", "threads", "t/s") else "---"
                                              for c in COLUMNS) + " |\n")
            first = False
        console.write("| " + " | ".join([*cells, f"{row['mean']:.2f} ± {row['stddev']:.2f}{ratio}"]) + " |\n")


def _peer_samples(path, threads: int, batch_size: int, repetitions: int, n_prompt: int, n_gen: int) -> list[float]:
    """The test through llama-cpp-python, in a process of its own: a crash there is an error line here."""
    if not path.is_file():
        raise LLMGenError("--peer llama.cpp runs a .gguf file; this model is a directory")
    command = [sys.executable, "-m", "llmgen.peer_llama_cpp", str(path), str(threads), str(batch_size),
               str(repetitions), str(n_prompt), str(n_gen)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "No module named 'llama_cpp'" in done.stderr:
            last = "llama-cpp-python is not installed (pip install llama-cpp-python)"
        elif done.returncode < 0:
            last = f"it crashed (signal {-done.returncode}); llama.cpp's AMX path does on some CPUs"
        raise LLMGenError(f"--peer llama.cpp failed: {last[:200]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["samples"]


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"
