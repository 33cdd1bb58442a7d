"""inspect-weights on checkpoints the tests write in each format, an 8B-shaped one, and broken files."""

import json
import os
import pickle
import random
import struct

import pytest
import torch
from checkpoints import hf_llama, save_hf, save_meta
from conftest import assert_one_line_error, assert_one_line_warning, run_here
from safetensors.torch import save_file

from llmgen.errors import LLMGenError
from llmgen.weights.inspect import inspect_path

STATE = {"a.weight": torch.randn(4, 6), "b.bias": torch.zeros(6, dtype=torch.bfloat16),
         "c.ids": torch.arange(3, dtype=torch.int64)}
EXPECTED = {"a.weight": ([4, 6], "float32", 24), "b.bias": ([6], "bfloat16", 6), "c.ids": ([3], "int64", 3)}


def seen(inspection):
    return {t.name: (t.shape, t.dtype, t.params) for t in inspection.tensors}


@pytest.fixture
def files(tmp_path):
    save_file(STATE, tmp_path / "model.safetensors")
    torch.save(STATE, tmp_path / "weights.pth")
    torch.save(STATE, tmp_path / "pytorch_model.bin")
    return tmp_path


@pytest.mark.parametrize("name, fmt", [("model.safetensors", "safetensors"), ("weights.pth", "pytorch"),
                                       ("pytorch_model.bin", "pytorch")])
def test_each_file_format(files, name, fmt):
    inspection = inspect_path(files / name)
    assert inspection.format == fmt and seen(inspection) == EXPECTED
    assert inspection.total_params == 33
    assert inspection.total_bytes == 24 * 4 + 6 * 2 + 3 * 8


def test_gguf_file(tmp_path):
    import gguf
    from gguf_files import write_tiny_gguf

    write_tiny_gguf(tmp_path / "m.gguf", gguf.GGMLQuantizationType.Q4_1)
    inspection = inspect_path(tmp_path / "m.gguf")
    tensors = {t.name: t for t in inspection.tensors}
    assert inspection.format == "gguf" and inspection.config["llama.embedding_length"] == 64
    assert tensors["token_embd.weight"].shape == [300, 64] and tensors["token_embd.weight"].dtype == "q4_1"
    assert tensors["token_embd.weight"].nbytes == 300 * 64 // 32 * 20  # Q4_1: 2 fp16 + 16 bytes per 32
    sizes = inspection.bytes_by_dtype()
    matrices = 300 * 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64)  # weights in Q4_1 blocks
    assert sizes == {"q4_1": matrices // 32 * 20, "f32": (64 + 2 * 2 * 64) * 4}


@pytest.mark.slow  # runs llmgen in subprocesses
def test_the_embedded_model_by_name():
    """inspect-weights takes the names generate takes: 'default' is the embedded SmolLM2 GGUF."""
    result = run_here("inspect-weights", "default", "--no-tensors")
    assert result.returncode == 0, result.err
    assert result.out.splitlines()[-1].startswith("272 tensors, 134,515,008 parameters, 96.6 MB (q4_1 106,168,320 in 66.4 MB")


def test_directories_with_config(tmp_path):
    reference = hf_llama()
    expected_params = sum(p.numel() for p in reference.parameters())
    hf = save_hf(reference, tmp_path / "hf", max_shard_size="200KB")
    inspection = inspect_path(hf)
    assert inspection.config["model_type"] == "llama"
    assert inspection.total_params == expected_params
    assert len({t.file for t in inspection.tensors}) > 1  # every shard was read
    meta = inspect_path(save_meta(reference, tmp_path / "meta"))
    assert meta.config["n_heads"] == 4 and meta.total_params == expected_params
    # Model-parallel shards are listed per file; totals count what is stored (norms once per shard).
    two = inspect_path(save_meta(reference, tmp_path / "meta2", shards=2))
    assert {t.file for t in two.tensors} == {"consolidated.00.pth", "consolidated.01.pth"}


LLAMA3_8B = dict(dim=4096, layers=32, ffn=14336, kv=1024, vocab=128256)


def write_sparse_8b_safetensors(path):
    """Llama-3-8B's real tensor table in bf16 with a file of the full size that holds no data (sparse)."""
    c = LLAMA3_8B
    shapes = {"model.embed_tokens.weight": [c["vocab"], c["dim"]], "lm_head.weight": [c["vocab"], c["dim"]],
              "model.norm.weight": [c["dim"]]}
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [c["dim"], c["dim"]], p + "self_attn.k_proj.weight": [c["kv"], c["dim"]],
                   p + "self_attn.v_proj.weight": [c["kv"], c["dim"]], p + "self_attn.o_proj.weight": [c["dim"], c["dim"]],
                   p + "mlp.gate_proj.weight": [c["ffn"], c["dim"]], p + "mlp.up_proj.weight": [c["ffn"], c["dim"]],
                   p + "mlp.down_proj.weight": [c["dim"], c["ffn"]], p + "input_layernorm.weight": [c["dim"]],
                   p + "post_attention_layernorm.weight": [c["dim"]]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return offset


def test_8b_shaped_checkpoint_from_header_only(tmp_path):
    path = tmp_path / "model.safetensors"
    data_bytes = write_sparse_8b_safetensors(path)
    assert os.path.getsize(path) > 16e9
    inspection = inspect_path(path)
    assert inspection.total_params == 8_030_261_248  # Llama-3-8B
    assert inspection.total_bytes == data_bytes
    result = run_here("inspect-weights", path, "--json", "--no-tensors")
    assert result.returncode == 0 and json.loads(result.out)["total_params"] == 8_030_261_248


@pytest.mark.slow  # runs llmgen in subprocesses
def test_cli_filter_json_and_tables(files):
    payload = json.loads(run_here("inspect-weights", files / "model.safetensors", "--json", "--filter", "a.*").out)
    assert payload["tensors"] == [{"name": "a.weight", "shape": [4, 6], "dtype": "float32", "params": 24, "nbytes": 96}]
    assert payload["bytes_by_dtype"] == {"float32": 96}
    assert payload["total_params"] == 24 and payload["format"] == "safetensors"
    table = run_here("inspect-weights", files / "weights.pth")
    assert table.returncode == 0 and "a.weight" in table.out and "33 parameters" in table.out
    totals = run_here("inspect-weights", files / "weights.pth", "--no-tensors")
    assert "a.weight" not in totals.out and "3 tensors" in totals.out


@pytest.mark.slow  # runs llmgen in subprocesses
def test_pickle_that_calls_a_function_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Exploit()}, tmp_path / "evil.pth", pickle_module=pickle)
    assert_one_line_error(run_here("inspect-weights", tmp_path / "evil.pth"), "weights-only")
    assert not marker.exists()


@pytest.mark.slow  # runs llmgen in subprocesses
def test_absurd_safetensors_header_sizes(tmp_path):
    bigger = tmp_path / "header-too-big.safetensors"
    bigger.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert_one_line_error(run_here("inspect-weights", bigger), "not a readable safetensors file")
    offsets = tmp_path / "offsets-past-end.safetensors"
    blob = json.dumps({"w": {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 4 * 10**6]}}).encode()
    offsets.write_bytes(struct.pack("<Q", len(blob)) + blob)
    assert_one_line_error(run_here("inspect-weights", offsets), "not a readable safetensors file")


@pytest.mark.parametrize("name", ["model.safetensors", "weights.pth", "m.gguf"])
def test_truncated_and_flipped_files_never_crash(files, name, capsys):
    """The CLI's own entry point in this process (a subprocess a file cost 20 s a format; the loaders'
    fuzzing is tests/weights/test_fuzz_loading.py's): a summary, or exactly one error line, never a traceback."""
    import gguf
    from gguf_files import write_tiny_gguf

    from llmgen.cli.main import main

    def inspect_weights(path):
        capsys.readouterr()
        try:
            main(["inspect-weights", str(path)])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        result = type("Result", (), {"returncode": code, "out": out, "err": err})
        return result

    write_tiny_gguf(files / "m.gguf", gguf.GGMLQuantizationType.Q8_0)
    original = (files / name).read_bytes()
    rng = random.Random(name)
    variants = [original[:n] for n in (0, 3, 8, 40, len(original) // 3, len(original) - 1)]
    for _ in range(6):
        data = bytearray(original)
        for _ in range(3):
            data[rng.randrange(min(len(data), 256))] ^= 0xFF
        variants.append(bytes(data))
    for data in variants:
        broken = files / f"broken{''.join(files.joinpath(name).suffixes)}"
        broken.write_bytes(data)
        result = inspect_weights(broken)  # an uncaught exception fails the test here
        assert "Traceback" not in result.err, result.err
        if result.returncode != 0:
            assert_one_line_error(result)
    with pytest.raises(LLMGenError):
        (files / "empty.safetensors").write_bytes(b"")
        inspect_path(files / "empty.safetensors")


def test_a_tensor_no_model_has_is_named(tmp_path):
    """A LLaMA checkpoint with one extra tensor: inspect-weights lists it and says, in one warning line,
    that it is not part of any model llmgen loads (loading it would be refused); --json names it too."""
    state = {name: torch.zeros(2, 2) for name in ("tok_embeddings.weight", "layers.0.attention.wq.weight",
                                                  "model.layers.0.self_attn.q_proj.weight", "transformer.h.0.attn.bias")}
    state["layers.0.attention.smuggled.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    result = run_here("inspect-weights", tmp_path / "extra.pth", "--no-tensors")
    assert result.returncode == 0
    assert_one_line_warning(result, "'layers.0.attention.smuggled.weight'", "llmgen will refuse to load it")
    listed = json.loads(run_here("inspect-weights", tmp_path / "extra.pth", "--json").out)
    assert listed["unknown_tensors"] == ["layers.0.attention.smuggled.weight"]
    del state["layers.0.attention.smuggled.weight"]
    torch.save(state, tmp_path / "known.pth")
    assert run_here("inspect-weights", tmp_path / "known.pth").err == ""
