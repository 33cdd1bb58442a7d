"""`llmgen download` with the real huggingface_hub client against a local server speaking the hub's protocol."""

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LLMGEN, assert_one_line_error, default_sigint, run_llmgen
from hub_server import HubServer, Repo

pytestmark = pytest.mark.slow

TOKEN = "hf_test_token_that_must_never_be_printed"
META_FILES = {
    "original/params.json": json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                        "vocab_size": 128256, "multiple_of": 32, "norm_eps": 1e-5,
                                        "rope_theta": 500000.0}).encode(),
    "original/tokenizer.model": os.urandom(3000),
    "original/consolidated.00.pth": os.urandom(300_000),
    "config.json": b"{}",
    "model-00001-of-00004.safetensors": os.urandom(5000),  # not part of the Meta layout: must not be fetched
    "README.md": b"# Meta Llama 3\n",
}
HF_FILES = {
    "config.json": json.dumps({"model_type": "gpt2"}).encode(),
    "model.safetensors": os.urandom(200_000),
    "vocab.json": b'{"a": 0}',
    "merges.txt": b"#version: 0.2\n",
    "tokenizer.json": b"{}",
    "flax_model.msgpack": os.urandom(4000),
}


@pytest.fixture
def hub(tmp_path):
    server = HubServer()
    server.repos["meta-llama/Meta-Llama-3-8B"] = Repo(dict(META_FILES), gated=True)
    server.repos["openai-community/gpt2"] = Repo(dict(HF_FILES))
    server.valid_tokens |= {TOKEN, "hf_valid_but_not_accepted"}
    server.accepted_tokens.add(TOKEN)
    with server:
        yield server


def env_for(hub, tmp_path, **extra):
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "", "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5", **extra}


def files_under(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and ".cache" not in p.parts}


def test_meta_layout_full_download_with_token(hub, tmp_path):
    result = run_llmgen("download", "llama-3-8B", env=env_for(hub, tmp_path, HF_TOKEN=TOKEN))
    assert result.returncode == 0, result.err
    snapshot = result.out.strip()
    assert files_under(Path(snapshot)) == {
        k: v for k, v in META_FILES.items() if k.startswith("original/")}
    assert TOKEN not in result.out + result.err


def test_hf_layout_into_a_directory(hub, tmp_path):
    target = tmp_path / "gpt2"
    result = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert result.returncode == 0, result.err
    assert result.out.strip() == str(target)
    assert files_under(target) == {k: HF_FILES[k] for k in ("config.json", "model.safetensors", "vocab.json",
                                                              "merges.txt")}


def test_any_repo_with_include(hub, tmp_path):
    result = run_llmgen("download", "openai-community/gpt2", "--include", "*.json", "--dir", tmp_path / "d",
                        env=env_for(hub, tmp_path))
    assert result.returncode == 0, result.err
    assert sorted(files_under(tmp_path / "d")) == ["config.json", "tokenizer.json", "vocab.json"]


def test_gated_without_token_and_with_unaccepted_token(hub, tmp_path):
    no_token = run_llmgen("download", "llama-3-8B", env=env_for(hub, tmp_path))
    assert_one_line_error(no_token, "meta-llama/Meta-Llama-3-8B is gated", "accept its licence", "HF_TOKEN")
    other = run_llmgen("download", "llama-3-8B", "--token", "hf_valid_but_not_accepted", env=env_for(hub, tmp_path))
    assert_one_line_error(other, "is gated")
    assert "hf_valid_but_not_accepted" not in other.out + other.err
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").rglob("consolidated*"))


def test_bad_token(hub, tmp_path):
    result = run_llmgen("download", "gpt2", "--token", "hf_wrong", env=env_for(hub, tmp_path))
    assert_one_line_error(result, "rejected the token")
    assert "hf_wrong" not in result.err


def test_unknown_repo_and_alias(hub, tmp_path):
    assert_one_line_error(run_llmgen("download", "nobody/nothing", env=env_for(hub, tmp_path)),
                          "nobody/nothing was not found")
    assert_one_line_error(run_llmgen("download", "lama-3-8B", env=env_for(hub, tmp_path)),
                          "did you mean 'llama-3-8B'")


def test_wrong_bytes_are_detected_and_removed(hub, tmp_path):
    hub.corrupt.add("model.safetensors")
    target = tmp_path / "gpt2"
    result = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert_one_line_error(result, "model.safetensors does not match the hub's hash", "removed")
    assert not (target / "model.safetensors").exists()
    hub.corrupt.clear()
    again = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert again.returncode == 0 and (target / "model.safetensors").read_bytes() == HF_FILES["model.safetensors"]


# huggingface_hub writes downloads in 10 MiB chunks, so only files larger than that resume mid-file.
BIG = os.urandom(24 * 1024 * 1024)


def test_connection_dropped_midway_is_resumed_with_a_range_request(hub, tmp_path):
    hub.repos["openai-community/gpt2"].files["model.safetensors"] = BIG
    hub.drop_after["model.safetensors"] = 15 * 1024 * 1024
    target = tmp_path / "gpt2"
    result = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    if result.returncode != 0:  # the client gave up: a second run must resume, not restart
        assert_one_line_error(result)
        result = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert result.returncode == 0, result.err
    assert (target / "model.safetensors").read_bytes() == BIG
    assert any(r.startswith("bytes=") and int(r[6:].split("-")[0]) >= 10 * 1024 * 1024
               for r in hub.ranges_requested("model.safetensors"))


def test_a_connection_that_keeps_dropping_is_one_line_of_progress_and_one_error(hub, tmp_path):
    hub.repos["openai-community/gpt2"].files["model.safetensors"] = BIG
    hub.drop_every["model.safetensors"] = 2 * 1024 * 1024
    target = tmp_path / "gpt2"
    result = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert result.returncode == 1 and result.out == "" and "Traceback" not in result.err
    assert result.err.splitlines() == [
        "the connection dropped during model.safetensors; resuming",
        "error: the connection to the hub dropped again and again while downloading openai-community/gpt2 "
        "(RemoteProtocolError); run the download again"]
    del hub.drop_every["model.safetensors"]
    done = run_llmgen("download", "gpt2", "--dir", target, env=env_for(hub, tmp_path))
    assert done.returncode == 0, done.err
    assert (target / "model.safetensors").read_bytes() == BIG


def test_interrupted_leaves_nothing_behind_and_the_next_run_completes(hub, tmp_path):
    hub.repos["meta-llama/Meta-Llama-3-8B"].files["original/consolidated.00.pth"] = BIG
    hub.bytes_per_second["original/consolidated.00.pth"] = 6 * 1024 * 1024  # 4 s for the whole file
    env = {**os.environ, **env_for(hub, tmp_path, HF_TOKEN=TOKEN)}
    process = subprocess.Popen([LLMGEN, "download", "llama-3-8B"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)
    repo = tmp_path / "hf" / "hub" / "models--meta-llama--Meta-Llama-3-8B"
    deadline = time.time() + 30
    while time.time() < deadline:
        partial = list(repo.rglob("*.incomplete")) if repo.exists() else []
        if partial and partial[0].stat().st_size >= 1024 * 1024:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert b"Traceback" not in err
    assert not list((repo / "snapshots").rglob("consolidated.00.pth"))  # nothing half-written at a final path
    assert not list(repo.rglob("*.incomplete"))
    del hub.bytes_per_second["original/consolidated.00.pth"]
    result = run_llmgen("download", "llama-3-8B", env=env_for(hub, tmp_path, HF_TOKEN=TOKEN))
    assert result.returncode == 0, result.err
    pth = Path(result.out.strip()) / "original" / "consolidated.00.pth"
    assert hashlib.sha256(pth.read_bytes()).hexdigest() == hashlib.sha256(BIG).hexdigest()


# --- a hostile hub ------------------------------------------------------------------------------------

def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../escaped.txt", "../escaped-big.bin", "/tmp/llmgen-abs-escape.txt",
                                  "a/../../escaped.txt", "a\\..\\..\\escaped.txt"])
@pytest.mark.parametrize("into_dir", [True, False])
def test_unsafe_file_names_in_the_listing_write_nothing(hub, tmp_path, name, into_dir):
    data = os.urandom(5000) if "big" in name else b"small"
    hub.repos["openai-community/gpt2"].files[name] = data
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    before = everything_under(tmp_path)
    args = ["download", "openai-community/gpt2", "--include", "*"] + (["--dir", work / "a" / "d"] if into_dir else [])
    result = run_llmgen(*args, env=env_for(hub, tmp_path, HF_HOME=str(work / "a" / "hf")))
    assert_one_line_error(result, "unsafe file name")
    assert everything_under(tmp_path) - before <= {"work/a/hf", "work/a/d"}  # no file anywhere
    assert not Path("/tmp/llmgen-abs-escape.txt").exists()


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json"])  # an LFS file and a small one
def test_a_hostile_etag_never_becomes_a_path(hub, tmp_path, filename):
    hub.etag[filename] = '"../../../../escaped"'
    result = run_llmgen("download", "gpt2", env=env_for(hub, tmp_path))
    assert_one_line_error(result, "invalid", "etag")
    assert not list(tmp_path.rglob("escaped*"))


def test_a_hostile_commit_id_never_becomes_a_path(hub, tmp_path):
    hub.listed_sha = "../../escaped"
    assert_one_line_error(run_llmgen("download", "gpt2", env=env_for(hub, tmp_path)), "invalid commit id")
    hub.listed_sha = None
    hub.commit_header = "../../../escaped"
    assert_one_line_error(run_llmgen("download", "gpt2", env=env_for(hub, tmp_path)), "invalid commit id")
    assert not list(tmp_path.rglob("escaped*"))
    assert_one_line_error(run_llmgen("download", "gpt2", "--revision", "../../escaped", env=env_for(hub, tmp_path)),
                          "invalid revision")


def test_the_token_never_reaches_another_host(hub, tmp_path):
    hub.redirect_get.add("original/params.json")  # a small file's GET answers 302 to the other host
    result = run_llmgen("download", "llama-3-8B", env=env_for(hub, tmp_path, HF_TOKEN=TOKEN))
    assert result.returncode == 0, result.err
    other_host = [(path, auth) for host, path, auth in hub.auth_log if host == "127.0.0.2"]
    assert {path for path, _ in other_host} >= {"/lfs-cdn/meta-llama--Meta-Llama-3-8B/original--params.json",
                                               "/lfs-cdn/meta-llama--Meta-Llama-3-8B/original--consolidated.00.pth"}
    assert all(auth is None for _, auth in other_host), other_host
    assert any(auth == f"Bearer {TOKEN}" for host, _, auth in hub.auth_log if host == "127.0.0.1")
    assert TOKEN not in result.out + result.err


def test_forbidden_get(hub, tmp_path):
    hub.status_on_get["model.safetensors"] = 403
    result = run_llmgen("download", "gpt2", "--dir", tmp_path / "d", env=env_for(hub, tmp_path))
    assert_one_line_error(result, "403")
    assert "reach" not in result.err
    assert not (tmp_path / "d" / "model.safetensors").exists()


def test_a_body_longer_than_announced_is_not_saved(hub, tmp_path):
    hub.extra_bytes["model.safetensors"] = 1000
    for _ in range(2):  # the same clear answer each time, not a promise to resume
        result = run_llmgen("download", "gpt2", "--dir", tmp_path / "d", env=env_for(hub, tmp_path))
        assert_one_line_error(result, "different size than it announced", "nothing was saved")
        assert "resume" not in result.err
        assert not (tmp_path / "d" / "model.safetensors").exists()
        assert not list((tmp_path / "d").rglob("*.incomplete"))


def test_dir_naming_an_existing_file(hub, tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("mine")
    assert_one_line_error(run_llmgen("download", "gpt2", "--dir", existing, env=env_for(hub, tmp_path)),
                          "is an existing file")
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("processes,into_dir", [(2, False), (4, False), (2, True)])
def test_concurrent_downloads_end_with_one_verified_copy(hub, tmp_path, processes, into_dir):
    weights = os.urandom(6 * 1024 * 1024)
    hub.repos["openai-community/gpt2"].files["model.safetensors"] = weights
    hub.bytes_per_second["model.safetensors"] = 4 * 1024 * 1024  # ~1.5 s each: the runs overlap
    env = {**os.environ, **env_for(hub, tmp_path)}
    args = [LLMGEN, "download", "gpt2"] + (["--dir", str(tmp_path / "d")] if into_dir else [])
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL) for _ in range(processes)]
    outcomes = [(run.wait(timeout=120), run.stderr.read().decode()) for run in runs]
    for run in runs:
        run.stdout.close(), run.stderr.close()
    assert all(code == 0 for code, _ in outcomes), outcomes
    root = tmp_path / "d" if into_dir else tmp_path / "hf" / "hub" / "models--openai-community--gpt2"
    copies = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size == len(weights)]
    assert len(copies) == 1, copies
    assert hashlib.sha256(copies[0].read_bytes()).digest() == hashlib.sha256(weights).digest()
    assert not list(root.rglob("*.incomplete"))


def test_offline_mode(hub, tmp_path):
    offline = env_for(hub, tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(run_llmgen("download", "gpt2", env=offline), "offline (HF_HUB_OFFLINE=1)")
    assert run_llmgen("download", "gpt2", env=env_for(hub, tmp_path)).returncode == 0
    cached = run_llmgen("download", "gpt2", env=offline)
    assert cached.returncode == 0, cached.err
    assert (Path(cached.out.strip()) / "model.safetensors").is_file()


def test_offline_a_partial_snapshot_is_an_error_not_a_path(hub, tmp_path):
    assert run_llmgen("download", "gpt2", env=env_for(hub, tmp_path)).returncode == 0
    snapshot = next((tmp_path / "hf").rglob("snapshots/*"))
    (snapshot / "model.safetensors").unlink()  # as a download cut short leaves it
    result = run_llmgen("download", "gpt2", env=env_for(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert_one_line_error(result, "offline (HF_HUB_OFFLINE=1)", "incomplete (no model.safetensors)")
    assert result.returncode == 1 and result.out == ""


def test_unreachable_hub(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    assert_one_line_error(run_llmgen("download", "gpt2", env=env), "cannot reach the hub")


def test_models_lists_aliases_and_downloads(hub, tmp_path):
    env = env_for(hub, tmp_path)
    assert run_llmgen("download", "gpt2", env=env).returncode == 0
    listing = run_llmgen("models", env=env)
    assert listing.returncode == 0
    rows = [line.split("\t") for line in listing.out.splitlines()]  # on a pipe: tab-separated, nothing cut
    assert rows[0] == ["alias", "family", "size", "repo", "layout", "downloaded"]
    assert all(len(row) == 6 for row in rows)
    assert ["gpt2", "gpt2", "124M", "openai-community/gpt2", "hf"] == rows[1][:5] and rows[1][5].endswith("MB")
    assert ["llama-3.2-1B-instruct", "llama", "1B", "meta-llama/Llama-3.2-1B-Instruct (gated)", "meta", ""] in rows
    assert ["qwen2.5-0.5b-instruct-gguf", "qwen2", "0.5B", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "gguf", ""] in rows


def test_a_gguf_alias_fetches_one_quantization_and_runs(tmp_path):
    """A GGUF repo holds several quantizations: the alias fetches its one (Q4_K_M) and --model runs it."""
    from gguf_files import MIXES, write_kquant_gguf

    q4_k_m = write_kquant_gguf(tmp_path / "q4_k_m.gguf", MIXES["q4_k_m"]).read_bytes()
    with HubServer() as hub:
        hub.repos["Qwen/Qwen2.5-0.5B-Instruct-GGUF"] = Repo({
            "qwen2.5-0.5b-instruct-q4_k_m.gguf": q4_k_m, "qwen2.5-0.5b-instruct-q8_0.gguf": os.urandom(5000),
            "README.md": b"# GGUF\n"})
        env = env_for(hub, tmp_path)
        done = run_llmgen("download", "qwen2.5-0.5b-instruct-gguf", env=env)
        assert done.returncode == 0, done.err
        fetched = [p.name for p in (tmp_path / "hf").rglob("*.gguf")]
        assert fetched == ["qwen2.5-0.5b-instruct-q4_k_m.gguf"]
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_llmgen("generate", "hi", "--model", "qwen2.5-0.5b-instruct-gguf", "--raw", "-n", "3", "-t", "0",
                        "--json", env=offline)
    assert result.returncode == 0, result.err
    assert json.loads(result.out)["generated_tokens"] == 3


def test_disk_space_is_checked_first(tmp_path, monkeypatch):
    from llmgen.errors import LLMGenError
    from llmgen.weights.download import check_disk_space

    with pytest.raises(LLMGenError, match="not enough disk space"):
        check_disk_space(tmp_path / "not" / "yet", 10**18)
    check_disk_space(tmp_path, 1000)
    monkeypatch.setattr("shutil.disk_usage", lambda path: __import__("collections").namedtuple(
        "usage", "total used free")(10**9, 10**9, 2_000_000))
    with pytest.raises(LLMGenError, match=r"needs 3\.0 MB, 2\.0 MB are free"):
        check_disk_space(tmp_path, 3_000_000)


def test_generate_with_a_downloaded_alias(tmp_path):
    """download gpt2 from the (local) hub, then generate with --model gpt2: the whole user path."""
    from checkpoints import hf_gpt2, save_hf

    directory = save_hf(hf_gpt2(vocab_size=50257, n_embd=32, n_head=2, n_positions=64), tmp_path / "src")
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    with HubServer() as hub:
        hub.repos["openai-community/gpt2"] = Repo(files)
        env = env_for(hub, tmp_path)
        assert run_llmgen("download", "gpt2", env=env).returncode == 0
        offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
        result = run_llmgen("generate", "hello", "--model", "gpt2", "-n", "5", "-t", "0", "--json", env=offline)
    assert result.returncode == 0, result.err
    payload = json.loads(result.out)
    assert payload["model"] == "gpt2" and payload["generated_tokens"] == 5


def test_smollm2_instruct_downloaded_in_hf_layout_says_paris(tmp_path, smollm2_hf_dir):
    """The registry's smollm2-135m-instruct: an HF-layout SmolLM2 (the real weights, written by transformers
    with SmolLM2's tokenizer.json) served by the local hub, downloaded by alias, then run with its own
    tokenizer.json."""
    directory = smollm2_hf_dir
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    with HubServer() as hub:
        hub.repos["HuggingFaceTB/SmolLM2-135M-Instruct"] = Repo(files)
        env = env_for(hub, tmp_path)
        done = run_llmgen("download", "smollm2-135m-instruct", env=env, timeout=300)
        assert done.returncode == 0, done.err
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_llmgen("generate", "The capital of France is", "--model", "smollm2-135m-instruct", "--raw",
                        "--temperature", "0", "-n", "4", "--json", env=offline, timeout=300)
    assert result.returncode == 0, result.err
    payload = json.loads(result.out)
    assert "Paris" in payload["text"], payload
