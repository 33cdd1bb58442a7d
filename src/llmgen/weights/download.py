"""Downloading models with huggingface_hub's own client, checked file by file.

huggingface_hub does the downloading: its cache layout (blobs/ + snapshots/ + refs/) or `local_dir`,
its per-file locks (concurrent downloads of one repo end with one copy), process-unique temporary files
renamed into place only when complete, its own filename checks and its redirect handling.

What we add around it, treating every answer of the server as hostile:
- the files to fetch, chosen by alias globs from the repo listing; every listed name, the commit sha and
  the sizes are checked before anything is written (no absolute paths, no `..`, hex commit ids);
- two hooks on the client's HTTP session: ETag and commit headers that would become path parts must be
  plain hex ids, and the token (the Authorization header) goes to the endpoint's host and no other;
- a disk-space check up front, and each file's sha256 (weights) or git blob id (small files) against the
  listing; a mismatch removes the file;
- one clear sentence per failure.

A download interrupted by Ctrl-C leaves nothing behind and starts again on the next run; a connection
dropped mid-file is resumed with a Range request by the client within the same run.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from llmgen.assets import sha256_file
from llmgen.errors import LLMGenError
from llmgen.registry import ModelEntry

DISK_MARGIN = 1.05  # ask for 5% more free space than the files need
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# What huggingface_hub turns into file names: git blob ids (40 hex) and sha256 (64 hex) on the real hub.
SAFE_ETAG = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
SAFE_REVISION = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}(/[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}){0,3}")


class UnsafeHubResponse(LLMGenError):
    """The server sent something that must not become a path or a request."""


@dataclass
class Download:
    repo_id: str
    commit: str
    path: Path  # the snapshot directory (hub cache) or --dir
    files: list[Path]


def download(entry: ModelEntry, *, local_dir: Path | None = None, revision: str | None = None,
             token: str | None = None, tqdm_class=None, on_retry=None) -> Download:
    """on_retry(file name): called once per file whose connection dropped and is being resumed (the client's
    own retry messages are kept off stderr)."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    revision = revision or entry.revision
    check_revision(revision)
    if local_dir is not None and local_dir.exists() and not local_dir.is_dir():
        raise LLMGenError(f"--dir {local_dir} is an existing file, not a directory")
    guard_hub_session(constants.ENDPOINT)
    with hub_errors(entry.repo_id, revision), _retries_reported(on_retry):
        if constants.HF_HUB_OFFLINE:
            path = Path(snapshot_download(entry.repo_id, revision=revision, allow_patterns=list(entry.files),
                                          local_dir=local_dir, local_files_only=True))
            check_complete(entry, path)
            return Download(entry.repo_id, revision, path, sorted(p for p in path.rglob("*") if p.is_file()))
        info = HfApi().model_info(entry.repo_id, revision=revision, files_metadata=True, token=token)
        commit = info.sha or ""
        if not COMMIT_SHA.fullmatch(commit):
            raise UnsafeHubResponse(f"the hub sent an invalid commit id {commit[:60]!r} for {entry.repo_id}")
        wanted = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, g) for g in entry.files)]
        if not wanted:
            raise LLMGenError(f"no file in {entry.repo_id}@{revision} matches {', '.join(entry.files)}")
        for sibling in wanted:
            check_listed_file(sibling)
        root = Path(local_dir) if local_dir is not None else (
            Path(constants.HF_HUB_CACHE) / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / commit)
        check_disk_space(local_dir or Path(constants.HF_HUB_CACHE), sum(_size(s) for s in wanted))
        files = []
        for sibling in wanted:
            path = Path(hf_hub_download(entry.repo_id, sibling.rfilename, revision=revision, local_dir=local_dir,
                                        token=token, tqdm_class=tqdm_class))
            if os.path.abspath(path) != os.path.abspath(root / sibling.rfilename):  # the repo moved on mid-download
                raise LLMGenError(f"{entry.repo_id} changed on the hub during the download; run it again")
            verify(path, sibling, root)
            files.append(path)
    return Download(entry.repo_id, commit, root, files)


@contextmanager
def _retries_reported(on_retry: Callable[[str], None] | None) -> Iterator[None]:
    """huggingface_hub logs two lines each time it resumes a dropped connection (up to a dozen for one
    file): they become one on_retry call per file."""
    import logging

    told: set[str] = set()

    def quiet(record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error while downloading from"):
            return True
        name = str(record.args[0] if isinstance(record.args, tuple) and record.args else "").rsplit("/", 1)[-1]
        if on_retry is not None and name not in told:
            told.add(name)
            on_retry(name)
        return False

    logger = logging.getLogger("huggingface_hub.file_download")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def check_complete(entry: ModelEntry, root: Path) -> None:
    """A snapshot found offline holds what the model needs to load (a download cut short leaves only some
    of it): its layout's weights, config and tokenizer; for a repo id, every file its globs name."""
    def present(pattern: str) -> bool:
        return any(p.is_file() for p in root.glob(pattern))

    if entry.layout == "meta":
        needed = list(entry.files)
    elif entry.layout == "gguf":
        needed = [entry.files[0]]
    elif entry.layout == "hf":
        needed = ["config.json", "model.safetensors.index.json" if present("model.safetensors.index.json")
                  else "model.safetensors"]
        needed += [] if present("tokenizer.json") else ["vocab.json", "merges.txt"]
    else:
        needed = [p for p in entry.files if p != "*"]
    missing = [p for p in needed if not present(p)]
    if not missing and "model.safetensors.index.json" in needed:
        from llmgen.weights.readers import shards_from_index

        shards_from_index(root / "model.safetensors.index.json")  # every shard it names is there
    if missing:
        raise LLMGenError(f"offline (HF_HUB_OFFLINE=1) and the local copy of {entry.repo_id} is incomplete "
                          f"(no {missing[0]}); unset HF_HUB_OFFLINE to finish the download")


def check_revision(revision: str) -> None:
    """A branch, tag or commit name: it becomes refs/<revision> in the cache, so no `..` and no root."""
    if not SAFE_REVISION.fullmatch(revision) or ".." in revision:
        raise LLMGenError(f"invalid revision {revision!r}: use a branch, tag or commit name")


def check_listed_file(sibling) -> None:
    """A file of the repo listing, before it becomes a path: relative, inside the repo, sized."""
    name = sibling.rfilename
    unsafe = (not isinstance(name, str) or not name or "\\" in name or "\0" in name
              or any(part in ("", ".", "..") for part in name.split("/"))
              or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive)
    if unsafe:
        raise UnsafeHubResponse(f"the hub listed an unsafe file name {str(name)[:80]!r}; nothing was downloaded")
    size = sibling.size if sibling.lfs is None else sibling.lfs.size
    if size is not None and (not isinstance(size, int) or size < 0):
        raise UnsafeHubResponse(f"the hub listed an invalid size {size!r} for {name}")


def _size(sibling) -> int:
    return (sibling.lfs.size if sibling.lfs is not None else sibling.size) or 0


def guard_hub_session(endpoint: str) -> None:
    """Add two checks to huggingface_hub's shared HTTP session (its client_factory's client).

    Requests: the Authorization header goes only to the endpoint's host (redirects to a CDN or anywhere
    else travel without it). Responses from the endpoint: the commit and ETag headers, which the client
    turns into cache paths (blobs/<etag>, snapshots/<commit>), must be plain ids.
    """
    from huggingface_hub import get_session

    session = get_session()
    if getattr(session, "_llmgen_guarded", None) == endpoint:
        return
    hub = _origin(endpoint)

    def token_only_to_the_hub(request) -> None:
        if _origin(str(request.url)) != hub:
            request.headers.pop("authorization", None)

    def ids_are_plain(response) -> None:
        if _origin(str(response.request.url)) != hub:
            return
        commit = response.headers.get("x-repo-commit")
        if commit is not None and not COMMIT_SHA.fullmatch(commit):
            raise UnsafeHubResponse(f"the hub sent an invalid commit id {commit[:60]!r}; nothing was saved")
        for header in ("x-linked-etag", "etag"):
            etag = response.headers.get(header)
            if etag is not None and not SAFE_ETAG.fullmatch(etag.removeprefix("W/").strip('"')):
                raise UnsafeHubResponse(f"the hub sent an invalid {header} {etag[:60]!r}; nothing was saved")

    session.event_hooks["request"].append(token_only_to_the_hub)
    session.event_hooks["response"].append(ids_are_plain)
    session._llmgen_guarded = endpoint  # type: ignore[attr-defined]  # the mark that it is guarded


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port


def verify(path: Path, sibling, root: Path) -> None:
    """Compare a downloaded file with the hub's hash; remove it (and its cache blob) on a mismatch."""
    try:
        if sibling.lfs is not None:
            expected, actual = sibling.lfs.sha256, sha256_file(path)
        elif sibling.blob_id:
            expected, actual = sibling.blob_id, _git_blob_sha1(path)
        else:
            return
    except FileNotFoundError:  # a concurrent download found it bad and removed it
        raise LLMGenError(f"{sibling.rfilename} was removed by another download that found it damaged; "
                          "run the download again") from None
    if expected != actual:
        target = path.resolve()
        path.unlink(missing_ok=True)
        if target != path and root.parent.parent in target.parents:  # the cache blob the snapshot linked to
            target.unlink(missing_ok=True)
        raise LLMGenError(f"{sibling.rfilename} does not match the hub's hash (expected {str(expected)[:12]}..., "
                          f"got {actual[:12]}...); the file was removed, run the download again")


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_disk_space(directory: Path, needed: int) -> None:
    existing = Path(directory)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed * DISK_MARGIN > free:
        raise LLMGenError(f"not enough disk space in {directory}: the download needs {disk_usage_text(needed)}, "
                          f"{disk_usage_text(free)} are free")


class hub_errors:
    """Turn huggingface_hub's exceptions into one clear sentence each (never showing the token)."""

    def __init__(self, repo_id: str, revision: str):
        self.repo_id, self.revision = repo_id, revision

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, (LLMGenError, KeyboardInterrupt)):
            return False
        from huggingface_hub import constants, errors

        repo = self.repo_id
        status = getattr(getattr(error, "response", None), "status_code", None)
        # Checked first: the "not in the cache" error is a kind of EntryNotFoundError.
        if constants.HF_HUB_OFFLINE and isinstance(
                error, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, FileNotFoundError)):
            message = f"offline (HF_HUB_OFFLINE=1) and {repo} is not in the local cache; unset it to download"
        elif isinstance(error, errors.GatedRepoError):
            message = (f"{repo} is gated: accept its licence at https://huggingface.co/{repo}, then set HF_TOKEN "
                       "(or pass --token) to a token of the account that accepted it")
        elif isinstance(error, errors.RepositoryNotFoundError):
            message = (f"repository {repo} was not found on the hub (if it is private, set HF_TOKEN "
                       "to a token that can read it)")
        elif isinstance(error, errors.RevisionNotFoundError):
            message = f"revision {self.revision!r} was not found in {repo}"
        elif isinstance(error, errors.EntryNotFoundError):
            message = f"a file listed for {repo} is missing on the hub: {error}".splitlines()[0]
        elif isinstance(error, errors.HfHubHTTPError) and status == 401:
            message = "the hub rejected the token (401 Unauthorized): check HF_TOKEN or --token"
        elif isinstance(error, errors.HfHubHTTPError) and status == 403:
            message = f"the hub refused access to {repo} (403 Forbidden): check that your token may read it"
        elif isinstance(error, errors.HfHubHTTPError):
            message = f"the hub answered with an error for {repo}: {str(error).splitlines()[0]}"
        elif isinstance(error, errors.LocalEntryNotFoundError) and isinstance(
                error.__cause__, errors.HfHubHTTPError):
            cause = error.__cause__
            code = getattr(cause.response, "status_code", "?")
            message = f"the hub answered {code} for a file of {repo}: {str(cause).splitlines()[0]}"
        elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
            message = "the disk is full; free some space and run the download again"
        elif isinstance(error, OSError) and "Consistency check failed" in str(error):
            message = (f"the hub sent a file of {repo} with a different size than it announced "
                       f"({str(error).split('(')[0].removeprefix('Consistency check failed: ').strip()}); "
                       "nothing was saved")
        elif isinstance(error, ValueError) and "Invalid" in str(error):  # the client's own path checks
            message = f"the hub sent an unsafe name for {repo}: {str(error).splitlines()[0][:160]}"
        elif _is_dropped_connection(error):
            message = (f"the connection to the hub dropped again and again while downloading {repo} "
                       f"({type(error).__name__}); run the download again")
        elif _is_connection_error(error):
            message = (f"cannot reach the hub at {constants.ENDPOINT} ({type(error).__name__}); check the network, "
                       "or set HF_HUB_OFFLINE=1 to use files already downloaded")
        else:
            return False
        raise LLMGenError(message) from None


def _is_dropped_connection(error: BaseException) -> bool:
    import httpx2

    return isinstance(error, httpx2.RemoteProtocolError)


def _is_connection_error(error: BaseException) -> bool:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import errors

    if isinstance(error, errors.LocalEntryNotFoundError):  # the client could not reach the hub for a file
        return True
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError))


def cached_models() -> dict[str, int]:
    """repo id -> bytes on disk, for models in the hub cache."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache directory yet, or one we cannot read: nothing downloaded
        return {}
    return {repo.repo_id: repo.size_on_disk for repo in cache.repos if repo.repo_type == "model"}


def disk_usage_text(nbytes: int) -> str:
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} KB"
