"""Jinja2's immutable sandbox with bounded work: where chat templates (code from a downloaded file) run.

The sandbox keeps a template from touching anything outside it; this module keeps it from running for
ever or filling memory, on any thread. Every place where a template can make something large in one
C-level step is checked *before* that step: the operators `*`, `**`, `+`, `%` and `~`, the joins of
blocks and macros, the filters and str methods that take a size (center, indent, replace, join, format,
...), and lipsum. Nothing a template makes is longer than MAX_LENGTH, no integer is wider than
MAX_INT_BITS, and all it makes together stays under MAX_PRODUCED. Every loop iteration, call, operator
and filter counts as a step: past MAX_STEPS, or past the deadline (checked every few steps), the render
stops. So no single step is unbounded, and the steps are bounded: the render ends, and its error is a
TemplateLimit.
"""

from __future__ import annotations

import contextvars
import json
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import loopcontrols
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_LENGTH = 10_000_000  # characters of a string, items of a list: far beyond any model's context
MAX_PRODUCED = 100_000_000  # characters and items made in one render, all together
MAX_ITEMS = 1_000_000  # items of a list a filter makes
MAX_INT_BITS = 1 << 14  # integers a template computes (real ones count messages)
MAX_WIDTH = 10_000  # widths and counts given to filters and formats (real ones: 4, 80, 255)
MAX_STEPS = 2_000_000  # loop iterations, calls, operators, filters (a 1,000-message chat takes ~8,000)
CHECK_EVERY = 64  # steps between looks at the clock (a step over a 10M-character string takes ~10 ms)
# Format fields of `%` and str.format whose width or precision is a number (checked) or comes from an argument.
PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
SPEC_NUMBER = re.compile(r"\d+")


class TemplateLimit(jinja2.TemplateError):
    """A template went past one of the bounds above."""


class _Budget:
    """What one render may still do."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.steps = 0
        self.produced = 0

    def step(self, count: int = 1) -> None:
        before, self.steps = self.steps, self.steps + count
        if self.steps // CHECK_EVERY != before // CHECK_EVERY:
            if self.steps > MAX_STEPS:
                raise TemplateLimit(f"it took more than {MAX_STEPS} steps")
            if time.monotonic() > self.deadline:
                raise TemplateLimit("it ran out of time")

    def made(self, value: Any) -> Any:
        """Count what a step made (a string or a list) and refuse one too large."""
        if isinstance(value, (str, list, tuple, dict)):
            size = len(value)
            if size > (MAX_LENGTH if isinstance(value, str) else MAX_ITEMS):
                raise TemplateLimit(f"it made a {type(value).__name__} of {size} items")
            self.produced += size
            if self.produced > MAX_PRODUCED:
                raise TemplateLimit(f"it made more than {MAX_PRODUCED} characters and items")
        return value


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("llmgen_template_budget")


def _spend() -> _Budget:
    try:
        budget = _budget.get()
    except LookupError:  # compiled or called outside render(): no budget, no work
        raise TemplateLimit("a template runs only inside sandbox.render") from None
    budget.step()
    return budget


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise TemplateLimit(what)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else len(str(value))


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


# --- checks made before a step that could make something large ------------------------------------

def _check_binop(operator: str, left: Any, right: Any) -> None:
    numbers = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and numbers and right > 0:
        _require(max(_int_bits(left), 1) * right <= MAX_INT_BITS or abs(left) <= 1,
                 f"{left!r:.20} ** {right!r:.20} is too large")
    elif operator == "*" and numbers:
        _require(_int_bits(left) + _int_bits(right) <= MAX_INT_BITS, "a product is too large")
    elif operator == "*":
        sequence, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(count, int) and isinstance(sequence, (str, list, tuple)):
            _require(len(sequence) * count <= MAX_LENGTH, f"repeating {len(sequence)} items {count} times is too many")
    elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _require(len(left) + len(right) <= MAX_LENGTH, "a sum of sequences is too long")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


def _check_percent_format(text: str) -> None:
    for width, precision in PERCENT_FIELD.findall(text):
        for number in (width, precision):
            _require(number != "*" and (not number or int(number) <= MAX_WIDTH), f"a format width {number!r:.20}")


def _check_format_spec(text: str) -> None:
    """str.format's fields: widths within MAX_WIDTH, none taken from an argument."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError:
        return  # str.format will refuse it itself
    for _, _, spec, _ in fields:
        if spec:
            _require("{" not in spec, "a format spec taken from an argument")
            _require(all(int(n) <= MAX_WIDTH for n in SPEC_NUMBER.findall(spec)), f"a format spec {spec!r:.20}")


def _check_width(width: Any) -> None:
    _require(not isinstance(width, int) or width <= MAX_WIDTH, f"a width of {width!r:.20}")


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        times = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        _require(len(text) + times * max(len(new) - len(old), 0) <= MAX_LENGTH, "a replace makes too long a string")


def _joined(items: Iterable[Any], separator: Any) -> list[str]:
    """The items of a join as strings, checked to fit before joining (a join of one long string many
    times over is the cheapest way to ask for a terabyte)."""
    budget = _budget.get()
    parts, total = [], 0
    for item in items:
        budget.step()
        part = item if isinstance(item, str) else str(item)
        total += len(part) + _length(separator)
        _require(total <= MAX_LENGTH, "a join makes too long a string")
        parts.append(part)
    return parts


# Filters and str methods, by name: the check of their arguments before they run.
def _filter_checks() -> dict[str, Callable[..., None]]:
    def lines_times_width(value, width=4, *args, **kwargs):
        width = len(width) if isinstance(width, str) else width
        _check_width(width)
        _require(_length(value) + (str(value).count("\n") + 1) * width <= MAX_LENGTH, "indent makes too long a string")

    def wrapped_lines(value, width=79, break_long_words=True, wrapstring=None, *args, **kwargs):
        _require(_length(value) <= MAX_ITEMS, "wordwrap's text is too long")
        lines = _length(value) // max(width if isinstance(width, int) else 1, 1) + 1
        _require(_length(value) + lines * _length(wrapstring or "\n") <= MAX_LENGTH, "wordwrap makes too long a string")

    return {
        "center": lambda value, width=80, *a, **k: _check_width(width),
        "indent": lines_times_width,
        "wordwrap": wrapped_lines,
        "urlize": lambda value, *a, **k: _require(_length(value) <= MAX_ITEMS, "urlize's text is too long"),
        "format": lambda value, *a, **k: _check_percent_format(value) if isinstance(value, str) else None,
        "replace": lambda value, old, new, count=None, *a, **k: _check_replace(str(value), old, new,
                                                                             -1 if count is None else count),
        "batch": lambda value, linecount, *a, **k: _check_width(linecount),
        "slice": lambda value, slices, *a, **k: _check_width(slices),
        "list": lambda value, *a, **k: _require(not hasattr(value, "__len__") or len(value) <= MAX_ITEMS,
                                                "a list of too many items"),
        "pprint": lambda value, *a, **k: _require(_length(value) <= MAX_WIDTH, "pprint of too many items"),
        "truncate": lambda value, length=255, killwords=False, end="...", leeway=None, *a, **k: _check_width(leeway),
    }


# Filters that walk their input item by item in Python code (which no step interrupts).
ITERATING_FILTERS = frozenset({"batch", "slice", "unique", "groupby", "map", "select", "reject", "selectattr",
                               "rejectattr", "dictsort", "sort", "sum", "min", "max", "items", "wordwrap", "urlize"})

STR_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda self, width, *a: _check_width(width),
    "ljust": lambda self, width, *a: _check_width(width),
    "rjust": lambda self, width, *a: _check_width(width),
    "zfill": lambda self, width: _check_width(width),
    "expandtabs": lambda self, tabsize=8: _require(
        len(self) + self.count("\t") * (tabsize if isinstance(tabsize, int) else 0) <= MAX_LENGTH, "expandtabs"),
    "replace": lambda self, old, new, count=-1: _check_replace(self, old, new, count),
    "format": lambda self, *a, **k: _check_format_spec(self),
    "format_map": lambda self, *a, **k: _check_format_spec(self),
    "translate": lambda self, table: _require(
        not isinstance(table, dict) or len(self) * max(map(_length, table.values()), default=1) <= MAX_LENGTH,
        "translate makes too long a string"),
}


# --- the environment --------------------------------------------------------------------------------

class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code, with every loop stepping the budget and `~` checking its size first."""

    def visit_For(self, node: nodes.For, frame) -> None:  # noqa: N802 (Jinja's visitor names)
        # for x in environment.ticking(iterable): each item a step
        node.iter = nodes.Call(nodes.EnvironmentAttribute("ticking"), [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame) -> None:  # noqa: N802
        if frame.eval_ctx.volatile:
            joiner = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            joiner = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.checked_join({joiner}, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment (as transformers renders chat templates: trim_blocks, lstrip_blocks,
    loop controls, raise_exception, a tojson that keeps non-ASCII text, strftime_now), bounded as above.
    Constant folding is off: a folded expression would run at compile time, outside the checks."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], optimized=False)
        checks = _filter_checks()
        self.filters = {name: _bounded(function, checks.get(name), name in ITERATING_FILTERS)
                        for name, function in self.filters.items()}
        self.filters["join"] = _bounded_join(self.filters["join"])
        self.filters["tojson"] = _bounded(_tojson, lambda value, ensure_ascii=False, indent=None, *a, **k:
                                          _check_width(indent))
        self.globals.pop("lipsum")  # up to n paragraphs of filler: no chat template uses it
        self.globals["range"] = self.bounded_range
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: _spend().made(datetime.now().strftime(str(fmt)[:1000]))

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _spend()
        _check_binop(operator, left, right)
        return budget.made(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        budget = _spend()
        method = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level: stepped too
            args = (__self.ticking(args[0]), *args[1:])
        elif isinstance(getattr(method, "__self__", None), str):
            name = getattr(method, "__name__", "")
            if name == "join" and args:
                args = (_joined(args[0], method.__self__), *args[1:])
            elif name in STR_METHOD_CHECKS:
                STR_METHOD_CHECKS[name](method.__self__, *args, **kwargs)
        return budget.made(super().call(__context, __obj, *args, **kwargs))

    def concat(self, parts: Iterable[Any]) -> str:
        """The join of a block's or macro's output."""
        _spend()
        return "".join(_joined(parts, ""))

    @staticmethod
    def checked_join(joiner: Callable[[Iterable[Any]], str], parts: tuple) -> str:
        """`a ~ b ~ c`, its length checked before it is made."""
        budget = _spend()
        return budget.made(joiner(_joined(parts, "")))

    @staticmethod
    def ticking(iterable: Any) -> Iterator[Any]:
        budget = _spend()
        for item in iterable:
            budget.step()
            yield item

    @staticmethod
    def bounded_range(*args: int) -> range:
        _spend()
        numbers = range(*args)
        _require(len(numbers) <= MAX_ITEMS // 10, f"range of {len(numbers)} numbers")
        return numbers


def _bounded(function: Callable, check: Callable[..., None] | None, iterates: bool = False) -> Callable:
    """A filter that steps the budget, is checked before it runs where it can make something large, and has
    what it made counted. One that goes through its input item by item in Python (iterates) costs a step
    an item, counted before it runs. Jinja's pass_context/pass_environment marks are kept (wraps copies
    them)."""
    @wraps(function)
    def bounded(*args, **kwargs):
        budget = _spend()
        values = args[1:] if getattr(function, "jinja_pass_arg", None) is not None else args
        if iterates and values and hasattr(values[0], "__len__"):
            _require(len(values[0]) <= MAX_ITEMS, f"a filter over {len(values[0])} items")
            budget.step(len(values[0]))
        if check is not None:
            check(*values, **kwargs)
        return budget.made(function(*args, **kwargs))
    return bounded


def _bounded_join(join: Callable) -> Callable:
    @wraps(join)
    def bounded(eval_ctx, value, d="", attribute=None):
        if attribute is None:  # the items as strings, their total checked (with attribute: the items' own)
            value = _joined(value, d)
        return join(eval_ctx, value, d, attribute)
    return bounded


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


_ENVIRONMENT: list[BoundedEnvironment] = []


def environment() -> BoundedEnvironment:
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(BoundedEnvironment())
    return _ENVIRONMENT[0]


@lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    return environment().from_string(template)  # runs none of the template's code (no constant folding)


def render(template: str, variables: dict[str, Any], *, seconds: float, max_chars: int) -> str:
    """The template's text for these variables, within the bounds (raises what the template raises, a
    TemplateLimit past a bound, a TemplateSyntaxError for a template that does not parse)."""
    token = _budget.set(budget := _Budget(seconds))
    try:
        compiled = _compiled(template)
        pieces, total = [], 0
        for piece in compiled.generate(**variables):
            budget.step()
            total += len(piece)
            _require(total <= max_chars, f"it rendered more than {max_chars} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _budget.reset(token)
