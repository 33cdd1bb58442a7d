"""2,000 hostile chat templates made at random (template_fuzz.py: huge powers and repetitions, doubling loops,
deep nesting, huge ranges, recursion through macros and recursive loops, filters and str methods with absurd
arguments), rendered one after another in a process of their own: every render ends within 6 s, the process
never passes 1 GB, and every failure is one LLMGenError line naming the template's file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~25 s


def test_a_thousand_hostile_templates_each_end_quickly_in_bounded_memory():
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "support" / "template_fuzz.py"), "1000", "28"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["unclean"] == [], report["unclean"]
    assert report["slowest_seconds"] < 6, report["slowest_template"]
    assert report["peak_rss"] < 1 << 30, report["peak_rss"]
    assert report["rendered"] > 100 and report["failed"] > 500  # the generator makes both kinds
