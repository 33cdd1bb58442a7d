"""`llmgen quantize` (weights/gguf_write.py): a tiny LLaMA-3-shaped Meta checkpoint with the real LLaMA-3
tokenizer, written as GGUF in each type, then read by two other implementations: transformers' GGUF loader
(gguf-py's dequantizers, llama.cpp's naming) and llama.cpp itself (llama-cpp-python, where installed)."""


import pytest
import torch
from checkpoints import hf_llama
from conftest import assert_one_line_error, run_here
from parity import greedy_ours

from llmgen.loading import load_model
from llmgen.weights import gguf_write
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.layout import model_tokenizer
from llmgen.weights.sources import open_source

pytestmark = pytest.mark.slow  # each type's file takes a few seconds (the 128k merges), transformers loads

TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1")
PROMPTS = ("The capital of France is", "武汉是一座历史悠久的城市", "1, 2, 3, 5, 8, 13,")


@pytest.fixture(scope="module")
def written(meta_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    source = open_source(meta_checkpoint)
    return {kind: gguf_write.write_gguf(source, out / f"model-{kind}.gguf", kind) for kind in TYPES}


@pytest.fixture(scope="module")
def reference_tokenizer(written):
    """transformers' tokenizer built from the written tokenizer metadata (the same in every type's file)."""
    from transformers import AutoTokenizer

    fields = [{k: v for k, v in GGUFFile(path).fields.items() if k.startswith("tokenizer.")} for path in written.values()]
    assert all(f == fields[0] for f in fields)
    path = written["f16"]
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


# transformers' GGUF reader takes ~17 s over LLaMA-3's vocabulary per file: one block type here (llama.cpp
# reads all five below, where installed; the float types are torch's own casts).
@pytest.mark.parametrize("kind", ["q4_1"])
def test_transformers_reads_the_file_as_llmgen_does(written, reference_tokenizer, kind):
    """transformers' own GGUF reader (llama.cpp's names, metadata and q/k order; gguf-py's dequantizers):
    the same tokens for each prompt, logits within 1e-4 of llmgen's on the file, the same 16 greedy ids."""
    from parity import greedy_reference
    from transformers import AutoModelForCausalLM

    path = written[kind]
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     torch_dtype=torch.float32).eval()
    ours, tokenizer = load_model(path, quantize="none").model, model_tokenizer(path)
    assert GGUFFile(path).typed("general.file_type", int) == gguf_write.OUT_TYPES[kind][1]
    for text in PROMPTS:
        ids = tokenizer.encode(text)
        assert ids == reference_tokenizer.encode(text)
        ours.setup_cache(1, 64)
        with torch.inference_mode():
            torch.testing.assert_close(ours(torch.tensor([ids]), 0)[0], reference(torch.tensor([ids])).logits[0],
                                       atol=1e-4, rtol=0)
        assert greedy_ours(ours, ids, 16) == greedy_reference(reference, ids, 16)


@pytest.mark.parametrize("kind", TYPES)
def test_llama_cpp_runs_the_file_with_llmgens_greedy_ids(written, kind):
    """llama.cpp tokenizes as llmgen does and decodes the same greedy ids as llmgen's default path (the
    file's blocks kept on llmgen's kernels). Float and 8-bit files: all 16 ids. 4-bit: both round
    activations their own way, so the ids must agree until the first step where the file's own
    (dequantized) logits put the top two within 0.05 of each other."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make bench-peers)")
    path = written[kind]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False)
    kept, dequantized, tokenizer = load_model(path).model, load_model(path, quantize="none").model, model_tokenizer(path)
    for text in PROMPTS:
        ids = tokenizer.encode(text)
        assert llm.tokenize(text.encode(), add_bos=True) == ids
        llm.reset()
        theirs = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            theirs.append(token)
            if len(theirs) == 16:
                break
        ours = greedy_ours(kept, ids, 16)
        clear = 16
        if kind.startswith("q4"):
            dequantized.setup_cache(1, 64)
            with torch.inference_mode():
                logits = dequantized(torch.tensor([ids + theirs]), 0)[0, len(ids) - 1:-1]
            top2 = logits.topk(2, dim=-1).values
            close = ((top2[:, 0] - top2[:, 1]) < 0.05).nonzero()
            clear = int(close[0]) if len(close) else 16
        assert ours[:clear] == theirs[:clear], (text, clear)


def test_requantizing_a_gguf_keeps_its_tokenizer(written, tmp_path):
    source_path = written["q8_0"]
    out = gguf_write.write_gguf(open_source(source_path), tmp_path / "again.gguf", "q4_1")
    source, again = GGUFFile(source_path), GGUFFile(out)
    tokenizer_keys = [k for k in source.fields if k.startswith("tokenizer.")]
    assert tokenizer_keys and all(again.get(k) == source.get(k) for k in tokenizer_keys)
    assert [t.tensor_type.name for t in again.tensors if t.name == "blk.0.attn_q.weight"] == ["Q4_1"]
    tokenizer = model_tokenizer(out)
    assert greedy_ours(load_model(out).model, tokenizer.encode(PROMPTS[0]), 4)  # it runs


def test_an_interrupted_quantize_leaves_nothing_at_the_output(meta_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C (or any failure) midway: no file at OUT, no temporary file beside it, and a file that was
    already at OUT is left as it was."""
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous file")
    encoded, calls = gguf_write.encoded, []

    def interrupted_after_three(tensor, kind):
        calls.append(kind)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return encoded(tensor, kind)

    monkeypatch.setattr(gguf_write, "encoded", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        gguf_write.write_gguf(open_source(meta_checkpoint), out, "q4_0")
    assert out.read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_the_command_writes_a_file_generate_runs(meta_checkpoint, tmp_path):
    out = tmp_path / "model-q8_0.gguf"
    done = run_here("quantize", meta_checkpoint, out, "--type", "q8_0")
    assert done.returncode == 0, done.err
    assert done.out == "" and f"wrote {out}" in done.err
    done = run_here("generate", "The capital of France is", "--model", out, "-n", "4", "--temperature", "0")
    assert done.returncode == 0 and done.out.strip(), done.err


def test_bad_requests_are_one_clear_line(meta_checkpoint, tmp_path):
    assert_one_line_error(run_here("quantize", meta_checkpoint, tmp_path / "m.gguf", "--type", "q3_k"),
                          "unknown --type 'q3_k'")
    assert_one_line_error(run_here("quantize", meta_checkpoint, tmp_path / "model.bin"), "must end in .gguf")
    assert not list(tmp_path.iterdir())


def test_a_hugging_face_smollm2_becomes_a_gguf_that_says_paris(tmp_path, smollm2_hf_dir):
    """The real SmolLM2-135M-Instruct in Hugging Face layout (bf16 safetensors, its tokenizer.json with
    digits split off: llama.cpp's "smollm") -> q8_0: the same prompt ids as the tokenizer.json (and
    llama.cpp's, where installed), q/k rows back in Meta's order, and it still knows the capital of France."""
    directory = smollm2_hf_dir
    out = gguf_write.write_gguf(open_source(directory), tmp_path / "smollm2-q8_0.gguf", "q8_0")
    assert GGUFFile(out).get("tokenizer.ggml.pre") == "smollm"
    ours, reference = model_tokenizer(out), model_tokenizer(directory)
    texts = (*PROMPTS, "  pi is 3.14159\n\n<|im_end|> done")
    for text in texts:
        assert ours.encode(text) == reference.encode(text)
    prompt = ours.encode("The capital of France is")
    assert ours.decode(greedy_ours(load_model(out).model, prompt, 3)).strip().startswith("Paris")
    try:
        import llama_cpp
    except ImportError:
        return
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=2, verbose=False)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=ours.bos_id is not None) == ours.encode(text)


def test_a_hugging_face_llama3_keeps_its_tokenizer_and_logits(tmp_path):
    """A LLaMA-3-shaped Hugging Face directory with LLaMA-3's tokenizer.json (llama.cpp's "llama-bpe")
    -> f32: the directory's token ids, and llmgen on the file gives transformers' logits on the directory
    (q and k rows put back in Meta's order as written)."""
    import llama_cpp_vocab
    from checkpoints import save_hf
    from parity import hf_tokenizer

    llama_cpp_vocab.fetch()
    tokenizer = hf_tokenizer("llama-bpe")
    reference = hf_llama(vocab_size=128256, hidden_size=64, intermediate_size=192)
    directory = save_hf(reference, tmp_path / "hf")
    tokenizer.save_pretrained(directory)
    out = gguf_write.write_gguf(open_source(directory), tmp_path / "llama3-f32.gguf", "f32")
    assert GGUFFile(out).get("tokenizer.ggml.pre") == "llama-bpe"
    ours = load_model(out, quantize="none").model
    for text in PROMPTS:
        ids = model_tokenizer(out).encode(text)
        assert ids == tokenizer.encode(text)
        ours.setup_cache(1, 64)
        with torch.inference_mode():
            torch.testing.assert_close(ours(torch.tensor([ids]), 0)[0], reference(torch.tensor([ids])).logits[0],
                                       atol=1e-4, rtol=0)


def test_other_architectures_are_refused_with_the_way_forward(tmp_path):
    from checkpoints import hf_family, save_hf

    directory = save_hf(hf_family("qwen2"), tmp_path / "hf")
    assert_one_line_error(run_here("quantize", directory, tmp_path / "m.gguf"), "LLaMA-architecture")
