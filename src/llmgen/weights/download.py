"""Downloading models with the real huggingface_hub client, checked file by file.

What huggingface_hub 2.4 does: each file goes to a process-unique `<etag>.<uuid>.incomplete` that is
moved into place when complete and deleted on any failure. A connection dropped mid-file is resumed
with a Range request inside the same process, but a download that is killed (Ctrl-C, a closed laptop)
starts again from zero, which hurts on a 16 GB checkpoint. It also does not check content.

What we add: LFS files (the weights) stream into a stable `<final>.part`, resumed with a Range request
from its current size on the next run, checked against the hub's sha256, then placed where
huggingface_hub would put them (the hub cache's blobs/ + snapshots/ + refs/ layout, or --dir). Small
files go through hf_hub_download and are checked against their git blob id. A mismatch removes the file.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmgen.assets import sha256_file
from llmgen.errors import LLMGenError
from llmgen.registry import ModelEntry

DISK_MARGIN = 1.05  # ask for 5% more free space than the files need


@dataclass
class Download:
    repo_id: str
    commit: str
    path: Path  # the snapshot directory (hub cache) or --dir
    files: list[Path]


def download(entry: ModelEntry, *, local_dir: Path | None = None, revision: str | None = None,
             token: str | None = None, tqdm_class=None) -> Download:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    revision = revision or entry.revision
    with hub_errors(entry.repo_id, revision):
        if constants.HF_HUB_OFFLINE:
            path = snapshot_download(entry.repo_id, revision=revision, allow_patterns=list(entry.files),
                                     local_dir=local_dir, local_files_only=True)
            return Download(entry.repo_id, revision, Path(path), sorted(Path(path).rglob("*")))
        info = HfApi().model_info(entry.repo_id, revision=revision, files_metadata=True, token=token)
        wanted = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, g) for g in entry.files)]
        if not wanted:
            raise LLMGenError(f"no file in {entry.repo_id}@{revision} matches {', '.join(entry.files)}")
        check_disk_space(local_dir or Path(constants.HF_HUB_CACHE), sum(s.size or 0 for s in wanted))
        files = []
        for sibling in wanted:
            if sibling.lfs is not None:
                path = _download_resumable(entry.repo_id, sibling, revision, info.sha, local_dir, token, tqdm_class)
            else:
                path = Path(hf_hub_download(entry.repo_id, sibling.rfilename, revision=revision,
                                            local_dir=local_dir, token=token, tqdm_class=tqdm_class))
            verify(path, sibling)
            files.append(path)
    root = local_dir if local_dir is not None else _snapshot_root(files[0], wanted[0].rfilename)
    return Download(entry.repo_id, info.sha, Path(root), files)


CHUNK = 1 << 20


def _download_resumable(repo_id: str, sibling, revision: str, commit: str, local_dir: Path | None,
                        token: str | None, tqdm_class) -> Path:
    """One LFS file into `<final>.part`, continuing from what an earlier, interrupted run left."""
    import http.client
    import urllib.request

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo_id, sibling.rfilename, revision=commit), token=token)
    if local_dir is not None:
        final = Path(local_dir) / sibling.rfilename
        link = None
    else:
        repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        final = repo_dir / "blobs" / meta.etag
        link = repo_dir / "snapshots" / commit / sibling.rfilename
    size = sibling.lfs.size
    if not (final.is_file() and final.stat().st_size == size):
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not ours to continue
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        if _same_host(meta.location, constants.ENDPOINT):  # never send the token off the hub
            headers |= build_hf_headers(token=token)
        bar = tqdm_class(total=size, initial=have, desc=sibling.rfilename, unit="B") if tqdm_class else None
        try:
            with urllib.request.urlopen(urllib.request.Request(meta.location, headers=headers), timeout=60) as response:
                if have and response.status != 206:  # the server ignored the Range: start over
                    have = 0
                with open(part, "ab" if have else "wb") as out:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError):
            pass  # what arrived is kept in .part; the size check below says how to resume
        if bar is not None:
            bar.close()
        if part.stat().st_size != size:
            raise LLMGenError(f"{sibling.rfilename}: the connection ended early ({part.stat().st_size} of {size} "
                              "bytes); run the download again to resume")
        os.replace(part, final)
    if link is None:
        return final
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(final, link.parent))
    refs = link.parents[len(Path(sibling.rfilename).parts)].parent.parent / "refs" / revision
    if revision != commit and not refs.exists():
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
    return link


def _same_host(url: str, endpoint: str) -> bool:
    from urllib.parse import urlparse

    return urlparse(url).netloc == urlparse(endpoint).netloc


def _snapshot_root(path: Path, rfilename: str) -> Path:
    for _ in Path(rfilename).parts:
        path = path.parent
    return path


def verify(path: Path, sibling) -> None:
    """Compare a downloaded file with the hub's hash; remove it (and its cache blob) on a mismatch."""
    if sibling.lfs is not None:
        expected, actual = sibling.lfs.sha256, sha256_file(path)
    elif sibling.blob_id:
        expected, actual = sibling.blob_id, _git_blob_sha1(path)
    else:
        return
    if expected != actual:
        target = path.resolve()
        path.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise LLMGenError(f"{sibling.rfilename} does not match the hub's hash (expected {expected[:12]}..., "
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
        raise LLMGenError(f"not enough disk space in {directory}: the download needs {needed / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB are free")


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
        elif isinstance(error, errors.HfHubHTTPError) and error.response is not None \
                and error.response.status_code == 401:
            message = "the hub rejected the token (401 Unauthorized): check HF_TOKEN or --token"
        elif isinstance(error, errors.HfHubHTTPError):
            message = f"the hub answered with an error for {repo}: {str(error).splitlines()[0]}"
        elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
            message = "the disk is full; free some space and run the download again (it resumes)"
        elif _is_connection_error(error):
            message = (f"cannot reach the hub at {constants.ENDPOINT} ({type(error).__name__}); check the network, "
                       "or set HF_HUB_OFFLINE=1 to use files already downloaded")
        else:
            return False
        raise LLMGenError(message) from None


def _is_connection_error(error: BaseException) -> bool:
    import urllib.error

    import httpx2  # huggingface_hub's HTTP client; urllib carries the resumable weight downloads

    return isinstance(error, (httpx2.TransportError, urllib.error.URLError, ConnectionError, TimeoutError))


def cached_models() -> dict[str, int]:
    """repo id -> bytes on disk, for models in the hub cache."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache directory yet, or one we cannot read: nothing downloaded
        return {}
    return {repo.repo_id: repo.size_on_disk for repo in cache.repos if repo.repo_type == "model"}


def disk_usage_text(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"

