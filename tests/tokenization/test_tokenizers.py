import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgen import assets
from llmgen.errors import LLMGenError
from llmgen.tokenization import tiktoken_files
from llmgen.tokenization.ranks import BinaryRanks
from llmgen.tokenization.tiktoken_files import get_tokenizer, load_llama3, tokenizer_for_text
from llmgen.tokenization.tokenizer import StreamDecoder, piece

SEED_SENTENCE = "the answer to the ultimate question of life, the universe, and everything is "


@pytest.fixture(scope="module")
def llama3():
    return get_tokenizer("llama3")


@pytest.fixture(scope="module", params=["cl100k_base", "gpt2"])
def tiktoken_builtin(request):
    return get_tokenizer(request.param)


def test_llama3_seed_sentence_with_bos(llama3):
    # Ids checked against Meta's tokenizer (shared/FACTS.md).
    assert llama3.encode(SEED_SENTENCE) == [
        128000, 1820, 4320, 311, 279, 17139, 3488, 315, 2324, 11, 279, 15861, 11, 323, 4395, 374, 220
    ]


def test_llama3_hello_world_and_round_trip(llama3):
    ids = llama3.encode("hello world!", bos=False)
    assert ids == [15339, 1917, 0]
    assert llama3.decode(ids) == "hello world!"
    assert llama3.encode("武", bos=False) == [103787]


def test_llama3_special_tokens(llama3):
    assert llama3.n_vocab == 128256
    assert llama3.bos_id == 128000
    assert llama3.stop_ids == (128001, 128008, 128009)
    assert llama3.encode("<|eot_id|>", bos=False, allow_special=True) == [128009]
    # Typed by a user, a special token's text is just text.
    assert 128009 not in llama3.encode("<|eot_id|>", bos=False)
    assert llama3.decode(llama3.encode("<|eot_id|>", bos=False)) == "<|eot_id|>"


def test_gpt2_known_ids():
    gpt2 = get_tokenizer("gpt2")
    assert gpt2.encode("hello world!") == [31373, 995, 0]
    assert gpt2.stop_ids == (50256,)
    assert gpt2.n_vocab == 50257
    assert gpt2.encode("<|endoftext|>", allow_special=True) == [50256]


def test_cl100k_known_ids():
    cl100k = get_tokenizer("cl100k_base")
    assert cl100k.encode("hello world!") == [15339, 1917, 0]
    assert cl100k.encode("<|endoftext|>", allow_special=True) == [100257]
    assert 100257 not in cl100k.encode("<|endoftext|>")


@settings(max_examples=300, deadline=None)
@given(text=st.text() | st.sampled_from(["武", "😀👍🏽", "naïve café", "  \n\t  ", "武武武 and 😀"]))
def test_builtin_encodings_round_trip(tiktoken_builtin, text):
    assert tiktoken_builtin.decode(tiktoken_builtin.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_stream_decoder_never_emits_replacement_for_valid_text(tiktoken_builtin, text):
    decoder = StreamDecoder(tiktoken_builtin)
    streamed = "".join(decoder.push(i) for i in tiktoken_builtin.encode(text)) + decoder.flush()
    assert streamed == text


@pytest.mark.parametrize("text", ["武", "武汉是一座城市", "😀👍🏽🇫🇷", "mixed 中文 and emoji 🎉!"])
def test_stream_decoder_holds_back_split_characters(text, llama3):
    tokens = llama3.encode(text, bos=False)
    decoder = StreamDecoder(llama3)
    pieces = [decoder.push(t) for t in tokens]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + decoder.flush() == text


def test_stream_decoder_splits_inside_a_character():
    gpt2 = get_tokenizer("gpt2")
    # "😀" is 4 bytes; gpt2 splits it over tokens: nothing may be emitted until it is complete.
    tokens = gpt2.encode("😀")
    assert len(tokens) > 1
    decoder = StreamDecoder(gpt2)
    outputs = [decoder.push(t) for t in tokens]
    assert outputs[:-1] == [""] * (len(tokens) - 1)
    assert outputs[-1] == "😀"


def test_stream_decoder_replaces_invalid_bytes():
    gpt2 = get_tokenizer("gpt2")
    byte_token = {gpt2.encoding.encode_single_token(bytes([b])): b for b in (0xFF, 0xE6, 0x41)}
    by_byte = {b: t for t, b in byte_token.items()}
    decoder = StreamDecoder(gpt2)
    # 0xFF can never start UTF-8; 0xE6 starts a 3-byte sequence that "A" breaks.
    out = decoder.push(by_byte[0xFF]) + decoder.push(by_byte[0xE6]) + decoder.push(by_byte[0x41])
    assert out + decoder.flush() == "\ufffd\ufffdA"
    decoder = StreamDecoder(gpt2)
    assert decoder.push(by_byte[0xE6]) == ""
    assert decoder.flush() == "\ufffd"  # a truncated sequence at the end is replaced, not dropped


def test_piece_shows_partial_bytes_readably():
    assert piece(" hello".encode()) == " hello"
    assert piece(b"\xe6\xad") == "\\xe6\\xad"


def test_decode_rejects_ids_outside_vocabulary(llama3):
    with pytest.raises(LLMGenError, match="not in the llama3 vocabulary"):
        llama3.decode([128256])
    with pytest.raises(LLMGenError, match="not in"):
        llama3.decode([-1])


def test_unknown_encoding():
    with pytest.raises(LLMGenError, match="unknown encoding 'nope'"):
        get_tokenizer("nope")


def test_tampered_llama3_file_is_rejected(tmp_path, monkeypatch, llama3_tokenizer_file):
    data = bytearray(llama3_tokenizer_file.read_bytes())
    data[100] ^= 0x01
    (tmp_path / assets.ASSETS["llama3"].filename).write_bytes(bytes(data))
    monkeypatch.setenv("LLMGEN_HOME", str(tmp_path))
    if assets._installed_copy(assets.ASSETS["llama3"]) is None:
        with pytest.raises(LLMGenError, match="does not match the pinned sha256"):
            load_llama3()


def test_tampered_ranks_are_not_seeded(tmp_path, monkeypatch):
    original = assets.locate("r50k_base")
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    data = bytearray(original.read_bytes())
    data[10] ^= 0x01
    (home / "r50k_base.tiktoken").write_bytes(bytes(data))
    monkeypatch.setenv("LLMGEN_HOME", str(home))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    if assets._installed_copy(assets.ASSETS["r50k_base"]) is None:
        with pytest.raises(LLMGenError, match="does not match the pinned sha256"):
            get_tokenizer("gpt2")
        assert not cache.exists() or not any(cache.iterdir())


def test_llama3_file_that_is_not_a_tokenizer(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("this is not base64 ranks\n")
    with pytest.raises(LLMGenError, match="not a tiktoken BPE file"):
        load_llama3(bad)


def test_offline_seeding_fills_tiktokens_cache(tmp_path, monkeypatch):
    # An empty tiktoken cache and no network: the hash-checked local copy is what tiktoken reads.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    gpt2 = get_tokenizer("gpt2")
    assert gpt2.encode("hello world!") == [31373, 995, 0]
    assert len(list(tmp_path.iterdir())) == 1


def test_missing_ranks_and_no_network_says_how_to_get_them(tmp_path, monkeypatch):
    if assets._installed_copy(assets.ASSETS["r50k_base"]) is not None:
        pytest.skip("openai-whisper is installed; its copy of the ranks is always found")
    monkeypatch.setenv("LLMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # every download fails at once
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(LLMGenError, match="python -m llmgen.assets fetch r50k_base"):
        get_tokenizer("gpt2")


@pytest.mark.parametrize("name", ["cl100k_base", "r50k_base"])
def test_binary_ranks_cache_gives_tiktokens_encoding(tmp_path, monkeypatch, name):
    """llmgen's fast load (a binary copy of the ranks) builds the same encoding tiktoken builds."""
    import tiktoken

    monkeypatch.setattr(tiktoken_files, "binary_ranks_path", lambda name: tmp_path / "ranks" / f"{name}.bin")
    texts = ["hello world!", "武汉 🎉 <|endoftext|> 'll 12345\n\n  x", "def f(a, b):\n    return a+b  # ok"]
    reference = tiktoken.get_encoding(name)
    for attempt in ("builds the cache", "reads the cache"):
        ours = tiktoken_files._tiktoken_encoding(name)
        assert (tmp_path / "ranks" / f"{name}.bin").is_file(), attempt
        assert ours.n_vocab == reference.n_vocab and ours.special_tokens_set == reference.special_tokens_set
        for text in texts:
            assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    # A damaged cache is rebuilt, not trusted.
    path = tmp_path / "ranks" / f"{name}.bin"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert BinaryRanks.read(path, assets.ASSETS[name].sha256) is None
    assert tiktoken_files._tiktoken_encoding(name).encode("hello world!") == reference.encode("hello world!")
    assert BinaryRanks.read(path, assets.ASSETS[name].sha256) is not None


@pytest.mark.parametrize("name", ["cl100k_base", "gpt2"])
def test_tokenizer_for_text_encodes_its_text_as_the_full_tokenizer(name):
    """Built over only the ranks inside the text (ranks.py), yet the same ids, specials included."""
    full = get_tokenizer(name)
    texts = ["hi", "hello world!", "武汉 🎉 <|endoftext|> 'll 12345\n\n  x", "def f(a, b):\n    return a+b",
             "a\ud800b", " " * 200, "x" * 300, "antidisestablishmentarianism" * 3]
    for text in texts:
        scoped = tokenizer_for_text(name, text)
        assert scoped.name == full.name
        for allow_special in (False, True):
            ids = scoped.encode(text, bos=False, allow_special=allow_special)
            assert ids == full.encode(text, bos=False, allow_special=allow_special), text
            assert [scoped.token_bytes(i) for i in ids] == [full.token_bytes(i) for i in ids]
    zebra = full.encode("zebra", bos=False)[0]
    assert not tokenizer_for_text(name, "hello world!").is_valid(zebra)  # it really is scoped
    assert tokenizer_for_text(name, "x" * 300).is_valid(zebra)  # too long to scope: the full one


def test_binary_ranks_lookup_finds_every_token_and_nothing_else():
    ranks = tiktoken_files._binary_ranks("r50k_base")
    every = ranks.to_dict()
    assert len(every) == 50256 and max(map(len, every)) == ranks.longest
    for token, rank in list(every.items())[::97]:
        assert ranks.rank(token) == rank
    for missing in (b"", b"\x00\xff\x00", b"x" * (ranks.longest + 1), b"zzzzzzqq"):
        assert ranks.rank(missing) is None

