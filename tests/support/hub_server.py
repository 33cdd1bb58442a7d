"""A local HTTP server that speaks the parts of the Hugging Face hub protocol huggingface_hub uses to
download: model info with file metadata, `resolve` HEAD/GET with X-Repo-Commit / ETag / X-Linked-*
headers, a redirect of LFS files to a CDN URL, Range requests, and the hub's X-Error-Code headers
for gated, missing and unauthorized access. Faults can be injected per file: wrong bytes, a connection
dropped after N bytes, a slow stream. And it can lie as a hostile server would: hostile ETag and commit
headers, a hostile commit id in the listing, a GET redirected to another host, a 403 on GET, a body
longer than announced. Every request is logged with the host it reached and its Authorization header.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 1024  # files at least this large are served as LFS files, like model weights on the hub


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = field(default_factory=lambda: hashlib.sha1(str(time.time_ns()).encode()).hexdigest())
    gated: bool = False  # only `accepted_tokens` may read it


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.valid_tokens: set[str] = set()
        self.accepted_tokens: set[str] = set()  # tokens whose account accepted the gated licences
        self.corrupt: set[str] = set()  # file names served with one byte flipped
        self.drop_after: dict[str, int] = {}  # file name -> bytes sent before the connection drops (once)
        self.drop_every: dict[str, int] = {}  # file name -> bytes sent before every response for it drops
        self.bytes_per_second: dict[str, int] = {}  # file name -> throttled rate
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.auth_log: list[tuple[str, str, str | None]] = []  # (host, path, Authorization header)
        # Hostile behaviour on demand:
        self.etag: dict[str, str] = {}  # file name -> ETag / X-Linked-Etag header value
        self.commit_header: str | None = None  # X-Repo-Commit value instead of the repo's sha
        self.listed_sha: str | None = None  # commit id in the model info instead of the repo's sha
        self.redirect_get: set[str] = set()  # small files whose GET (not HEAD) answers 302 to the other host
        self.status_on_get: dict[str, int] = {}  # file name -> error status of its GET
        self.extra_bytes: dict[str, int] = {}  # file name -> bytes sent beyond what the listing and HEAD say
        # The hub redirects LFS downloads to a CDN on another host; 127.0.0.2 plays that host.
        self._servers = [ThreadingHTTPServer((host, 0), self._handler()) for host in ("127.0.0.1", "127.0.0.2")]
        for server in self._servers:
            server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.2:{self._servers[1].server_address[1]}"

    def __enter__(self) -> HubServer:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def ranges_requested(self, filename: str) -> list[str]:
        return [r for method, path, r in self.log if method == "GET" and path.endswith(filename) and r]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            # --- routing -------------------------------------------------------------------------
            def _route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.log.append((self.command, path, self.headers.get("Range")))
                hub.auth_log.append((self.server.server_address[0], path, self.headers.get("Authorization")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    return self._model_info(parts[2:], head)
                if parts[0] == "lfs-cdn":
                    return self._send_file(parts[1], parts[2], head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
                self._error(404, "EntryNotFound", "not found")

            def _authorize(self, repo_id: str) -> Repo | None:
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
                if token is not None and token not in hub.valid_tokens:
                    self._error(401, None, "Invalid credentials in Authorization header")
                    return None
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return None
                if repo.gated and token not in hub.accepted_tokens:
                    self._error(401 if token is None else 403, "GatedRepo",
                                "Access to this model is restricted. You must have access to it and be authenticated.")
                    return None
                return repo

            def _model_info(self, parts: list[str], head: bool):
                repo_id = "/".join(parts[:2])
                revision = parts[3] if len(parts) >= 4 and parts[2] == "revision" else "main"
                repo = self._authorize(repo_id)
                if repo is None:
                    return
                if revision not in ("main", repo.sha):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                siblings = []
                for name, data in sorted(repo.files.items()):
                    sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
                    if len(data) >= LFS_THRESHOLD:
                        sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                          "pointerSize": 134}
                    siblings.append(sibling)
                sha = hub.listed_sha if hub.listed_sha is not None else repo.sha
                body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                   "gated": "manual" if repo.gated else False, "siblings": siblings}).encode()
                self._reply(200, {"Content-Type": "application/json"}, body, head)

            def _resolve(self, repo_id: str, revision: str, filename: str, head: bool):
                repo = self._authorize(repo_id)
                if repo is None:
                    return
                if revision not in ("main", repo.sha):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                data = repo.files.get(filename)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist")
                headers = {"X-Repo-Commit": hub.commit_header or repo.sha}
                cdn_location = f"{hub.cdn_url}/lfs-cdn/{repo_id.replace('/', '--')}/{filename.replace('/', '--')}"
                if len(data) >= LFS_THRESHOLD:
                    # Like the hub: LFS files redirect to a CDN; the metadata rides on the redirect.
                    etag = hub.etag.get(filename, f'"{hashlib.sha256(data).hexdigest()}"')
                    headers |= {"X-Linked-Etag": etag, "X-Linked-Size": str(len(data)), "ETag": etag,
                                "Location": cdn_location}
                    return self._reply(302, headers, b"", head)
                headers["ETag"] = hub.etag.get(filename, f'"{git_blob_sha1(data)}"')
                if not head and filename in hub.redirect_get:
                    return self._reply(302, {**headers, "Location": cdn_location}, b"", head)
                self._send_bytes(filename, data, headers, head)

            def _send_file(self, repo_key: str, file_key: str, head: bool):
                repo = hub.repos[repo_key.replace("--", "/")]
                filename = file_key.replace("--", "/")
                self._send_bytes(filename, repo.files[filename], {}, head)

            # --- bodies ------------------------------------------------------------------------
            def _send_bytes(self, filename: str, data: bytes, headers: dict, head: bool):
                if filename in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if not head and filename in hub.status_on_get:
                    return self._error(hub.status_on_get[filename], None, "Forbidden")
                if not head and filename in hub.extra_bytes:
                    data = data + b"\0" * hub.extra_bytes[filename]
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes=") and not head:
                    start = int(range_header[len("bytes="):].split("-")[0])
                body = data[start:]
                status = 206 if start else 200
                headers = {**headers, "Content-Length": str(len(body)), "Accept-Ranges": "bytes"}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if head:
                    return
                drop = hub.drop_after.pop(filename, hub.drop_every.get(filename))
                rate = hub.bytes_per_second.get(filename)
                chunk = 4096 if rate is None else max(1, rate // 20)
                sent = 0
                try:
                    for i in range(0, len(body), chunk):
                        piece = body[i:i + chunk]
                        if drop is not None and sent + len(piece) > drop:
                            self.wfile.write(piece[: drop - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(piece)
                        sent += len(piece)
                        if rate is not None:
                            self.wfile.flush()
                            time.sleep(len(piece) / rate)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _reply(self, status: int, headers: dict, body: bytes, head: bool):
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: str | None, message: str):
                headers = {"X-Error-Message": message, "Content-Type": "application/json"}
                if code:
                    headers["X-Error-Code"] = code
                self._reply(status, headers, json.dumps({"error": message}).encode(), self.command == "HEAD")

        return Handler
