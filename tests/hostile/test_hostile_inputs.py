"""Hostile checkpoints, odd options and failing speech targets, each through the real `llmgen` command:
one `error:` line on stderr, a non-zero exit, no traceback, and nothing written where it should not be."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import LLMGEN, assert_one_line_error, mount_tmpfs, run_llmgen

pytestmark = pytest.mark.slow

# --- GGUF files crafted byte by byte (the writer in the gguf package refuses what an attacker would write)

UINT32, FLOAT32, STRING, ARRAY = 4, 6, 8, 9


def gguf_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def gguf_value(kind: int, value) -> bytes:
    if kind == UINT32:
        return struct.pack("<I", value)
    if kind == FLOAT32:
        return struct.pack("<f", value)
    if kind == STRING:
        return gguf_string(value)
    raise ValueError(kind)


def craft_gguf(path: Path, metadata: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int], int]],
               data_bytes: int = 0) -> Path:
    """metadata: (key, type, encoded value); tensors: (name, GGUF dims, ggml type), laid out back to back.
    The data section is left sparse (a hole of `data_bytes`), so huge tensors cost no disk."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, encoded in metadata:
        header += gguf_string(key) + struct.pack("<I", kind) + encoded
    offset = 0
    for name, dims, kind in tensors:
        header += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        header += struct.pack("<IQ", kind, offset)
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        n = 1
        for d in dims:
            n *= d
        offset += -(-(n // block * block_bytes) // 32) * 32
    header += b"\0" * (-len(header) % 32)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + max(offset, data_bytes))
    return path


def llama_metadata(**overrides) -> list[tuple[str, int, bytes]]:
    values = {"general.architecture": (STRING, "llama"), "llama.block_count": (UINT32, 1),
              "llama.embedding_length": (UINT32, 64), "llama.feed_forward_length": (UINT32, 128),
              "llama.attention.head_count": (UINT32, 4), "llama.context_length": (UINT32, 128),
              "llama.vocab_size": (UINT32, 300), **overrides}
    return [(key, kind, gguf_value(kind, value)) for key, (kind, value) in values.items()]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    import gguf
    from gguf_files import write_tiny_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q4_0)
    return path


def patched(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    data = source.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    target.write_bytes(data.replace(old, new))
    return target


def generate_with(model, *extra, **kwargs):
    return run_llmgen("generate", "hi", "-m", model, "-n", "2", *extra, timeout=60, **kwargs)


@pytest.mark.parametrize("key,kind,value,message", [
    ("llama.block_count", UINT32, 10**9, "n_layers must be an integer from 1 to 1024"),
    ("llama.block_count", UINT32, 3, "the config says 3 layers, but the checkpoint holds tensors for 2"),
    ("llama.attention.head_count", UINT32, 0, "n_heads must be an integer"),
    ("llama.embedding_length", STRING, "64", "llama.embedding_length has the wrong type"),
    ("llama.attention.layer_norm_rms_epsilon", STRING, "x", "layer_norm_rms_epsilon has the wrong type"),
    ("llama.rope.freq_base", FLOAT32, -1.0, "rope_theta must be a positive number"),
])
def test_wrong_gguf_metadata(tmp_path, key, kind, value, message):
    import gguf
    from gguf_files import write_tiny_gguf

    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q4_0, mutate_meta={key: value})
    assert_one_line_error(generate_with(path), message)


def test_nested_arrays_are_refused(tmp_path):
    depth = 5000
    encoded = b"".join(struct.pack("<IQ", ARRAY, 1) for _ in range(depth - 1)) + struct.pack("<IQ", UINT32, 1)
    encoded += struct.pack("<I", 7)
    path = craft_gguf(tmp_path / "nested.gguf", [("deep", ARRAY, encoded)], [])
    result = generate_with(path)
    assert_one_line_error(result, "nest deeper than")
    assert len(result.err) < 400


def test_duplicate_metadata_keys_and_tensor_names_are_refused(tiny_gguf, tmp_path):
    import gguf
    from gguf_files import write_tiny_gguf

    path = tmp_path / "keys.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q4_0, mutate_meta={"llama.vocab_sizf": 7})
    twice = patched(path, tmp_path / "twice.gguf", b"llama.vocab_sizf", b"llama.vocab_size")
    assert_one_line_error(generate_with(twice), "duplicate metadata key 'llama.vocab_size'")
    same = patched(tiny_gguf, tmp_path / "same.gguf", b"blk.1.attn_q.weight", b"blk.0.attn_q.weight")
    assert_one_line_error(generate_with(same), "duplicate tensor name 'blk.0.attn_q.weight'")


def test_quantized_rows_that_are_not_whole_blocks(tiny_gguf, tmp_path):
    # blk.0.attn_k.weight is (32, 64) in torch order, GGUF dims [64, 32]; [16, 128] has as many weights.
    name = gguf_string("blk.0.attn_k.weight")
    old = name + struct.pack("<IQQ", 2, 64, 32)
    new = name + struct.pack("<IQQ", 2, 16, 128)
    path = patched(tiny_gguf, tmp_path / "rows.gguf", old, new)
    assert_one_line_error(generate_with(path), "rows of 16 weights are not whole blocks of 32")


def test_a_model_larger_than_memory_is_refused_before_reading(tmp_path):
    dims = [8192, 1 << 22]  # token_embd: a 4M x 8192 float32 matrix, 128 GiB (a sparse file here)
    path = craft_gguf(tmp_path / "huge.gguf", llama_metadata(**{"llama.embedding_length": (UINT32, 8192),
                                                                "llama.vocab_size": (UINT32, 1 << 22)}),
                      [("token_embd.weight", dims, 0)])
    result = generate_with(path)
    assert_one_line_error(result, "huge.gguf needs about", "GB of memory once loaded")


# --- Meta / Hugging Face layouts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    from checkpoints import hf_llama, save_meta

    return save_meta(hf_llama(vocab_size=128256, hidden_size=32, intermediate_size=96, num_attention_heads=2,
                              num_key_value_heads=1), tmp_path_factory.mktemp("meta") / "tiny")


def copy_with_params(meta_dir: Path, target: Path, **changes) -> Path:
    target.mkdir()
    for f in meta_dir.iterdir():
        (target / f.name).symlink_to(f)
    params = {**json.loads((meta_dir / "params.json").read_text()), **changes}
    (target / "params.json").unlink()
    (target / "params.json").write_text(json.dumps(params))
    return target


@pytest.mark.parametrize("changes,message", [
    ({"n_layers": 10**9}, "n_layers must be an integer from 1 to 1024"),
    ({"n_layers": 1e9}, "'n_layers' must be a positive integer"),
    ({"n_layers": 3}, "the config says 3 layers"),
    ({"multiple_of": 0}, "'multiple_of' must be a positive integer"),
    ({"norm_eps": "x"}, "norm_eps must be a positive number"),
    ({"dim": "32"}, "'dim' must be a positive integer"),
    ({"ffn_dim_multiplier": float("inf")}, "'ffn_dim_multiplier' must be a positive number"),
])
def test_wrong_params_json(meta_dir, tmp_path, changes, message):
    assert_one_line_error(generate_with(copy_with_params(meta_dir, tmp_path / "m", **changes)), message)


def test_a_shard_index_with_non_string_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": ["x"], "b": 1}}))
    assert_one_line_error(generate_with(tmp_path), "weight_map values must be file names")


def test_json_with_a_duplicate_key(meta_dir, tmp_path):
    target = copy_with_params(meta_dir, tmp_path / "m")
    (target / "params.json").write_text('{"dim": 32, "dim": 64}')
    assert_one_line_error(generate_with(target), "the key 'dim' appears twice")


def test_nan_weights_stop_with_a_reason(meta_dir, tmp_path):
    target = tmp_path / "nan"
    target.mkdir()
    (target / "params.json").write_text((meta_dir / "params.json").read_text())
    state = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    state["norm.weight"][3] = float("nan")
    torch.save(state, target / "consolidated.00.pth")
    for extra in ([], ["-t", "0"], ["--json"]):
        result = generate_with(target, *extra)
        assert_one_line_error(result, "NaN or infinite logits at generated token 1")


# --- options --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", "99999999999999999999999999"])
def test_seed_out_of_range(seed):
    assert_one_line_error(run_llmgen("generate", "hi", "--seed", seed, "-n", "1"), "--seed must be an integer")


def test_undecodable_prompt_argument():
    done = subprocess.run([LLMGEN, "generate", b"caf\xe9 \xff", "--json", "-n", "1"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode != 0 and done.stdout == b""
    assert done.stderr.decode() == "error: the text argument is not valid UTF-8 (byte 3)\n"
    done = subprocess.run([LLMGEN, "generate", "hi", "--system", b"\xff", "-n", "1"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.stderr.decode() == "error: --system is not valid UTF-8 (byte 0)\n"


# --- speech targets -------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    directory = tmp_path / "small"
    mount_tmpfs(directory, "size=100k")
    yield directory
    subprocess.run(["umount", str(directory)])


def test_speak_to_a_directory_or_a_read_only_place_fails_before_generating(tmp_path):
    result = run_llmgen("generate", "hi", "--speak-to", tmp_path, timeout=60)
    assert_one_line_error(result, f"cannot write speech to {tmp_path}: it is a directory")
    assert result.out == ""
    read_only = tmp_path / "ro"
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount it is
        mount_tmpfs(read_only, "ro,size=64k")
    else:
        read_only.mkdir()
        read_only.chmod(0o555)
    try:
        result = run_llmgen("generate", "hi", "--speak-to", read_only / "out.wav", timeout=60)
        assert_one_line_error(result, "cannot write speech to", "out.wav")
        assert result.out == ""
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(read_only)])


def test_speak_to_a_full_disk_reports_the_engines_error_at_once(small_disk):
    import time

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    started = time.monotonic()
    result = run_llmgen("generate", "Tell me a long story about the sea", "-n", "40", "--seed", "0",
                        "--speak-to", small_disk / "out.wav", timeout=120)
    assert_one_line_error(result, "could not write speech to", "No space left on device")
    assert result.out.strip()  # the text itself still came out
    assert time.monotonic() - started < 15
    assert list(small_disk.iterdir()) == []
