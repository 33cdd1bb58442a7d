"""`llmgen serve`: the model behind an OpenAI-compatible HTTP API (serving/), on uvicorn.

    llmgen serve [MODEL] [--host 127.0.0.1] [--port 8080] [-np 4] [-c 2048] [--api-key KEY]

Binds the loopback address unless --host says otherwise; any other address needs an API key (--api-key
or $LLMGEN_API_KEY), which clients send as `Authorization: Bearer KEY`. FastAPI and uvicorn are imported
only here, so no other command pays for them.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import typer

from llmgen.cli import console
from llmgen.errors import UsageError


def serve(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="A .gguf file or model directory; default: the embedded model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (other than loopback: needs --api-key)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LLMGEN_API_KEY", show_envvar=True,
                                          help="Require `Authorization: Bearer KEY` on /v1/ requests."),
    max_sequences: int = typer.Option(4, "--max-sequences", "-np", help="Sequences decoded together (llama.cpp's "
                                                                         "--parallel): one KV cache slot each."),
    ctx_size: int = typer.Option(2048, "--ctx-size", "-c", help="Positions of each slot: a request's prompt and "
                                                                  "reply together (at most the model's window)."),
    batch_size: int = typer.Option(512, "--batch-size", "-b", help="Most rows one forward pass takes."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most tokens a request may ask for "
                                                                          "(default: the context size)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting for a slot before more are refused "
                                                          "(503)."),
    cache_ram: int = typer.Option(1024, "--cache-ram", "-cram", help="MiB kept for the prefix cache: earlier "
                                                                    "prompts' keys and values (llama-server's "
                                                                    "name; 0: off)."),
    max_body: int = typer.Option(4 * 2**20, "--max-body-bytes", help="Largest request body (413 beyond)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="The model's id in the API (default: its file name)."),
    quantize: str = typer.Option("auto", "--quantize", "-q", help="auto, none, int8 or int4 (see generate)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: PyTorch's)."),
    tp: Optional[int] = typer.Option(
        None, "--tp", help="Tensor parallelism on CPU: the model split over N processes; rank 0 serves HTTP, the "
                           "others run each of its passes on their shards (see generate --tp)."),
) -> None:
    """Serve the model over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port takes 0 to 65535, got {port}")
    if max_sequences < 1 or ctx_size < 8 or batch_size < 1 or max_queue < 0 or max_body < 1024:
        raise UsageError("--max-sequences and --batch-size take 1 or more, --ctx-size 8 or more, --max-queue 0 or "
                         "more, --max-body-bytes 1024 or more")
    if cache_ram < 0:
        raise UsageError("--cache-ram takes 0 or more MiB")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError("--max-tokens takes 1 or more")
    if threads is not None and threads < 1:
        raise UsageError("--threads takes 1 or more")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    if not _is_loopback(host) and api_key is None:
        raise UsageError(f"--host {host} is reachable from other machines: give --api-key KEY (or set "
                         "LLMGEN_API_KEY), or bind 127.0.0.1")
    from llmgen.cli import invocation
    from llmgen.cli.launch import join_ranks, launch, ranks_to_start

    n_ranks, start_ranks = ranks_to_start(tp)
    if start_ranks:  # this command again, as n_ranks processes: rank 0 serves, the others follow its passes
        raise typer.Exit(launch(n_ranks, invocation.of(ctx).argv))
    import logging

    import torch

    from llmgen.cli.model_path import resolve_model
    from llmgen.loading import load_model
    from llmgen.serving.run import serve_forever
    from llmgen.serving.service import Limits, ModelService

    if threads is not None:
        torch.set_num_threads(threads)
    tensor_parallel = join_ranks(invocation.of(ctx), "cpu") if n_ranks > 1 else None
    path, _ = resolve_model(model)
    with console.status(f"loading {path.name}"):
        loaded = load_model(path, quantize=quantize, cache_quantized=True, tensor_parallel=tensor_parallel)
    ctx_size = min(ctx_size, loaded.config.context_length)
    if tensor_parallel is not None and tensor_parallel.rank != 0:
        from llmgen.batching import BatchEngine

        follower = BatchEngine(loaded.model, max_sequences=max_sequences, ctx_size=ctx_size, batch_size=batch_size)
        try:
            follower.follow(lambda: tensor_parallel.share_json(None))
        finally:
            tensor_parallel.close()
        return
    service = ModelService(loaded, alias or path.name, max_sequences=max_sequences, ctx_size=ctx_size,
                           batch_size=batch_size, prefix_cache_bytes=cache_ram * 2**20,
                           limits=Limits(max_body_bytes=max_body, max_tokens=max_tokens, max_waiting=max_queue))
    if tensor_parallel is not None:  # every pass (and prefix copy) of the engine runs on every rank
        service.engine.share = tensor_parallel.share_json
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    batched = "batched on llmgen's kernels" if service.engine.batched else "one sequence at a time"
    ranks = f" over {tensor_parallel.world} tensor-parallel ranks" if tensor_parallel is not None else ""
    console.print_info(f"{path.name}: {max_sequences} slots of {service.ctx_size} tokens, {batched}{ranks}; "
                       f"{service.engine.decoder.name}")
    try:
        serve_forever(service, host, port, api_key,
                      lambda url: console.print_info(f"serving {url} as '{service.name}' (Ctrl-C stops)"))
    finally:
        if tensor_parallel is not None:  # the engine has stopped (serve_forever closed the service): the end
            tensor_parallel.share_json(None)
            tensor_parallel.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
