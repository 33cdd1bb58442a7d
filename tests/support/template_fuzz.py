"""Hostile chat templates made at random, rendered through llmgen's chat_template.render in this process:
`python template_fuzz.py N SEED` prints one JSON line: the slowest render, the process's peak RSS, how many
rendered or failed, and any failure that was not one clean line (test_template_fuzz.py runs it alone, so
the peak is the renders' and not a test runner's)."""

import json
import random
import resource
import sys
import time

from llmgen.chat_template import render
from llmgen.errors import LLMGenError

BIG = ["10**9", "4000000000", "99999", "2**62", "(9 ** 9)", "100000", "1000000", "-1", "0"]
SMALL = ["1", "2", "3", "7", "0", "-2"]
TEXT = ["'x'", "'ab'", "'%s'", "'{:>9}'", "'\\n'", "messages[0]['content']", "'x' * 1000"]


def number(rng: random.Random) -> str:
    return rng.choice(BIG if rng.random() < 0.5 else SMALL)


def expression(rng: random.Random, depth: int = 0) -> str:
    """An expression that tries to make something huge, fail, or run long."""
    if depth > 3 or rng.random() < 0.25:
        return rng.choice([*TEXT, number(rng), "ns.s", "messages", "range(" + number(rng) + ")"])
    a, b = expression(rng, depth + 1), expression(rng, depth + 1)
    return rng.choice([
        f"({a} ** {b})", f"({a} * {b})", f"({a} + {b})", f"({a} ~ {b})", f"({a} % {b})", f"({a} // {b})",
        f"({a} / {b})", f"({a})|center({number(rng)})", f"({a})|indent({number(rng)})",
        f"({a})|replace('x', {a})", f"({a})|wordwrap({number(rng)}, wrapstring={a})", f"({a})|format({b})",
        f"({a})|tojson(indent={number(rng)})", f"({a})|join({b})", f"({a})|list", f"({a})|string",
        f"({a})|batch({number(rng)}, 'x')", f"({a})|slice({number(rng)}, 'x')", f"({a})|pprint",
        f"({a})|truncate({number(rng)})", f"({a})|sort|unique|list", f"({a})|map('upper')|list",
        f"({a}).ljust({number(rng)})", f"({a}).zfill({number(rng)})", f"({a}).replace('x', {b})",
        f"({a}).expandtabs({number(rng)})", f"({a}).format({b}, {b})", f"'{{:{{}}}}'.format({a}, {b})",
        f"({a}).join([{b}, {b}])", f"({a})[{number(rng)}]", f"({a}).__class__", f"lipsum({number(rng)})",
        f"f({number(rng)})", f"raise_exception({a})", f"({a}).items()", f"{{'k': {a}}}[{b}]",
    ])


def statement(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.3:
        return "{{ " + expression(rng) + " }}"
    body = "".join(statement(rng, depth + 1) for _ in range(rng.randint(1, 3)))
    return rng.choice([
        f"{{% for i in range({number(rng)}) %}}{body}{{% endfor %}}",
        f"{{% for c in {expression(rng)} %}}{body}{{% endfor %}}",
        f"{{% for i in range({number(rng)}) %}}{{% set ns.s = ns.s ~ ns.s %}}{body}{{% endfor %}}",
        f"{{% if {expression(rng)} %}}{body}{{% else %}}{body}{{% endif %}}",
        f"{{% set t %}}{body}{{% endset %}}{{{{ t ~ t }}}}",
        f"{{% filter upper %}}{body}{{% endfilter %}}",
        f"{{% for x in [1, [2, [3]]] recursive %}}{{{{ loop(range({number(rng)})) if x is iterable }}}}{{% endfor %}}",
        "(" * rng.choice([10, 500, 5000]) + "1" + ")" * rng.choice([10, 500, 5000]),
        "{% if 1 %}" * rng.choice([5, 30, 300]) + body + "{% endif %}" * rng.choice([5, 30, 300]),
    ])


def template(rng: random.Random) -> str:
    macros = rng.choice([
        "", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}xxxxxxxx{% endif %}{% endmacro %}",
        "{% macro f(n) %}{{ caller() if caller else n }}{% endmacro %}",
    ])
    return ("{% set ns = namespace(s='x' * " + rng.choice(SMALL + ["1000", "100000"]) + ") %}" + macros
            + "".join(statement(rng) for _ in range(rng.randint(1, 4))))


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which starts again at exec (ru_maxrss keeps
    the high-water mark of the process that started this one, a test runner of gigabytes)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(count: int, seed: int) -> None:
    rng = random.Random(seed)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    slowest, rendered, failed, unclean = 0.0, 0, 0, []
    for _ in range(count):
        text = template(rng)
        started = time.monotonic()
        try:
            render(text, messages, source="fuzz.jinja")
            rendered += 1
        except LLMGenError as e:
            failed += 1
            if "\n" in str(e) or not str(e).startswith("fuzz.jinja: "):
                unclean.append(str(e)[:300])
        except BaseException as e:  # noqa: BLE001 - what the test reports: anything but one LLMGenError
            unclean.append(f"{type(e).__name__}: {str(e)[:200]} from {text[:200]!r}")
        elapsed = time.monotonic() - started
        if elapsed > slowest:
            slowest, slowest_template = elapsed, text
    peak = peak_rss()
    print(json.dumps({"slowest_seconds": slowest, "slowest_template": slowest_template[:300], "peak_rss": peak,
                      "rendered": rendered, "failed": failed, "unclean": unclean[:5]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
