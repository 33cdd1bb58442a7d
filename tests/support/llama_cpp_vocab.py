"""llama.cpp's tokenizer test data (real vocabularies: GGUF files without weights, and their test vectors)
and its converter from Hugging Face layout to GGUF.

llama.cpp ships, for each pre-tokenizer it supports, `models/ggml-vocab-NAME.gguf` with `.inp` (texts
separated by "\\n__ggml_vocab_test__\\n") and `.out` (the ids the model's own Hugging Face tokenizer gave,
one line per text, without BOS); its tests/test-tokenizer-0.cpp reads them. They come from the
llama-cpp-python sdist on PyPI (pinned by sha256), extracted once into llmgen's data directory.

    python tests/support/llama_cpp_vocab.py        # fetch (make install-test does)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmgen import assets

SDIST = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS_DIR = "vendor/llama.cpp/models/"
# The vocabularies whose pre-tokenizers llmgen supports, by llama.cpp's name for them.
VOCABS = ("llama-bpe", "gpt-2", "qwen2", "qwen35", "starcoder", "refact", "phi-3", "llama-spm")
# Gemma 4's vocabulary (llama.cpp's "gemma4" merges-based BPE): the only Gemma tokenizer offline. Rebuilt as
# the SentencePiece model Gemma 3 ships (gemma_sentencepiece_model) it stands in for Gemma 3's.
STAND_INS = ("gemma-4",)
SEPARATOR = "\n__ggml_vocab_test__\n"
# Real chat templates, as the models' tokenizer_config.json ship them (llama.cpp keeps copies in
# models/templates/ for its own template tests): Llama 3.1's, Qwen2.5's, Qwen3's, Phi-3.5's, and Mistral
# Nemo's (Mistral's [INST] format; v0.3's own is not offline).
TEMPLATES = ("meta-llama-Llama-3.1-8B-Instruct", "Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B",
             "microsoft-Phi-3.5-mini-instruct", "mistralai-Mistral-Nemo-Instruct-2407")


def directory() -> Path:
    return assets.data_dir() / "test-data" / f"{SDIST.replace('==', '-')}-vocab"


def members() -> list[str]:
    return [f"ggml-vocab-{name}.gguf{suffix}" for name in VOCABS + STAND_INS for suffix in ("", ".inp", ".out")] + [
        f"templates/{name}.jinja" for name in TEMPLATES]


def chat_template(name: str) -> str:
    """A real chat template (TEMPLATES) as its model ships it."""
    return (directory() / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


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


# llama.cpp's converter from Hugging Face layout to GGUF, with the gguf-py it imports (tests make GGUF
# files of each model family with it): these trees under vendor/llama.cpp/, extracted to converter_dir().
CONVERTER_TREES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def converter_dir() -> Path:
    return directory() / "llama.cpp"


def convert_hf_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py (with its own gguf-py) on a Hugging Face model directory.

    The converter (pinned by SDIST's hash) turns the same files into the same GGUF, and each run costs ~10 s
    (torch and transformers imported again), so its output is kept under a digest of the converter's
    version, the out-type and every file of model_dir: the same input is converted once per machine."""
    digest = hashlib.sha256(f"{SDIST}\0{outtype}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"\0{path.relative_to(model_dir).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    kept = directory() / "converted" / f"{digest.hexdigest()[:32]}.gguf"
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        scratch = kept.with_name(f"{kept.stem}.{os.getpid()}.tmp")  # renamed whole: no worker reads half a file
        root = converter_dir()
        env = {**os.environ, "PYTHONPATH": str(root / "gguf-py")}
        done = subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outfile",
                               str(scratch), "--outtype", outtype], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        os.replace(scratch, kept)
    shutil.copyfile(kept, outfile)
    return outfile


@contextmanager
def pinned_download(spec: str, sha256: str, kind: str) -> Iterator[Path]:
    """A package file from PyPI (`kind` "--no-binary": the sdist, "--only-binary": a wheel), through pip's
    own download (and cache), checked against its pinned sha256; deleted after the with block."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", kind, ":all:", spec, "-d", tmp]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (archive,) = Path(tmp).iterdir()
        if assets.sha256_file(archive) != sha256:
            raise SystemExit(f"{archive.name} does not match its pinned sha256")
        yield archive


def fetch() -> Path:
    target = directory()
    if all((target / m).is_file() for m in members()) and (converter_dir() / "convert_hf_to_gguf.py").is_file():
        return target
    with pinned_download(SDIST, SDIST_SHA256, "--no-binary") as archive:
        wanted = {MODELS_DIR + m: target / m for m in members()}
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                inner = info.name.split("/", 1)[-1]  # below the sdist's top folder
                tool = inner.removeprefix("vendor/llama.cpp/")
                if not info.isfile() or ".." in inner.split("/"):
                    continue
                if inner in wanted:
                    assets.write_atomically(wanted[inner], tf.extractfile(info).read())
                elif inner.startswith("vendor/llama.cpp/") and tool.startswith(CONVERTER_TREES):
                    assets.write_atomically(converter_dir() / tool, tf.extractfile(info).read())
    missing = [m for m in members() if not (target / m).is_file()]
    if missing:
        raise SystemExit(f"{SDIST} lacks {', '.join(missing)}")
    return target


if __name__ == "__main__":
    print("llama.cpp vocabularies:", fetch())


def sentencepiece_model(name: str, path: Path) -> Path:
    """A SentencePiece tokenizer.model holding a SentencePiece vocabulary GGUF's pieces, scores and types
    (what LLaMA-2/Phi-3 directories ship, and llama.cpp's converter reads for them)."""
    from sentencepiece import sentencepiece_model_pb2

    from llmgen.weights.gguf_file import GGUFFile

    vocab = GGUFFile(vocab_path(name))
    model = sentencepiece_model_pb2.ModelProto()
    model.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
    model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    kinds = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
    pieces, scores, types = (vocab.get(f"tokenizer.ggml.{key}") for key in ("tokens", "scores", "token_type"))
    # The model's own pieces end with its last normal or byte piece; tokens added after it (Phi-3's chat
    # markers and padding) come from the directory's tokenizer.json, as in a real checkpoint.
    own = max(i for i, kind in enumerate(types) if kind in (1, 6)) + 1
    for i, (piece, score, kind) in enumerate(zip(pieces[:own], scores, types)):
        entry = model.pieces.add()
        entry.piece, entry.score = piece, score
        entry.type = getattr(sentencepiece_model_pb2.ModelProto.SentencePiece, "UNKNOWN" if i == 0 else kinds[kind])
    path.write_bytes(model.SerializeToString())
    return path


def gemma_sentencepiece_model(path: Path) -> Path:
    """Gemma 4's vocabulary as a SentencePiece tokenizer.model of Gemma 3's kind (BPE, byte fallback, no
    leading space, spaces as U+2581). The vocab GGUF stores merges, not scores: a piece's score is minus the
    rank of the merge that makes it, so SentencePiece's highest-score-first merging follows the merge list
    (tests/weights/test_gguf_families.py checks it against the vocabulary's own test vectors)."""
    from sentencepiece import sentencepiece_model_pb2

    from llmgen.weights.gguf_file import GGUFFile

    vocab = GGUFFile(vocab_path("gemma-4"))
    pieces, types = vocab.get("tokenizer.ggml.tokens"), vocab.get("tokenizer.ggml.token_type")
    rank = {}
    for i, merge in enumerate(vocab.get("tokenizer.ggml.merges")):
        left, right = merge.split(" ", 1)
        rank.setdefault(left + right, i)
    model = sentencepiece_model_pb2.ModelProto()
    model.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    spec = model.trainer_spec
    spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = (vocab.get(f"tokenizer.ggml.{key}_token_id")
                                                          for key in ("padding", "eos", "bos", "unknown"))
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    kinds = {1: "NORMAL", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
    for i, (piece, kind) in enumerate(zip(pieces, types)):
        entry = model.pieces.add()
        entry.piece = piece
        entry.type = getattr(sentencepiece_model_pb2.ModelProto.SentencePiece,
                             "UNKNOWN" if i == spec.unk_id else kinds[kind])
        entry.score = -float(rank.get(piece, len(rank))) if kind == 1 and len(piece) > 1 else 0.0
    path.write_bytes(model.SerializeToString())
    return path
