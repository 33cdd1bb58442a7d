"""GGUF tokenizers against llama.cpp's own test vectors (tests/support/llama_cpp_vocab.py): real vocabularies of
LLaMA-3 (llama-bpe), GPT-2, Qwen2, Qwen3.5, StarCoder and Refact (numerals split off first, as SmolLM2),
and the SentencePiece vocabularies of LLaMA-2 (llama-spm) and Phi-3. Each .out line is what the model's own
Hugging Face tokenizer gave for the text, without BOS."""

import llama_cpp_vocab
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.gguf_vocab import gguf_tokenizer

SENTENCEPIECE = ("llama-spm", "phi-3")


@pytest.fixture(scope="module")
def vocab_dir():
    return llama_cpp_vocab.fetch()  # already there after `make install-test`


_tokenizers = {}


def tokenizer(name):
    if name not in _tokenizers:
        _tokenizers[name] = gguf_tokenizer(GGUFFile(llama_cpp_vocab.vocab_path(name)))
    return _tokenizers[name]


@pytest.mark.parametrize("name", llama_cpp_vocab.VOCABS)
def test_every_vector_gives_the_reference_ids(vocab_dir, name):
    tok = tokenizer(name)
    cases = llama_cpp_vocab.vectors(name)
    assert len(cases) >= 40
    wrong = [(text, tok.encode(text, bos=False), ids) for text, ids in cases if tok.encode(text, bos=False) != ids]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, first: {wrong[0]}"


def test_the_pre_tokenizers_are_the_ones_named(vocab_dir):
    names = {name: tokenizer(name).name for name in llama_cpp_vocab.VOCABS}
    assert names == {**{n: f"gguf:{n}" for n in llama_cpp_vocab.VOCABS}, **{n: "gguf:llama" for n in SENTENCEPIECE}}


@pytest.mark.parametrize("name", SENTENCEPIECE)
def test_sentencepiece_writes_unknown_characters_as_bytes(vocab_dir, name):
    tok = tokenizer(name)
    ids = tok.encode("\U0001F999", bos=False)  # 🦙: not a piece in these vocabularies
    pieces = [tok.encoding._pieces[i] for i in ids]
    assert pieces == ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert tok.decode(ids) == "\U0001F999"


@pytest.mark.parametrize("name", SENTENCEPIECE)
def test_sentencepiece_special_tokens_only_when_allowed(vocab_dir, name):
    tok = tokenizer(name)
    assert 1 not in tok.encode("<s>hi", bos=False)  # typed text is text
    allowed = tok.encode("<s>hi", bos=False, allow_special=True)
    assert allowed[0] == 1 and allowed[1:] == tok.encode("hi", bos=False)  # the text after it: a space again
    assert tok.encode("hi")[0] == tok.bos_id == 1  # add_bos_token


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=40), name=st.sampled_from(llama_cpp_vocab.VOCABS))
def test_any_text_round_trips(vocab_dir, text, name):
    tok = tokenizer(name)
    # Bytes a byte-level vocabulary has no token for are dropped, as its Hugging Face tokenizer drops them
    # (StarCoder's and Refact's lack a few, as SmolLM2's does); SentencePiece has every byte.
    kept = bytes(b for b in text.encode("utf-8", "surrogatepass") if b not in tok.missing_bytes)
    expected = kept.decode("utf-8", "replace")
    assert tok.decode(tok.encode(text, bos=False)) == expected


# Hugging Face's tokenizers built from the GGUF's own vocabulary and merges with the regex of the model's
# tokenizer.json: a second reference, on any text. LLaMA-3's tokenizer.json sets ignore_merges (a word
# that is a token is that token), Qwen2's does not.
REGEX_REFERENCES = {
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+", False),
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+", True),
}
_references = {}


def hf_reference(name):
    if name not in _references:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        gguf_file = GGUFFile(llama_cpp_vocab.vocab_path(name))
        tokens = gguf_file.get("tokenizer.ggml.tokens")
        merges = [tuple(m.split(" ", 1)) for m in gguf_file.get("tokenizer.ggml.merges")]
        pattern, ignore_merges = REGEX_REFERENCES[name]
        reference = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                         ignore_merges=ignore_merges))
        reference.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        _references[name] = reference
    return _references[name]


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=60), name=st.sampled_from(sorted(REGEX_REFERENCES)))
def test_any_text_equals_the_tokenizers_reference(vocab_dir, text, name):
    assert tokenizer(name).encode(text, bos=False) == hf_reference(name).encode(text, add_special_tokens=False).ids


_sentencepiece = {}


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=60), name=st.sampled_from(SENTENCEPIECE))
def test_sentencepiece_vocabularies_equal_the_sentencepiece_library(vocab_dir, tmp_path_factory, text, name):
    """Google's sentencepiece, loaded with a model holding the same pieces, scores and types, as a
    second reference for spm.py on any text."""
    import sentencepiece

    if name not in _sentencepiece:
        path = llama_cpp_vocab.sentencepiece_model(name, tmp_path_factory.mktemp(name) / "tokenizer.model")
        _sentencepiece[name] = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert tokenizer(name).encode(text, bos=False) == _sentencepiece[name].encode(text)
