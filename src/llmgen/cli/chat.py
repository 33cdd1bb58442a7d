"""`llmgen chat`: a conversation with an instruct model, each turn reusing the KV cache of the ones before.

On a terminal: a prompt with line editing and history (readline; kept in llmgen's data directory),
replies streamed and rendered as Markdown, and commands: /exit, /reset, /system TEXT, /save FILE. A line
ending in a backslash continues on the next. Anywhere else (a pipe, a file): each line of stdin is one
user turn, and each reply goes to stdout followed by a newline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from llmgen.cli import console
from llmgen.cli.model_path import report_quantized_once, resolve_model
from llmgen.cli.sampling_options import check_seed, sampling_settings, seeded_generator
from llmgen.cli.text_input import check_utf8
from llmgen.errors import LLMGenError

PROMPT, CONTINUATION = "> ", ". "
COMMANDS = "/exit, /reset, /system TEXT, /save FILE (/save! FILE replaces any file)"


def chat(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="An instruct model: a directory, a .gguf file, an alias, or the embedded default."
    ),
    system: Optional[str] = typer.Option(None, "--system", help="A system message that starts the conversation."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "-n", help="Most tokens per reply."),
    temperature: float = typer.Option(0.7, "--temperature", "-t", help="Sampling temperature; 0 is greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample from the k most likely tokens only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample from the smallest set with this much mass."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for reproducible sampling."),
    repeat_penalty: float = typer.Option(
        1.0, "--repeat-penalty", help="Penalize tokens among the last --repeat-last-n (see generate; 1.0 is off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="How many recent tokens --repeat-penalty covers."),
    quantize: str = typer.Option("auto", "--quantize", "-q", help="auto, none, int8 or int4 (see generate)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    stats: bool = typer.Option(False, "--stats", help="Per turn on stderr: new and cached prompt tokens, speeds."),
    tp: Optional[int] = typer.Option(
        None, "--tp", help="Tensor parallelism on CPU: split the model over N processes (see generate --tp)."),
) -> None:
    """Chat with an instruct model; each turn prefills only its new tokens."""
    check_seed(seed)
    if system is not None:
        check_utf8(system, "--system")
    from llmgen.cli import invocation
    from llmgen.cli.launch import join_ranks, launch, ranks_to_start

    n_ranks, start_ranks = ranks_to_start(tp)
    if start_ranks:  # this command again, as n_ranks processes: rank 0 reads and writes, the others follow
        raise typer.Exit(launch(n_ranks, invocation.of(ctx).argv))
    from llmgen.chat import Conversation
    from llmgen.decode import choose_decoder
    from llmgen.loading import load_model

    settings = sampling_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)
    tensor_parallel = join_ranks(invocation.of(ctx), "cpu") if n_ranks > 1 else None
    path, _ = resolve_model(model)
    with console.status(f"loading {model or path.name}"):
        loaded = load_model(path, dtype=dtype, quantize=quantize, cache_quantized=True, tensor_parallel=tensor_parallel)
    report_quantized_once(loaded, quantize)
    conversation = Conversation(loaded.model, loaded.tokenizer, system, on_drop=console.print_warning)
    session = _Session(conversation, settings, seeded_generator(seed), choose_decoder(loaded.model), stats,
                       tensor_parallel)
    if tensor_parallel is not None and tensor_parallel.rank != 0:
        _follow(session, tensor_parallel)
        return
    skipped = 0
    if sys.stdin is not None and sys.stdin.isatty():
        _repl(session)
    else:
        skipped = _pipe(session)
    if tensor_parallel is not None:
        tensor_parallel.share_json(None)  # the end, for the other ranks
        tensor_parallel.close()
    if skipped:
        raise typer.Exit(1)


class _Session:
    def __init__(self, conversation, settings, generator, decoder, stats: bool, tensor_parallel=None):
        self.conversation, self.settings, self.generator, self.decoder = conversation, settings, generator, decoder
        self.stats, self.tensor_parallel = stats, tensor_parallel
        self.saved: set[tuple[int, int]] = set()  # (device, inode) of the files /save wrote

    def share(self, message: dict) -> None:
        """Rank 0 of a tensor-parallel chat: what it is about to do, for the other ranks to do too (_follow)."""
        if self.tensor_parallel is not None and self.tensor_parallel.rank == 0:
            self.tensor_parallel.share_json(message)

    def turn(self, text: str, render) -> bool:
        """One user turn: the reply's text chunks go to `render`; statistics to stderr. False: the message
        did not fit in the model's window (said on stderr; the chat goes on as it was)."""
        from llmgen.chat import MessageTooLong
        from llmgen.generation import TextStream

        self.share({"turn": text})
        agree = self.tensor_parallel and self.tensor_parallel.first_rank_token
        try:
            ids = self.conversation.reply(text, self.settings, generator=self.generator, decoder=self.decoder,
                                          agree=agree)
        except MessageTooLong as e:
            console.print_warning(str(e))
            return False
        stream = TextStream(ids, self.conversation.tokenizer)
        render(stream)
        if self.stats:
            turn = self.conversation.turns[-1]
            console.print_info(
                f"prompt: {turn.new_tokens} new tokens ({turn.cached_tokens} cached) at "
                f"{turn.new_tokens / max(stream.prefill_seconds, 1e-9):.1f} tok/s; generated {len(stream.ids)} "
                f"tokens at {stream.decode_tokens_per_second:.1f} tok/s ({stream.finish_reason})")
        return True


def _pipe(session: _Session) -> int:
    """Each line of stdin is a user turn; each reply is written to stdout, then a newline. A message too long
    for the model's window gets no reply (a warning on stderr); the others go on, and the exit status is 1."""
    def render(stream) -> None:
        for chunk in stream:
            console.write(chunk)
        console.write("\n")

    skipped = 0
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LLMGenError(f"line {number} of standard input is not valid UTF-8") from None
        if line.strip():
            skipped += not session.turn(check_utf8(line, f"line {number}"), render)
    return skipped


def _follow(session: _Session, tensor_parallel) -> None:
    """A tensor-parallel rank other than 0: each turn and command rank 0 shares, until it says the end."""
    def drain(stream) -> None:
        for _ in stream:
            pass

    while (message := tensor_parallel.share_json(None)) is not None:
        if "turn" in message:
            session.turn(message["turn"], drain)
        else:
            _command(session, message["command"])
    tensor_parallel.close()


def _repl(session: _Session) -> None:
    history = _start_history()
    console.print_info(f"chatting with {session.conversation.tokenizer.name} · {COMMANDS} · Ctrl-D to end")
    try:
        while True:
            text = _read_message()
            if text is None:  # Ctrl-D
                console.write("\n")
                return
            if not text.strip():
                continue
            if text.startswith("/"):
                if _command(session, text.strip()):
                    return
                continue
            try:
                session.turn(text, _render_markdown)
            except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
                console.write("\n")
    finally:
        _save_history(history)


def _read_message() -> str | None:
    lines: list[str] = []
    while True:
        try:
            line = input(CONTINUATION if lines else PROMPT)
        except EOFError:
            return None
        except KeyboardInterrupt:  # Ctrl-C drops what was typed
            console.write("\n")
            lines = []
            continue
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        return "\n".join([*lines, line])


def _command(session: _Session, text: str) -> bool:
    """Run a /command; True ends the chat."""
    name, _, argument = text.partition(" ")
    conversation = session.conversation
    if name in ("/exit", "/quit"):
        return True
    if name in ("/reset", "/system"):  # the conversation changes on every rank
        session.share({"command": text})
    if name == "/reset":
        conversation.reset(conversation.system)
        console.print_info("the conversation starts again")
    elif name == "/system":
        conversation.reset(argument.strip() or None)
        console.print_info("new system message; the conversation starts again")
    elif name in ("/save", "/save!") and argument.strip():
        if session.tensor_parallel is None or session.tensor_parallel.rank == 0:
            _save(session, Path(argument.strip()).expanduser(), replace=name == "/save!")
    else:
        console.print_warning(f"unknown command {text!r}; commands: {COMMANDS}")
    return False


def _save(session: _Session, target: Path, replace: bool) -> None:
    """The messages as JSON, written atomically (a full disk leaves an earlier save whole) and readable by
    the user alone. An existing file is replaced only when this chat wrote it, or with /save!."""
    from llmgen.assets import write_atomically

    messages = session.conversation.messages()
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        if target.exists() and not replace and _identity(target) not in session.saved:
            console.print_warning(f"{target} exists and is not a save of this chat; /save! {target} replaces it")
            return
        write_atomically(target, (json.dumps(messages, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
        session.saved.add(_identity(target))
    except OSError as e:
        console.print_warning(f"could not save to {target}: {e.strerror or e}")
    else:
        console.print_info(f"saved {len(messages)} messages to {target}")


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def _render_markdown(stream) -> None:
    """The reply as it streams, rendered as Markdown (code blocks, lists, emphasis) on the terminal, at a
    cost per token that does not grow with the reply (markdown_stream.py)."""
    from llmgen.cli.markdown_stream import MarkdownStream

    with MarkdownStream(console.stdout) as out:
        for chunk in stream:
            out.push(chunk)


def _start_history():
    """readline's line editing, and the history of earlier chats (llmgen's data directory)."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return None
    from llmgen.assets import data_dir

    path = data_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def _save_history(path) -> None:
    if path is None:
        return
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError:
        pass
