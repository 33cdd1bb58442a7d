import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmgen import assets

LLMGEN = shutil.which("llmgen", path=str(Path(sys.executable).parent)) or shutil.which("llmgen")

# `make test` runs the suite in pytest-xdist workers, one per core: each worker, and every llmgen it starts,
# then computes on one thread. Two workers of two OpenMP threads each on two cores ran a model subprocess at
# half the speed of one thread each (the threads spin waiting for each other): the suite's largest cost.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


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
    return _with_text(done)


def _with_text(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A finished run with its stdout and stderr also as text (out, err)."""
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
def smollm2_hf_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct in Hugging Face layout (checkpoints.smollm2_hf: 18 s, made once).
    Read-only for the tests that share it."""
    from checkpoints import smollm2_hf

    return smollm2_hf(tmp_path_factory.mktemp("smollm2-hf") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def llama3_tokenizer_file():
    path = assets.locate("llama3")
    assert path is not None, "run `python -m llmgen.assets fetch` (make test does)"
    return path


def run_on_terminal(*args, columns: int = 80, timeout: float = 120) -> str:
    """Run `llmgen ARGS` with stdout and stderr on a pseudo-terminal of this width; what it showed, ANSI
    escapes removed."""
    import pty
    import re
    import select
    import time

    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": str(columns)}
    process = subprocess.Popen([LLMGEN, *map(str, args)], stdin=subprocess.DEVNULL, stdout=terminal,
                               stderr=terminal, env=env)
    os.close(terminal)
    seen, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        if select.select([controller], [], [], 0.2)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    process.wait(timeout=10)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace")).replace("\r", "")


def run_here(*args, input=None, env=None):
    """`llmgen ARGS` through the CLI's entry point in this process, as run_llmgen runs the console script:
    stdin `input` (else empty, as /dev/null reads), stdout and stderr captured as bytes (not terminals), `env`
    set for the call only (the same result as run_llmgen's). What differs from a process: no interpreter start-up and no `import torch` (3-4 s
    here, most of a small model's run), and what a process caches stays cached. Tests of what only a process
    shows (signals, a closed pipe, a terminal, warnings printed by Python itself) use run_llmgen."""
    import io
    import warnings

    import torch

    from llmgen.cli.main import main
    from llmgen.kernels import build

    if isinstance(input, str):
        input = input.encode()
    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape") for _ in range(2)]
    stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
    saved_streams, saved_env, saved_showwarning, saved_threads = (sys.stdin, sys.stdout, sys.stderr), \
        dict(os.environ), warnings.showwarning, torch.get_num_threads()
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    build.forget()  # the kernel level follows LLMGEN_KERNELS, LLMGEN_HOME and CXX as a new process would
    sys.stdin, sys.stdout, sys.stderr = stdin, *streams
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for stream in streams:
            stream.flush()
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.environ.clear()
        os.environ.update(saved_env)
        warnings.showwarning = saved_showwarning
        torch.set_num_threads(saved_threads)  # `-t N` sets this process's threads
        build.forget()
    stdout, stderr = (stream.buffer.getvalue() for stream in streams)
    return _with_text(subprocess.CompletedProcess(args, code, stdout, stderr))


def assert_one_line_warning(result, *fragments):
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.strip().splitlines() if line.startswith(("warning: ", "error: "))]
    assert len(lines) == 1 and lines[0].startswith("warning: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def mount_tmpfs(directory: Path, options: str) -> None:
    """A tmpfs at directory (a small disk, or a read-only one: root writes through permission bits), or skip."""
    directory.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


def sha256_tree(*paths: Path) -> dict[str, str]:
    """Every file under these paths -> its sha256 (to show that nothing in them changed)."""
    import hashlib

    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="session")
def meta_checkpoint(tmp_path_factory, llama3_tokenizer_file):
    """A tiny LLaMA-3-shaped Meta-layout checkpoint with the real LLaMA-3 tokenizer (read-only for its users)."""
    from checkpoints import hf_llama, save_meta

    directory = tmp_path_factory.mktemp("meta")
    save_meta(hf_llama(vocab_size=128256, hidden_size=64, intermediate_size=192, num_hidden_layers=2), directory)
    shutil.copy(llama3_tokenizer_file, directory / "tokenizer.model")
    return directory
