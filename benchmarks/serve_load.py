"""`llmgen serve` under load, and its prefix cache, side by side with llama-cpp-python's server on the same GGUF.

    python benchmarks/serve_load.py [--clients 8] [--requests 20] [--max-tokens 48] [--peer llama.cpp]

Load: each server is started in its own process (2 threads), then the same chat requests (clients x requests,
distinct questions, -t 0, streamed) are sent one at a time, then by `clients` concurrent clients, each
sending its requests in turn. Reported per run: total generated tokens / wall time, p50/p95 time to first
token, p50/p95 time per token after the first (a stream's chunks), failed requests. Tokens are counted as the
stream's content chunks (one a token on both servers).
Prefix cache (llmgen): a ~1,000-token system prompt (the GPL's text) with one question, then the same
prompt with another question: time to first token of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPL = Path("/usr/share/common-licenses/GPL-3")
TOPICS = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "glass", "trains", "music", "salt",
          "clouds", "maps", "paper", "owls", "copper", "tea", "bridges", "ice", "ants", "clocks"]
FORMS = ["Tell me one fact about {}.", "Write a sentence about {}.", "What is interesting about {}?",
         "Describe {} briefly.", "Why do people like {}?", "Give a tip about {}.", "Name a use of {}.",
         "How old is the idea of {}?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A server process on a free port, stopped on exit."""

    def __init__(self, name: str, model: Path, slots: int, ctx: int):
        self.name, self.port = name, free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        if name == "llmgen":
            command = [sys.executable, "-m", "llmgen", "serve", str(model), "--port", str(self.port),
                       "--max-sequences", str(slots), "--ctx-size", str(ctx), "-t", "2"]
        else:  # llama-cpp-python's OpenAI-compatible server (one request at a time)
            command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(self.port),
                       "--n_ctx", str(ctx), "--n_threads", "2", "--n_threads_batch", "2", "--verbose", "False"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    self.model_id = json.load(r)["data"][0]["id"]
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start: {self.process.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def stream_chat(url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat request: time to first token, time per later token, tokens, whether it failed."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    request = urllib.request.Request(url + "/chat/completions", body, {"Content-Type": "application/json"})
    start, stamps, text = time.perf_counter(), [], ""
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for line in response:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not chunk.get("choices"):
                    continue
                content = chunk["choices"][0].get("delta", {}).get("content")
                if content:
                    stamps.append(time.perf_counter())
                    text += content
    except OSError as e:
        return {"failed": True, "error": str(e)}
    if not stamps:
        return {"failed": True, "error": "no tokens"}
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    return {"failed": False, "ttft": stamps[0] - start, "per_token": per_token, "tokens": len(stamps), "text": text}


def run_load(peer: Peer, requests: list[list[list[dict]]], max_tokens: int, concurrent: bool) -> dict:
    """Every client's requests, one at a time overall, or one client a thread."""
    start = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(requests)) as pool:
            per_client = list(pool.map(lambda mine: [stream_chat(peer.url, peer.model_id, m, max_tokens)
                                                     for m in mine], requests))
        results = [r for client in per_client for r in client]
    else:
        results = [stream_chat(peer.url, peer.model_id, m, max_tokens) for mine in requests for m in mine]
    wall = time.perf_counter() - start
    ok = [r for r in results if not r["failed"]]
    ttft = sorted(r["ttft"] for r in ok)
    per_token = sorted(r["per_token"] for r in ok if r["per_token"] is not None)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {"requests": len(results), "failed": len(results) - len(ok), "tokens": sum(r["tokens"] for r in ok),
            "wall_s": wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50_ms": 1000 * pct(ttft, 0.5), "ttft_p95_ms": 1000 * pct(ttft, 0.95),
            "token_p50_ms": 1000 * pct(per_token, 0.5), "token_p95_ms": 1000 * pct(per_token, 0.95),
            "texts": [r.get("text") for r in results]}


def prefix_cache(peer: Peer, slots: int) -> dict:
    """Time to first token of a ~1,000-token prompt, of another sharing all but its question, and of a third
    after `slots` unrelated prompts have taken every slot (only a cache beyond the slots still holds it)."""
    system = GPL.read_text()[:4200] if GPL.is_file() else " ".join(TOPICS * 60)
    times = []
    for question in ("Who may copy this license?", "What does this license say about warranty?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        times.append(stream_chat(peer.url, peer.model_id, messages, 4)["ttft"])
    others = [[{"role": "user", "content": f"{FORMS[i % len(FORMS)].format(TOPICS[i % len(TOPICS)])} ({i})"}]
              for i in range(slots)]
    with ThreadPoolExecutor(slots) as pool:  # at once, so that every slot takes one
        list(pool.map(lambda messages: stream_chat(peer.url, peer.model_id, messages, 4), others))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "May I sell copies?"}]
    times.append(stream_chat(peer.url, peer.model_id, messages, 4)["ttft"])
    return {"first_ttft_ms": 1000 * times[0], "second_ttft_ms": 1000 * times[1], "ratio": times[1] / times[0],
            "after_ttft_ms": 1000 * times[2], "after_ratio": times[2] / times[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", help="a GGUF file (default: the embedded SmolLM2)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--peer", choices=["llama.cpp", "none"], default="llama.cpp")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from llmgen.cli.model_path import resolve_model

    model = Path(args.model) if args.model else resolve_model(None)[0]
    requests = [[[{"role": "user", "content": FORMS[(c + r) % len(FORMS)].format(TOPICS[(c * 7 + r) % len(TOPICS)])}]
                 for r in range(args.requests)] for c in range(args.clients)]
    names = ["llmgen"]
    if args.peer == "llama.cpp":
        try:
            import llama_cpp.server  # noqa: F401
            names.append("llama.cpp")
        except ImportError as e:
            print(f"llama-cpp-python's server is not installed ({e}); llmgen alone", file=sys.stderr)
    print(f"{model.name}: {args.clients} clients x {args.requests} chat requests, max_tokens {args.max_tokens}, "
          "-t 0, streamed; 2 threads per server")
    rows = {}
    for name in names:
        peer = Peer(name, model, args.clients, 2048)
        try:
            stream_chat(peer.url, peer.model_id, requests[0][0], 4)  # warm-up
            one = run_load(peer, requests, args.max_tokens, concurrent=False)
            many = run_load(peer, requests, args.max_tokens, concurrent=True)
            rows[name] = (one, many, prefix_cache(peer, args.clients) if name == "llmgen" else None)
        finally:
            peer.close()
    print("| server | clients | requests | failed | tokens/s | vs one at a time | TTFT p50 / p95 ms | "
          "per token p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (one, many, _) in rows.items():
        for label, run in (("1", one), (str(args.clients), many)):
            print(f"| {name} | {label} | {run['requests']} | {run['failed']} | {run['tokens_per_s']:.1f} | "
                  f"{run['tokens_per_s'] / one['tokens_per_s']:.2f}x | {run['ttft_p50_ms']:.0f} / "
                  f"{run['ttft_p95_ms']:.0f} | {run['token_p50_ms']:.1f} / {run['token_p95_ms']:.1f} |")
    one, many, prefix = rows["llmgen"]
    same = sum(a == b for a, b in zip(one["texts"], many["texts"]))
    print(f"llmgen: {same} of {len(one['texts'])} replies identical one at a time and concurrent (-t 0)")
    if "llama.cpp" in rows:
        print(f"llmgen / llama.cpp, {args.clients} clients: "
              f"{many['tokens_per_s'] / rows['llama.cpp'][1]['tokens_per_s']:.2f}x tokens/s")
    print(f"prefix cache (llmgen): first TTFT {prefix['first_ttft_ms']:.0f} ms, second (same ~1,000-token system "
          f"prompt) {prefix['second_ttft_ms']:.0f} ms: {prefix['ratio']:.3f}x; a third after {args.clients} other "
          f"prompts took every slot {prefix['after_ttft_ms']:.0f} ms: {prefix['after_ratio']:.3f}x")


if __name__ == "__main__":
    main()
