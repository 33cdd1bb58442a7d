"""Mistral's real SentencePiece tokenizer (v3: Mistral-7B-Instruct-v0.3's 32768 pieces with [INST] markers),
as Mistral ships it in its `mistral-common` package on PyPI (pinned by sha256), extracted once into
llmgen's data directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

from llama_cpp_vocab import pinned_download

from llmgen import assets

WHEEL = "mistral-common==1.13.1"
WHEEL_SHA256 = "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af"
MEMBER = "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"


def tokenizer_model() -> Path:
    """The path of Mistral's v3 tokenizer.model, fetched and checked the first time."""
    target = assets.data_dir() / "test-data" / WHEEL.replace("==", "-") / "tokenizer.model.v3"
    if target.is_file():
        return target
    with pinned_download(WHEEL, WHEEL_SHA256, "--only-binary") as archive, zipfile.ZipFile(archive) as wheel:
        assets.write_atomically(target, wheel.read(MEMBER))
    return target
