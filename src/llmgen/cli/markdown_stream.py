"""A reply rendered as Markdown while it streams, at a cost per token that does not grow with the reply.

Re-parsing the whole reply on every token (`live.update(Markdown(text))`) costs O(reply) a token and O(reply^2)
a turn: a 400-token chat reply streamed at 0.83x of `generate`'s speed. Here instead:
- a token only appends to the text; nothing is parsed then;
- a block that can no longer change (a paragraph, heading, list or fenced code block followed by a blank line
  and a line that starts a new block) is rendered once, above the live region, and never again;
- only the unfinished last block lives in rich's Live, and it is parsed when Live is refreshed: by push(), at
  most `refresh_per_second` times a second, not once per token. Refreshed here rather than by Live's own
  thread: that thread and a print of a finished block from this one each place the cursor by the live region's
  height before the other has drawn it, and leave lines doubled or erased on a real terminal.
So each character is parsed about once for good, plus at most a few re-renders a second of one block.
"""
from __future__ import annotations

import re
import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown

# A fence opens and closes a code block: up to 3 spaces, then 3 or more ` or ~ (CommonMark).
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
# A line that may continue the block before a blank line rather than start a new one: indented (list item
# continuation, indented code) or a list item (a loose list stays one list, its numbering whole).
_CONTINUES = re.compile(r"[ \t]|[-+*][ \t]|\d{1,9}[.)][ \t]|[-+*]$|\d{1,9}[.)]$")

_UNSEPARATED = (["bullet_list_open"], ["ordered_list_open"], ["blockquote_open"], ["table_open"])


class MarkdownStream:
    """push(text) as chunks arrive, then close(); or `with MarkdownStream(console) as out: out.push(...)`.

    parsed_characters counts the characters handed to the Markdown parser (finished blocks once each, the
    live block on each refresh): the measure of work that tests hold to about one per character.
    """

    def __init__(self, console: Console, refresh_per_second: float = 20, clock=time.monotonic):
        self.parsed_characters = 0
        self._tail = ""  # text of the block still streaming (and any blank lines before the next)
        self._scanned = 0  # characters of _tail whose complete lines have been looked at
        self._in_fence: str | None = None  # the opening fence of an unclosed code block
        self._blank_pending = False  # a blank line outside a fence ends _tail's first block, if what follows is new
        self._tail_has_text = False  # _tail holds a line that is not blank
        self._blocks = 0
        self._rule_last = False  # the last block printed ended with a horizontal rule
        self._interval = 1 / refresh_per_second if refresh_per_second > 0 else float("inf")
        self._clock = clock
        self._refreshed = clock()
        self._live = Live(_LiveTail(self), console=console, auto_refresh=False, vertical_overflow="visible")

    def __enter__(self) -> MarkdownStream:
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def push(self, text: str) -> None:
        self._tail += text
        # Look only at lines completed since the last push: O(len(text)) a push, amortised.
        while (end := self._tail.find("\n", self._scanned)) >= 0:
            start, self._scanned = self._scanned, end + 1
            self._line(start, end)
        if self._clock() - self._refreshed >= self._interval:
            self._live.refresh()
            self._refreshed = self._clock()

    def close(self) -> None:
        """Draw what is left as the live region's last frame, which stays on the screen."""
        if not self._live.is_started:
            return
        last = self._finished(self._tail) if self._tail.strip() else _Nothing()
        self._tail = ""
        self._live.update(last, refresh=True)
        self._live.stop()

    def _line(self, start: int, end: int) -> None:
        line = self._tail[start:end]
        if self._in_fence is not None:  # inside a code block only its closing fence matters
            fence = _FENCE.match(line)
            if fence and fence.group(1)[0] == self._in_fence[0] and len(fence.group(1)) >= len(self._in_fence) \
                    and not line[fence.end():].strip():
                self._in_fence = None
            return
        if not line.strip():
            self._blank_pending = self._tail_has_text
            return
        self._tail_has_text = True
        if self._blank_pending and not _CONTINUES.match(line):  # a new block starts here: the one before is done
            self._flush(start)
        self._blank_pending = False
        fence = _FENCE.match(line)
        if fence:
            self._in_fence = fence.group(1)

    def _flush(self, start: int) -> None:
        block, self._tail = self._tail[:start], self._tail[start:]
        self._scanned -= start  # _tail now starts with the line being looked at
        self._live.console.print(self._finished(block))  # the live region is drawn again below it

    def _finished(self, block: str) -> RenderableType:
        """A finished block, rendered as in a document of all the blocks so far, and counted as printed."""
        renderable, markdown = self._rendered(block)
        self._blocks += 1
        self._rule_last = [token.type for token in markdown.parsed if token.level == 0][-1:] == ["hr"]
        return renderable

    def _rendered(self, block: str) -> tuple[RenderableType, Markdown]:
        """block parsed, after the blank line rich puts between two blocks of a document where it goes:
        none after a rule, nor before a list, quote or table (their inner elements end without one;
        tests/cli/test_markdown_stream.py holds it)."""
        markdown = Markdown(block.strip("\n"))
        self.parsed_characters += len(markdown.markup)
        first = [token.type for token in markdown.parsed[:1]]
        separated = self._blocks and not self._rule_last and first not in _UNSEPARATED
        return (Group(_Nothing(), markdown) if separated else markdown), markdown


class _LiveTail:
    """What Live shows: the streaming block, parsed when Live renders it, not when a token arrives."""

    def __init__(self, stream: MarkdownStream):
        self.stream = stream

    def __rich__(self) -> RenderableType:
        return self.stream._rendered(self.stream._tail)[0]


class _Nothing:
    """An empty line."""

    def __rich__(self) -> str:
        return ""
