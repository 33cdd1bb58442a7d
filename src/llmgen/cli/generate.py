"""`llmgen generate`: stream a model's continuation of a prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from llmgen.cli import console
from llmgen.cli.model_path import DEFAULT_MODEL_NAME, report_quantized_once, resolve_model
from llmgen.cli.sampling_options import check_seed, sampling_settings, seeded_generator
from llmgen.cli.text_input import check_utf8, read_text_argument
from llmgen.errors import LLMGenError, UsageError


def generate(
    prompt: Optional[str] = typer.Argument(None, help="Prompt text; '-' reads stdin. Piped stdin comes first."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="A model directory (Meta or Hugging Face layout) or a .gguf file; default $LLMGEN_MODEL, "
             "else the embedded SmolLM2-135M-Instruct.",
    ),
    chat: Optional[bool] = typer.Option(
        None, "--chat/--raw", help="Wrap the prompt in the model's chat template (default for the embedded model)."
    ),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="Most tokens to generate per sample."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="Sampling temperature; 0 is greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample from the k most likely tokens only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample from the smallest set with this much mass."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for reproducible sampling."),
    num_samples: int = typer.Option(1, "--num-samples", help="How many independent samples to generate."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="End a sample at this text (repeatable)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    quantize: str = typer.Option(
        "auto", "--quantize", "-q",
        help="auto (a GGUF's 4-bit weights stay 4-bit), none, int8 or int4: weight-only, faster CPU decoding.",
    ),
    compile_decode: bool = typer.Option(
        False, "--compile",
        help="Compile decode steps with torch.compile (needs g++), on PyTorch's kernels, after a compile of "
             "minutes the first time and seconds later: for float models; int4 decodes faster without it.",
    ),
    tokenizer_path: Optional[Path] = typer.Option(None, "--tokenizer", help="Use this tokenizer file instead."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per sample instead of text."),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="A JSON-lines file ('-': stdin) of {\"prompt\": ..., options...}: one JSON result per "
                              "line, in order, the model loaded once.",
    ),
    logprobs: Optional[int] = typer.Option(
        None, "--logprobs", help="With --json: each generated token's log-probability and the K most likely "
                                 "tokens' (log-softmax of the logits before temperature and top-k/top-p).",
    ),
    stats: bool = typer.Option(False, "--stats", help="Print load time and tokens/s to stderr."),
    allow_special: bool = typer.Option(False, "--allow-special", help="Encode special-token text in the prompt."),
    speak: bool = typer.Option(False, "--speak", help="Read the generated text aloud afterwards (pyttsx3)."),
    speak_to: Optional[Path] = typer.Option(None, "--speak-to", help="Write the speech to this WAV file."),
    voice: Optional[str] = typer.Option(None, "--voice", help="Voice id, name or language code (llmgen voices)."),
    rate: Optional[int] = typer.Option(None, "--rate", help="Words per minute (default: the engine's minus 50)."),
    volume: float = typer.Option(1.0, "--volume", help="Speech volume, 0.0 to 1.0."),
    tp: Optional[int] = typer.Option(
        None, "--tp", help="Tensor parallelism: split the model over N processes on this machine (torch.distributed; "
                           "gloo on CPU, nccl on CUDA), each holding 1/N of the weights. Under torchrun: its processes."),
) -> None:
    """Generate text from a prompt, streaming tokens as they are produced."""
    from llmgen.speech import check_target, check_volume

    check_volume(volume)  # before generating, not after
    if speak_to is not None:
        check_target(speak_to)
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    if logprobs is not None and not ((as_json or batch is not None) and 0 <= logprobs <= 20):
        raise UsageError("--logprobs K takes K from 0 to 20, with --json or --batch")
    if batch is not None and (prompt is not None or num_samples != 1 or speak or speak_to is not None):
        raise UsageError("--batch takes its prompts from the file: no PROMPT, --num-samples or speech with it")
    check_seed(seed)
    for text, what in [(system, "--system"), *((s, "--stop") for s in stop or [])]:
        if text is not None:
            check_utf8(text, what)
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; choose cpu, cuda or auto")
    from llmgen.cli.launch import join_ranks, launch, ranks_to_start

    n_ranks, start_ranks = ranks_to_start(tp)
    if n_ranks > 1 and compile_decode:
        raise UsageError("--compile does not run with --tp: its graph has no place for the ranks' all-reduces")
    if start_ranks:  # this command again, as n_ranks processes; they read stdin and write stdout
        import llmgen.cli

        raise typer.Exit(launch(n_ranks, llmgen.cli.current_args))

    tensor_parallel = join_ranks(device) if n_ranks > 1 else None
    prompt_text, items = _read_inputs(prompt, batch, tensor_parallel)

    import torch  # heavy: only once we know there is work to do (a tensor-parallel rank has it already)

    from llmgen.generation import TextStream, generate_ids
    from llmgen.sampling import log_probs
    from llmgen.weights.loading import load_model

    defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    settings = sampling_settings(**defaults)
    batch_settings = [sampling_settings("--batch: ", **{**defaults, **{k: v for k, v in item.options.items()
                                                                        if k in defaults}})
                      for item in items] if batch is not None else []
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise LLMGenError("--device cuda, but torch sees no CUDA device")
    if tensor_parallel is not None:
        device = tensor_parallel.device  # cuda:K, the rank's own GPU

    model_path, is_default = resolve_model(model)
    # torch.compile cannot trace into llmgen's own kernels (ctypes calls): --compile keeps PyTorch's.
    with console.status(f"loading {model or model_path.name}"):  # on a terminal only: a transient line on stderr
        loaded = load_model(model_path, device=device, dtype=dtype, quantize=quantize,
                            tokenizer_path=tokenizer_path, own_kernels=not compile_decode, cache_quantized=True,
                            tensor_parallel=tensor_parallel)
    if dtype != "auto" and quantize == "auto" and _has_int4_layers(loaded.model):
        console.print_warning(f"--dtype {dtype}: this file's 4-bit weights stay 4-bit (their matmuls take int8 or "
                              "bfloat16 activations); add --quantize none to compute every matmul in "
                              f"{dtype}")
    report_quantized_once(loaded, quantize)
    tokenizer = loaded.tokenizer
    model_name = DEFAULT_MODEL_NAME if is_default else str(model or model_path)
    from llmgen.decode import choose_decoder

    decoder = choose_decoder(loaded.model, compile=compile_decode)
    if stats:
        console.print_info(f"loaded {loaded.path} ({loaded.layout} layout, {loaded.config.arch}) "
                           f"in {loaded.load_seconds:.2f} s")
        console.print_info(repr(decoder))
    use_chat = chat if chat is not None else is_default

    def encode(text: str) -> list[int]:
        if use_chat:
            from llmgen.chat import chat_prompt_ids

            return chat_prompt_ids(tokenizer, text, system)
        ids = tokenizer.encode(text, allow_special=allow_special)
        if not ids:
            raise LLMGenError("the prompt is empty and this model has no BOS token to start from; give a prompt")
        return ids

    generator = seeded_generator(seed, device)

    def text_stream(ids: list[int], sampling, stops, sample_generator, on_logits=None) -> TextStream:
        return TextStream(generate_ids(loaded.model, ids, sampling, stop_ids=tokenizer.stop_ids,
                                       n_valid=tokenizer.n_vocab, generator=sample_generator,
                                       on_crop=console.print_warning, decoder=decoder, on_logits=on_logits,
                                       agree=tensor_parallel and tensor_parallel.first_rank_token),
                          tokenizer, stops)

    def complete(text: str, ids: list[int], sampling, stops, sample_generator) -> tuple[TextStream, dict]:
        """Generate to the end; the stream, and the result as --json and --batch print it."""
        step_log_probs: list[torch.Tensor] = []  # (vocab,) per generated token, for --logprobs
        stream = text_stream(ids, sampling, stops, sample_generator,
                             None if logprobs is None else lambda logits: step_log_probs.append(log_probs(logits)))
        for _ in stream:
            pass
        result = {"model": model_name, "prompt": text, "text": stream.text, "ids": stream.ids,
                  "finish_reason": stream.finish_reason, "prompt_tokens": len(ids), "generated_tokens": len(stream.ids),
                  "tokens_per_second": round(stream.decode_tokens_per_second, 2)}
        if logprobs is not None:
            result["logprobs"] = _logprob_entries(tokenizer, stream.ids, step_log_probs, logprobs)
        return stream, result

    if batch is not None:
        for index, (item, sampling) in enumerate(zip(items, batch_settings)):
            _, result = complete(item.prompt, encode(item.prompt), sampling, item.options.get("stop", stop or []),
                                 seeded_generator(item.options["seed"], device) if "seed" in item.options
                                 else generator)
            console.write(json.dumps({"index": index, **result}, ensure_ascii=False) + "\n")
        return
    prompt_ids = encode(prompt_text)

    texts = []
    for sample_index in range(num_samples):
        if as_json:
            stream, result = complete(prompt_text, prompt_ids, settings, stop or [], generator)
            console.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            stream = text_stream(prompt_ids, settings, stop or [], generator)
            if sample_index > 0 and console.stdout.is_terminal:
                console.stdout.rule(style="dim")
            elif sample_index > 0:
                console.write("\n")
            _stream_text(stream)
        if stats:
            console.print_info(
                f"prompt: {len(prompt_ids)} tokens at {len(prompt_ids) / max(stream.prefill_seconds, 1e-9):.1f} tok/s; "
                f"generated {len(stream.ids)} tokens at {stream.decode_tokens_per_second:.1f} tok/s "
                f"({stream.finish_reason})"
            )
        texts.append(stream.text)

    if tensor_parallel is not None:
        tensor_parallel.close()
    if (speak or speak_to is not None) and (tensor_parallel is None or tensor_parallel.rank == 0):
        _speak("\n".join(texts), play=speak, to_file=speak_to, voice=voice, rate=rate, volume=volume)


def _read_inputs(prompt: str | None, batch: str | None, tensor_parallel) -> tuple[str, list]:
    """The prompt's text, or --batch's items: read by rank 0 alone (stdin, files), then shared with the
    other ranks of a tensor-parallel run."""
    from llmgen.cli.batch import BatchItem, read_batch

    prompt_text, items = "", []
    if tensor_parallel is None or tensor_parallel.rank == 0:
        if batch is not None:
            items = read_batch(batch)
        else:
            prompt_text = read_text_argument(prompt, combine_with_stdin=True)
            if not prompt_text:
                raise UsageError("no prompt: give PROMPT, or pipe text into stdin")
    if tensor_parallel is not None:
        shared = tensor_parallel.share_json({"prompt": prompt_text, "items": [vars(i) for i in items]})
        prompt_text, items = shared["prompt"], [BatchItem(**i) for i in shared["items"]]
    return prompt_text, items


def _logprob_entries(tokenizer, ids: list[int], step_log_probs: list, k: int) -> list[dict]:
    """One entry per generated token: its id, text, log-probability, and the k most likely alternatives."""
    from llmgen.tokenizers import piece

    def token(i: int) -> dict:
        return {"id": i, "token": piece(tokenizer.token_bytes(i))}

    entries = []
    for chosen, values in zip(ids, step_log_probs):
        top = values.topk(k) if k else None
        entries.append({**token(chosen), "logprob": round(float(values[chosen]), 6),
                        "top": [] if top is None else [{**token(int(i)), "logprob": round(float(v), 6)}
                                                       for v, i in zip(top.values, top.indices)]})
    return entries


def _has_int4_layers(model) -> bool:
    from llmgen.quantize import Int4Linear

    return any(isinstance(m, Int4Linear) for m in model.modules())


def _speak(text: str, *, play: bool, to_file: Path | None, voice, rate, volume) -> None:
    """After the text is out: speech failures warn, except a --speak-to file that could not be written."""
    from llmgen.speech import SpeechError, speak

    if not text.strip():
        console.print_warning("the generated text is empty; nothing to speak")
        if to_file is not None:
            raise LLMGenError(f"nothing was written to {to_file}: the generated text is empty")
        return
    try:
        for warning in speak(text, voice=voice, rate=rate, volume=volume, to_file=to_file, play=play):
            console.print_warning(warning)
    except SpeechError as e:
        if to_file is not None:
            raise LLMGenError(f"could not write speech to {to_file}: {e}") from None
        console.print_warning(f"could not speak the text: {e}")


def _stream_text(stream) -> None:
    """Write chunks as they come; on Ctrl-C keep what was printed, end the line, exit 130."""
    try:
        for chunk in stream:
            console.write(chunk)
    except KeyboardInterrupt:
        console.write("\n")
        raise typer.Exit(130) from None
    console.write("\n")
