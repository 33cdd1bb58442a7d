"""`llmgen chat` on a real pseudo-terminal against `llmgen generate` on one: does rendering the reply as
Markdown while it streams slow the decoding down? (issue 30, part 4)

Each round runs, in a fresh process on a pty of its own (so rich sees a terminal and draws), one chat turn
(`llmgen chat -t 0 -n N --stats`, the message typed on the terminal) and the same message through
`llmgen generate --chat -t 0 -n N --stats`; both print their decode speed on the terminal's stderr, which the
script reads back. The rounds alternate the two; medians are reported, and their ratio.

    python benchmarks/chat_render.py --rounds 3 --max-new-tokens 400
"""
from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LLMGEN = shutil.which("llmgen") or "llmgen"
MESSAGE = ("Write a long guide to baking bread at home, in Markdown: a title, sections with headings, numbered "
           "steps, bullet lists of ingredients and tips, and a short code block with a timer script.")
STATS = re.compile(rb"generated (\d+) tokens at ([\d.]+) tok/s")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(argv: list[str], typed: bytes | None, home: str, timeout: float = 600) -> tuple[int, float, bytes]:
    """Run argv on a fresh pty (80 x 50); type `typed` at the chat prompt, then /exit. Tokens and tok/s from
    the --stats line, and everything the terminal received."""
    controller, terminal = pty.openpty()
    os.set_blocking(controller, False)
    import fcntl
    import struct
    import termios
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "LLMGEN_HOME": home, "COLUMNS": "80", "LINES": "50"}
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    seen = b""
    deadline = time.time() + timeout

    def read_until(pattern) -> re.Match:
        nonlocal seen
        while time.time() < deadline:
            match = pattern.search(ANSI.sub(b"", seen))
            if match:
                return match
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # the process closed the terminal
                    break
        raise RuntimeError(f"{argv[1]}: no {pattern.pattern!r} in {seen[-2000:]!r}")

    try:
        if typed is not None:
            read_until(re.compile(rb"> $|> \Z|\n> "))
            os.write(controller, typed + b"\r")
        match = read_until(STATS)
        if typed is not None:
            os.write(controller, b"/exit\r")
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    return int(match.group(1)), float(match.group(2)), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--message", default=MESSAGE)
    args = parser.parse_args()
    n = str(args.max_new_tokens)
    runs: dict[str, list[tuple[int, float]]] = {"generate": [], "chat": []}
    with tempfile.TemporaryDirectory() as home:
        for round_ in range(args.rounds):
            for name in (("generate", "chat") if round_ % 2 == 0 else ("chat", "generate")):
                if name == "chat":
                    tokens, speed, _ = on_terminal([LLMGEN, "chat", "-t", "0", "-n", n, "--stats"],
                                                   args.message.encode(), home)
                else:
                    tokens, speed, _ = on_terminal([LLMGEN, "generate", "--chat", args.message, "-t", "0",
                                                    "-n", n, "--stats"], None, home)
                runs[name].append((tokens, speed))
                print(f"round {round_ + 1}: {name:8} {tokens} tokens at {speed:.1f} tok/s", file=sys.stderr)
    generate = statistics.median(speed for _, speed in runs["generate"])
    chat = statistics.median(speed for _, speed in runs["chat"])
    print("| command (on a pty, 80 x 50) | tokens | decode tok/s, median | vs generate |")
    print("|---|---:|---:|---:|")
    print(f"| `llmgen generate --chat -t 0 -n {n} --stats` | {runs['generate'][0][0]} | {generate:.1f} | 1.00x |")
    print(f"| `llmgen chat -t 0 -n {n} --stats` (Markdown) | {runs['chat'][0][0]} | {chat:.1f} | {chat / generate:.2f}x |")


if __name__ == "__main__":
    main()
