"""A small server that speaks the Hugging Face hub's HTTP on 127.0.0.1, so the real huggingface_hub client lists,
downloads (with Range requests), resumes and is refused exactly as it is by the hub.

Point ``HF_ENDPOINT`` at it. It serves folders under repo ids (the tiny family under the official ids, in the tests),
answers a gated repo as the hub does (401 without a token, 403 for a token without access, 401 "Invalid credentials"
for a token it does not know), and can drop a connection part-way through a file once, as a flaky network does.

Run it by hand: ``python -m tests.hub_server --repo black-forest-labs/FLUX.1-schnell=PATH [--port 8765]``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 1 << 20
GOOD_TOKEN = "hf_local_good_token"  # knows every repo, gated ones included
NO_ACCESS_TOKEN = "hf_local_no_access"  # a valid token that has not accepted the gated licences


@dataclass
class Repo:
    folder: Path
    gated: bool = False

    @property
    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())


@dataclass
class Hub:
    repos: dict[str, Repo]
    tokens: dict[str, bool] = field(default_factory=lambda: {GOOD_TOKEN: True, NO_ACCESS_TOKEN: False})
    drop_once: dict[str, int] = field(default_factory=dict)  # file path -> bytes sent before the connection drops
    rate: int | None = None  # bytes per second per connection (None: as fast as it goes)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    url: str = ""

    def start(self) -> "Hub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, repo_id: str | None = None) -> list[tuple[str, str]]:
        """(path, Range) of every file GET (of ``repo_id``)."""
        return [(path, rng) for method, path, rng in self.log if method == "GET" and "/resolve/" in path
                and (repo_id is None or path.startswith(f"/{repo_id}/"))]


def commit_of(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


def etag_of(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    state: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---- routing --------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        parsed = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(parsed.path)
        self.state.log.append((self.command, path, self.headers.get("Range", "")))
        if path == "/api/models" or path == "/":
            return self._json([], head)
        if path == "/api/whoami-v2":
            token = self._token()
            if token in self.state.tokens:
                return self._json({"type": "user", "name": "tester"}, head)
            return self._error(401, "Invalid credentials in Authorization header", None, head)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
        if match:
            return self._info(match.group(1), head)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if match:
            return self._tree(match.group(1), match.group(3) or "", head)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._file(match.group(1), match.group(3), head)
        return self._error(404, "Not found", "EntryNotFound", head)

    # ---- answers -------------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    def _denied(self, repo_id: str, repo: Repo, head: bool, files: bool) -> bool:
        """Answer as the hub does when the request may not see the repo (True when it answered)."""
        token = self._token()
        if token is not None and token not in self.state.tokens:
            self._error(401, "Invalid credentials in Authorization header", None, head)
            return True
        if files and repo.gated and token is None:
            self._error(401, f"Access to model {repo_id} is restricted. You must have access to it and be "
                             "authenticated to access it. Please log in.", "GatedRepo", head)
            return True
        if files and repo.gated and not self.state.tokens.get(token, False):
            self._error(403, f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                             f"Visit https://huggingface.co/{repo_id} to ask for access.", "GatedRepo", head)
            return True
        return False

    def _repo(self, repo_id: str, head: bool) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound", head)
        return repo

    def _info(self, repo_id: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None or self._denied(repo_id, repo, head, files=False):
            return
        self._json({"_id": commit_of(repo_id)[:24], "id": repo_id, "modelId": repo_id, "sha": commit_of(repo_id),
                    "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": ["diffusers"], "library_name": "diffusers",
                    "siblings": [{"rfilename": name} for name in repo.files]}, head)

    def _tree(self, repo_id: str, under: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None or self._denied(repo_id, repo, head, files=False):
            return
        items, folders = [], set()
        for name in repo.files:
            if under and not name.startswith(under.rstrip("/") + "/"):
                continue
            parts = name.split("/")
            for depth in range(1, len(parts)):
                folders.add("/".join(parts[:depth]))
            file = repo.folder / name
            items.append({"type": "file", "oid": etag_of(file)[:40], "size": file.stat().st_size, "path": name})
        items += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                  for f in sorted(folders)]
        self._json(items, head)

    def _file(self, repo_id: str, name: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None or self._denied(repo_id, repo, head, files=True):
            return
        file = repo.folder / name
        if not file.is_file() or ".." in Path(name).parts:
            return self._error(404, "Entry not found", "EntryNotFound", head)
        size = file.stat().st_size
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
        length = size - start
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag_of(file)}"')
        self.send_header("X-Repo-Commit", commit_of(repo_id))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if head:
            return
        drop = self.state.drop_once.pop(name, None)
        with file.open("rb") as handle:
            handle.seek(start)
            sent = 0
            while sent < length:
                block = handle.read(min(CHUNK, length - sent))
                if drop is not None and sent + len(block) >= drop:
                    self.wfile.write(block[: max(0, drop - sent)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops part-way, as on a flaky network
                    return
                self.wfile.write(block)
                sent += len(block)
                if self.state.rate:
                    time.sleep(len(block) / self.state.rate)

    def _json(self, data, head: bool) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", message)
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", default=[], metavar="ID=FOLDER", help="serve FOLDER as repo ID")
    parser.add_argument("--gated", action="append", default=[], metavar="ID", help="answer ID as a gated repo")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    repos = {}
    for item in args.repo:
        repo_id, _, folder = item.partition("=")
        repos[repo_id] = Repo(Path(folder), gated=repo_id in args.gated)
    hub = Hub(repos)

    class Handler(_Handler):
        state = hub

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"serving {len(repos)} repos on http://127.0.0.1:{server.server_address[1]} (HF_ENDPOINT)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
