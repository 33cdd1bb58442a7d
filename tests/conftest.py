import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmgen import assets

LLMGEN = shutil.which("llmgen", path=str(Path(sys.executable).parent)) or shutil.which("llmgen")


def default_sigint() -> None:
    """preexec_fn for a child that a test will Ctrl-C: SIGINT as from a terminal. A test runner started
    in the background (`pytest &`) passes SIGINT on ignored, and Python keeps ignoring it, as a background
    job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_llmgen(*args, input=None, env=None, timeout=120):
    """Run the installed `llmgen` console script as a user would, stdout and stderr captured."""
    assert LLMGEN, "the llmgen console script is not installed (pip install -e .)"
    full_env = {**os.environ, **(env or {})}
    if isinstance(input, str):
        input = input.encode()
    done = subprocess.run(
        [LLMGEN, *map(str, args)], input=input, capture_output=True, env=full_env, timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    done.out = done.stdout.decode("utf-8", errors="replace")
    done.err = done.stderr.decode("utf-8", errors="replace")
    return done


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0, result.out
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def llama3_tokenizer_file():
    path = assets.locate("llama3")
    assert path is not None, "run `python -m llmgen.assets fetch` (make test does)"
    return path
