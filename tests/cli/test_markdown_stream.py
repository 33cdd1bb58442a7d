"""The chat's streamed Markdown (cli/markdown_stream.py): on a real terminal's screen (pyte, a terminal
emulator, reading what rich wrote) it ends exactly as rich renders the whole reply at once, and the work per
token does not grow with the reply."""
import io
import itertools
from pathlib import Path

import pyte
import pytest
from rich.console import Console
from rich.markdown import Markdown

from llmgen.cli.markdown_stream import MarkdownStream

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 80, 4000  # tall enough that nothing scrolls off: the whole screen is the whole output

MIXED = """# A heading

A paragraph with *emphasis*, **strong** and `code`,
over two lines.

- a list
- of items

  with a continuation paragraph

1. ordered
2. items

10. starting at ten

> a quote

```python
def f(x):

    return x  # a blank line inside the fence


```

~~~
tildes
~~~

| a | b |
|---|---|
| 1 | 2 |

---

After a rule.

    indented code

Setext heading
==============
The end, without a newline after it."""


def whole(text: str) -> list[str]:
    console = Console(file=io.StringIO(), width=WIDTH, color_system=None)
    console.print(Markdown(text))
    return trimmed(console.file.getvalue().splitlines())


def trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def streamed(text: str, sizes, refresh_per_second: float = 1e9, clock=None) -> tuple[list[str], MarkdownStream]:
    """text pushed in chunks of the given sizes onto a terminal; the emulated screen's lines."""
    console = Console(file=io.StringIO(), width=WIDTH, height=HEIGHT, force_terminal=True, color_system="standard")
    kwargs = {"clock": clock} if clock else {}
    with MarkdownStream(console, refresh_per_second=refresh_per_second, **kwargs) as out:
        start = 0
        for size in itertools.cycle(sizes):
            if start >= len(text):
                break
            out.push(text[start:start + size])
            start += size
    screen = pyte.Screen(WIDTH, HEIGHT)
    screen.set_mode(pyte.modes.LNM)  # a newline returns the cursor too, as a pty's onlcr does
    pyte.ByteStream(screen).feed(console.file.getvalue().encode())
    return trimmed(screen.display), out


@pytest.mark.parametrize("source", ["mixed", "README.md"])
def test_streamed_markdown_ends_as_the_whole_reply_renders(source):
    text = MIXED if source == "mixed" else (ROOT / source).read_text()[:4000]
    expected = whole(text)
    # Chunks of 1-5 characters like tokens, the live region redrawn after every one of them.
    screen, _ = streamed(text, sizes=[3, 1, 5, 2, 4])
    assert screen == expected
    if source == "mixed":  # one character at a time: every boundary split every way
        screen, _ = streamed(text, sizes=[1])
        assert screen == expected


def test_markdown_work_per_token_does_not_grow_with_the_reply():
    paragraph = ("Some words of a reply, with *emphasis* and a `name`, long enough to wrap on the terminal "
                 "once or twice.\n\n")
    code = "```\n" + "x = 1\n" * 8 + "```\n\n"
    ticks = itertools.count()

    def clock() -> float:  # a token every 1/20 s; the live region redrawn at 10 Hz: every other token
        return next(ticks) / 20

    work = []
    for repeats in (6, 24):
        text = (paragraph + code) * repeats
        _, out = streamed(text, sizes=[4], refresh_per_second=10, clock=clock)
        work.append(out.parsed_characters / len(text))
    # Each character is parsed once when its block is finished, plus the redraws of the one unfinished block:
    # the same per character for a reply four times as long. Re-parsing the whole reply on every redraw (the
    # old rendering) made this grow with the reply: ~4x here.
    assert work[1] < work[0] * 1.2, work
    assert work[1] < 25, work


def test_markdown_finished_blocks_are_parsed_once():
    text = (ROOT / "README.md").read_text()
    _, out = streamed(text, sizes=[4], refresh_per_second=0)  # no redraws: only finished blocks and the last
    # Each finished block once, and the first line of the next each time one is printed above the live region
    # (rich draws the live region again below it).
    assert out.parsed_characters <= 1.25 * len(text)
