"""2,000 mutated inputs each for GGUF headers, safetensors headers and params.json/config.json values, through
the real loaders in a fresh process (fuzz_loading.py): no uncaught exception, no input that takes over 10 s,
and under 1 GB of memory growth over loading the unmutated file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COUNT = 2000


@pytest.mark.parametrize("kind", ["gguf", "safetensors", "config"])
def test_mutated_inputs_load_or_fail_cleanly(kind, tmp_path):
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "support" / "fuzz_loading.py"), kind, str(COUNT),
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] + result["refused"] + len(result["crashes"]) + result["hangs"] == COUNT
    assert result["crashes"] == [] and result["hangs"] == 0, result
    assert result["slowest_s"] < 10
    assert result["rss_growth_mb"] < 1024, result
    assert result["refused"] > COUNT // 4, result  # the mutations really did break files
