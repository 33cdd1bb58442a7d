"""llama.cpp's tokenizer test data: real vocabularies (GGUF files without weights) and their test vectors.

llama.cpp ships, for each pre-tokenizer it supports, `models/ggml-vocab-NAME.gguf` with `.inp` (texts
separated by "\\n__ggml_vocab_test__\\n") and `.out` (the ids the model's own Hugging Face tokenizer gave,
one line per text, without BOS); its tests/test-tokenizer-0.cpp reads them. They come from the
llama-cpp-python sdist on PyPI (pinned by sha256), extracted once into llmgen's data directory.

    python tests/llama_cpp_vocab.py        # fetch (make install-test does)
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from llmgen import assets

SDIST = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS_DIR = "vendor/llama.cpp/models/"
# The vocabularies whose pre-tokenizers llmgen supports, by llama.cpp's name for them.
VOCABS = ("llama-bpe", "gpt-2", "qwen2", "qwen35", "starcoder", "refact", "phi-3", "llama-spm")
SEPARATOR = "\n__ggml_vocab_test__\n"


def directory() -> Path:
    return assets.data_dir() / "test-data" / f"{SDIST.replace('==', '-')}-vocab"


def members() -> list[str]:
    return [f"ggml-vocab-{name}.gguf{suffix}" for name in VOCABS for suffix in ("", ".inp", ".out")]


def vocab_path(name: str) -> Path:
    return directory() / f"ggml-vocab-{name}.gguf"


def vectors(name: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, read as test-tokenizer-0.cpp reads them."""
    path = vocab_path(name)
    raw = Path(f"{path}.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    if raw.endswith(SEPARATOR):
        texts.pop()
    lines = Path(f"{path}.out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), f"{path}: {len(texts)} texts but {len(lines)} id lines"
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


def fetch() -> Path:
    target = directory()
    if all((target / m).is_file() for m in members()):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", SDIST,
               "-d", tmp]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (archive,) = Path(tmp).iterdir()
        if assets.sha256_file(archive) != SDIST_SHA256:
            raise SystemExit(f"{archive.name} does not match its pinned sha256")
        wanted = {MODELS_DIR + m: m for m in members()}
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                inner = info.name.split("/", 1)[-1]  # below the sdist's top folder
                if info.isfile() and inner in wanted:
                    data = tf.extractfile(info).read()
                    assets.write_atomically(target / wanted[inner], data)
    missing = [m for m in members() if not (target / m).is_file()]
    if missing:
        raise SystemExit(f"{SDIST} lacks {', '.join(missing)}")
    return target


if __name__ == "__main__":
    print("llama.cpp vocabularies:", fetch())
