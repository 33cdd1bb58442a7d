"""`llmgen generate`: stream a model's continuation of a prompt (or of each line of --batch).

The command gathers its options into GenerateOptions and runs the steps in order: check the options,
start or join tensor-parallel ranks, read the input, load the model (Session), generate (text, --json or
--batch), speak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from llmgen.cli import console
from llmgen.cli.model_path import DEFAULT_MODEL_NAME, report_quantized_once, resolve_model
from llmgen.cli.sampling_options import check_seed, sampling_settings, seeded_generator
from llmgen.cli.text_input import check_utf8, read_text_argument
from llmgen.errors import LLMGenError, UsageError

if TYPE_CHECKING:
    from llmgen.grammar import JsonGrammar


def generate(
    ctx: typer.Context,
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
    repeat_penalty: float = typer.Option(
        1.0, "--repeat-penalty", help="Penalize tokens among the last --repeat-last-n (llama.cpp's rule; 1.0 is off, "
                                      "1.1 a common choice against loops)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="How many recent tokens --repeat-penalty covers."),
    speculate: str = typer.Option(
        "none", "--speculate", help="Speculative decoding: none, or ngram (guesses copied from earlier text, checked "
                                    "in one pass: faster where the reply repeats its input; the same output)."),
    draft_model: Optional[str] = typer.Option(
        None, "--draft-model", help="Speculative decoding with a small model of the same vocabulary guessing ahead "
                                    "(a .gguf file or directory)."),
    draft_max: int = typer.Option(8, "--draft-max", help="Most tokens guessed at once (llama.cpp's --draft-max)."),
    batch_size: int = typer.Option(512, "--batch-size", "-b",
                                   help="Most prompt tokens one forward pass takes (llama.cpp's --batch-size)."),
    prompt_cache: Optional[Path] = typer.Option(
        None, "--prompt-cache", help="Save the prompt's KV cache in this file, and reuse what a later prompt "
                                     "shares with it (llama.cpp's --prompt-cache)."),
    json_schema: Optional[Path] = typer.Option(
        None, "--json-schema", help="Structured output: the reply is JSON valid under this JSON schema file "
                                    "(constrained decoding; '{}' for any JSON value)."),
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
    from llmgen.cli import invocation

    options = GenerateOptions(**{name: value for name, value in locals().items() if name in GenerateOptions.FIELDS})
    run(options, invocation.of(ctx))


@dataclass
class GenerateOptions:
    """`llmgen generate`'s options, as typed (see the command's help for each)."""

    prompt: str | None
    model: str | None
    chat: bool | None
    system: str | None
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    repeat_penalty: float
    repeat_last_n: int
    speculate: str
    draft_model: str | None
    draft_max: int
    batch_size: int
    prompt_cache: Path | None
    json_schema: Path | None
    num_samples: int
    stop: list[str] | None
    device: str
    dtype: str
    quantize: str
    compile_decode: bool
    tokenizer_path: Path | None
    as_json: bool
    batch: str | None
    logprobs: int | None
    stats: bool
    allow_special: bool
    speak: bool
    speak_to: Path | None
    voice: str | None
    rate: int | None
    volume: float
    tp: int | None

    FIELDS: tuple[str, ...] = ()  # set below: the field names

    @property
    def stops(self) -> list[str]:
        return self.stop or []

    @property
    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "repeat_penalty": self.repeat_penalty, "repeat_last_n": self.repeat_last_n}

    def check(self) -> None:
        """Every option on its own and together, before anything is loaded or generated."""
        from llmgen.speech import check_target, check_volume

        check_volume(self.volume)  # before generating, not after
        if self.speak_to is not None:
            check_target(self.speak_to)
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.logprobs is not None and not ((self.as_json or self.batch is not None) and 0 <= self.logprobs <= 20):
            raise UsageError("--logprobs K takes K from 0 to 20, with --json or --batch")
        if self.batch is not None and (self.prompt is not None or self.num_samples != 1 or self.speak
                                       or self.speak_to is not None):
            raise UsageError("--batch takes its prompts from the file: no PROMPT, --num-samples or speech with it")
        check_seed(self.seed)
        for text, what in [(self.system, "--system"), *((s, "--stop") for s in self.stops)]:
            if text is not None:
                check_utf8(text, what)
        if self.prompt_cache is not None and (self.batch is not None or self.tp):
            raise UsageError("--prompt-cache saves one prompt: not with --batch or --tp")
        if self.json_schema is not None and (self.speculate != "none" or self.draft_model is not None):
            raise UsageError("--json-schema does not go with speculative decoding (--speculate, --draft-model)")
        if self.speculate not in ("none", "ngram"):
            raise UsageError(f"unknown --speculate {self.speculate!r}; choose none or ngram")
        if self.speculate != "none" and self.draft_model is not None:
            raise UsageError("--speculate ngram and --draft-model are two drafters: choose one")
        if not 1 <= self.draft_max <= 64:
            raise UsageError(f"--draft-max must be from 1 to 64, got {self.draft_max}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.tp and (self.speculate != "none" or self.draft_model is not None):
            raise UsageError("speculative decoding does not run with --tp")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"unknown device {self.device!r}; choose cpu, cuda or auto")


GenerateOptions.FIELDS = tuple(GenerateOptions.__dataclass_fields__)


def run(options: GenerateOptions, invocation) -> None:
    """The command's steps, in order."""
    from llmgen.cli.launch import join_ranks, launch, ranks_to_start

    options.check()
    n_ranks, start_ranks = ranks_to_start(options.tp)
    if n_ranks > 1 and options.compile_decode:
        raise UsageError("--compile does not run with --tp: its graph has no place for the ranks' all-reduces")
    if start_ranks:  # this command again, as n_ranks processes; they read stdin and write stdout
        raise typer.Exit(launch(n_ranks, invocation.argv))
    tensor_parallel = join_ranks(invocation, options.device) if n_ranks > 1 else None
    prompt_text, items = _read_inputs(options.prompt, options.batch, tensor_parallel)
    settings = sampling_settings(**options.sampling)  # every line's checked before the model loads
    batch_settings = [sampling_settings("--batch: ", **{**options.sampling, **{
        k: v for k, v in item.options.items() if k in options.sampling}}) for item in items]
    session = Session.load(options, tensor_parallel)
    if options.batch is not None:
        session.run_batch(items, batch_settings)
        return
    texts = session.run_samples(prompt_text, settings)
    if tensor_parallel is not None:
        tensor_parallel.close()
    if (options.speak or options.speak_to is not None) and (tensor_parallel is None or tensor_parallel.rank == 0):
        _speak("\n".join(texts), play=options.speak, to_file=options.speak_to, voice=options.voice, rate=options.rate,
               volume=options.volume)


class Session:
    """A loaded model and how this command generates with it."""

    def __init__(self, options: GenerateOptions, loaded, decoder, model_name: str, use_chat: bool, device: str,
                 tensor_parallel):
        self.options, self.loaded, self.decoder, self.model_name = options, loaded, decoder, model_name
        self.tokenizer, self.use_chat, self.tensor_parallel = loaded.tokenizer, use_chat, tensor_parallel
        self.device = device  # cpu, cuda, or a tensor-parallel rank's cuda:K
        self.generator = seeded_generator(options.seed, device)
        self.drafter = None  # speculative.Drafter, when asked for
        self.grammar: JsonGrammar | None = None  # for --json-schema
        self.cached_tokens = 0  # of the last prompt, restored from --prompt-cache

    @classmethod
    def load(cls, options: GenerateOptions, tensor_parallel) -> Session:
        """The model (on the device asked for), its decoder, and what --stats says of them."""
        import torch  # heavy: only once we know there is work to do (a tensor-parallel rank has it already)

        from llmgen.decode import choose_decoder
        from llmgen.loading import load_model

        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise LLMGenError("--device cuda, but torch sees no CUDA device")
        if tensor_parallel is not None:
            device = tensor_parallel.device  # cuda:K, the rank's own GPU
        model_path, is_default = resolve_model(options.model)
        # torch.compile cannot trace into llmgen's own kernels (ctypes calls): --compile keeps PyTorch's.
        with console.status(f"loading {options.model or model_path.name}"):  # a transient line on a terminal
            loaded = load_model(model_path, device=device, dtype=options.dtype, quantize=options.quantize,
                                tokenizer_path=options.tokenizer_path, own_kernels=not options.compile_decode,
                                cache_quantized=True, tensor_parallel=tensor_parallel)
        if options.dtype != "auto" and options.quantize == "auto" and _has_int4_layers(loaded.model):
            console.print_warning(f"--dtype {options.dtype}: this file's 4-bit weights stay 4-bit (their matmuls "
                                  "take int8 or bfloat16 activations); add --quantize none to compute every matmul "
                                  f"in {options.dtype}")
        report_quantized_once(loaded, options.quantize)
        decoder = choose_decoder(loaded.model, compile=options.compile_decode)
        if options.stats:
            console.print_info(f"loaded {loaded.path} ({loaded.layout} layout, {loaded.config.arch}) "
                               f"in {loaded.load_seconds:.2f} s")
            console.print_info(repr(decoder))
            console.print_info(f"prompts: {decoder.prompt_path}")
        model_name = DEFAULT_MODEL_NAME if is_default else str(options.model or model_path)
        use_chat = options.chat if options.chat is not None else is_default
        session = cls(options, loaded, decoder, model_name, use_chat, device, tensor_parallel)
        session.drafter = _drafter(options, loaded, device)
        if options.json_schema is not None:
            from llmgen.cli.text_input import read_text_file
            from llmgen.grammar import JsonGrammar, read_schema

            source = str(options.json_schema)
            session.grammar = JsonGrammar(loaded.tokenizer, read_schema(read_text_file(source, "--json-schema"),
                                                                        source))
        return session

    def encode(self, text: str) -> list[int]:
        if self.use_chat:
            from llmgen.chat import chat_prompt_ids

            return chat_prompt_ids(self.tokenizer, text, self.options.system)
        ids = self.tokenizer.encode(text, allow_special=self.options.allow_special)
        if not ids:
            raise LLMGenError("the prompt is empty and this model has no BOS token to start from; give a prompt")
        return ids

    def text_stream(self, ids: list[int], sampling, stops: list[str], generator, on_logits=None):
        from llmgen.generation import TextStream, generate_ids

        tokenizer, tensor_parallel = self.tokenizer, self.tensor_parallel
        from llmgen.speculative import SpeculationStats

        self.speculation = SpeculationStats()
        cached = self.restore_prompt(ids, sampling)
        return TextStream(generate_ids(self.loaded.model, ids, sampling, stop_ids=tokenizer.stop_ids, cached=cached,
                                       n_valid=tokenizer.n_vocab, generator=generator, on_crop=console.print_warning,
                                       decoder=self.decoder, on_logits=on_logits,
                                       agree=tensor_parallel and tensor_parallel.first_rank_token,
                                       drafter=self.drafter, speculation=self.speculation,
                                       batch_size=self.options.batch_size,
                                       constraint=None if self.grammar is None else self.grammar.matcher()),
                          tokenizer, stops)

    def prompt_fingerprint(self) -> str:
        from llmgen import prompt_cache

        model = self.loaded.model
        return prompt_cache.fingerprint(self.loaded.path, self.tokenizer, model, next(model.parameters()).dtype,
                                        self.decoder.name)

    def restore_prompt(self, ids: list[int], sampling) -> int | None:
        """--prompt-cache: set the cache up with what the file holds of this prompt (generate_ids' `cached`),
        or None without the option or when the prompt and reply overflow the window (then it is not used)."""
        self.cached_tokens = 0
        model, path = self.loaded.model, self.options.prompt_cache
        if path is None or len(ids) + sampling.max_new_tokens > model.config.context_length:
            return None
        from llmgen import prompt_cache

        saved = prompt_cache.load(path, self.prompt_fingerprint())
        model.setup_cache(1, self.decoder.cache_length(len(ids) + sampling.max_new_tokens))
        self.cached_tokens = 0 if saved is None else prompt_cache.restore(model, saved, ids)
        return self.cached_tokens

    def save_prompt(self, ids: list[int]) -> None:
        if self.options.prompt_cache is not None:
            from llmgen import prompt_cache

            prompt_cache.save(self.options.prompt_cache, self.loaded.model, ids, self.prompt_fingerprint())

    def complete(self, text: str, ids: list[int], sampling, stops: list[str], generator):
        """Generate to the end; the stream, and the result as --json and --batch print it."""
        from llmgen.sampling import log_probs

        logprobs = self.options.logprobs
        step_log_probs: list = []  # (vocab,) per generated token, for --logprobs
        stream = self.text_stream(ids, sampling, stops, generator,
                                  None if logprobs is None else lambda logits: step_log_probs.append(log_probs(logits)))
        for _ in stream:
            pass
        result = {"model": self.model_name, "prompt": text, "text": stream.text, "ids": stream.ids,
                  "finish_reason": stream.finish_reason, "prompt_tokens": len(ids), "generated_tokens": len(stream.ids),
                  "tokens_per_second": round(stream.decode_tokens_per_second, 2)}
        if logprobs is not None:
            result["logprobs"] = _logprob_entries(self.tokenizer, stream.ids, step_log_probs, logprobs)
        return stream, result

    def run_batch(self, items: list, batch_settings: list) -> None:
        """--batch: one JSON result a line, in order, each line's options over the command's."""
        for index, (item, sampling) in enumerate(zip(items, batch_settings)):
            generator = (seeded_generator(item.options["seed"], self.device) if "seed" in item.options
                         else self.generator)
            _, result = self.complete(item.prompt, self.encode(item.prompt), sampling,
                                      item.options.get("stop", self.options.stops), generator)
            console.write(json.dumps({"index": index, **result}, ensure_ascii=False) + "\n")

    def run_samples(self, prompt_text: str, settings) -> list[str]:
        """--num-samples continuations of the prompt, streamed as text or one JSON object each; their texts."""
        options, prompt_ids = self.options, self.encode(prompt_text)
        texts = []
        for sample_index in range(options.num_samples):
            if options.as_json:
                stream, result = self.complete(prompt_text, prompt_ids, settings, options.stops, self.generator)
                console.write(json.dumps(result, ensure_ascii=False) + "\n")
            else:
                stream = self.text_stream(prompt_ids, settings, options.stops, self.generator)
                if sample_index > 0 and console.stdout.is_terminal:
                    console.stdout.rule(style="dim")
                elif sample_index > 0:
                    console.write("\n")
                _stream_text(stream)
            self.save_prompt(prompt_ids)
            if options.stats:
                reused = f" ({self.cached_tokens} from --prompt-cache)" if options.prompt_cache is not None else ""
                console.print_info(
                    f"prompt: {len(prompt_ids)} tokens{reused} at "
                    f"{len(prompt_ids) / max(stream.prefill_seconds, 1e-9):.1f} "
                    f"tok/s; generated {len(stream.ids)} tokens at {stream.decode_tokens_per_second:.1f} tok/s "
                    f"({stream.finish_reason})")
                if self.drafter is not None:
                    spec = self.speculation
                    console.print_info(f"speculative: {spec.accepted} of {spec.proposed} guesses kept "
                                       f"({100 * spec.acceptance:.0f}%), {spec.tokens_per_pass:.2f} tokens per pass")
            texts.append(stream.text)
        return texts


def _drafter(options: GenerateOptions, loaded, device: str):
    """The speculative drafter --speculate or --draft-model asks for, or None."""
    from llmgen.speculative import ModelDrafter, NgramDrafter, check_same_vocabulary

    if options.speculate == "ngram":
        return NgramDrafter(longest=options.draft_max)
    if options.draft_model is None:
        return None
    from llmgen.decode import choose_decoder
    from llmgen.loading import load_model

    draft_path, _ = resolve_model(options.draft_model)
    with console.status(f"loading the draft model {draft_path.name}"):
        draft = load_model(draft_path, device=device, dtype=options.dtype, quantize=options.quantize,
                           cache_quantized=True)
    check_same_vocabulary(loaded.tokenizer, draft.tokenizer)
    decoder = choose_decoder(draft.model)
    if options.stats:
        console.print_info(f"draft model {draft.path}: {decoder!r}")
    return ModelDrafter(draft.model, decoder, longest=options.draft_max)


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
    from llmgen.tokenization.tokenizer import piece

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
    from llmgen.quantization.linear import Int4Linear

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
