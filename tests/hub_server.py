"""A local Hugging Face Hub for tests: stdlib ThreadingHTTPServer speaking the client's protocol.

Enough of the Hub for ``huggingface_hub`` 2.x (without Xet) to create repos, commit files (regular
and LFS), create branches and download files with ``hf_hub_download`` / ``snapshot_download``.
Every request is recorded as ``(METHOD, route)`` for contract tests, and ``faults`` injects
failures: corrupted (same-size) bodies, HTTP errors and truncated transfers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> sha
    lfs_paths: set[str] = field(default_factory=set)


@dataclass
class Faults:
    """Failures to inject, consumed per matching request (counts go down to 0)."""

    corrupt: dict[str, int] = field(default_factory=dict)  # filename -> GETs served corrupted
    http_error: dict[str, tuple[int, int]] = field(default_factory=dict)  # filename -> (status, count)
    truncate: dict[str, int] = field(default_factory=dict)  # filename -> GETs cut short


class HubState:
    def __init__(self):
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[str] = []
        self.faults = Faults()

    def add_commit(self, repo_id: str, branch: str, files: dict[str, bytes], lfs: set[str],
                   deleted: set[str] = frozenset(), message: str = "") -> str:
        repo = self.repos[repo_id]
        parent = repo.refs.get(branch)
        tree = dict(repo.commits.get(parent, {}))
        for p in deleted:
            tree.pop(p, None)
        tree.update(files)
        repo.lfs_paths |= lfs
        h = hashlib.sha1(f"{parent}\n{message}\n".encode())
        for path in sorted(tree):
            h.update(path.encode() + b"\0" + hashlib.sha256(tree[path]).digest())
        sha = h.hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def resolve(self, repo_id: str, rev: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if rev in repo.refs:
            return repo.refs[rev]
        return rev if rev in repo.commits else None


class _Handler(BaseHTTPRequestHandler):
    server_version = "rasd-test-hub/1.0"
    state: HubState  # set per server class

    def log_message(self, *args):  # keep pytest output clean
        pass

    # -- helpers -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False):
        self._send(status, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                   head=head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self, route: str):
        with self.state.lock:
            self.state.log.append(route)

    # -- routing -------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def do_PUT(self):
        self._route()

    def _route(self):
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and self.command in ("GET", "HEAD"):
            return self._resolve(*m.groups())
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m and self.command == "GET":
            return self._revision(*m.groups())
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m and self.command == "GET":
            return self._tree(m.group(1), m.group(2), query)
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo()
        if path == "/api/validate-yaml" and self.command == "POST":
            self._record("POST /api/validate-yaml")
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if m and self.command == "POST":
            return self._preupload(*m.groups())
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", path)
        if m and self.command == "POST":
            return self._branch(*m.groups())
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and self.command == "POST":
            return self._lfs_batch(m.group(1))
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if m and self.command == "PUT":
            return self._lfs_put(m.group(1))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if m and self.command == "POST":
            return self._commit(*m.groups())
        self._record(f"{self.command} (unknown) {path}")
        return self._error(404, "NotFound", f"no route for {self.command} {path}")

    # -- download ------------------------------------------------------------------------------
    def _resolve(self, repo_id: str, rev: str, filename: str):
        head = self.command == "HEAD"
        self._record(f"{self.command} /{{repo}}/resolve/{{rev}}/{{path}}")
        st = self.state
        if repo_id not in st.repos:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        sha = st.resolve(repo_id, rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        tree = st.repos[repo_id].commits[sha]
        if filename not in tree:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {rev}", head)
        with st.lock:
            err = st.faults.http_error.get(filename)
            if err and err[1] > 0:
                st.faults.http_error[filename] = (err[0], err[1] - 1)
                return self._error(err[0], "ServerError", f"injected HTTP {err[0]}", head)
        data = tree[filename]
        is_lfs = filename in st.repos[repo_id].lfs_paths
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if is_lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        if head:
            return self._send(200, data, headers, head=True)
        with st.lock:
            corrupt = st.faults.corrupt.get(filename, 0) > 0
            if corrupt:
                st.faults.corrupt[filename] -= 1
            truncate = st.faults.truncate.get(filename, 0) > 0
            if truncate:
                st.faults.truncate[filename] -= 1
        if corrupt:  # same size, one byte flipped in the middle
            buf = bytearray(data)
            buf[len(buf) // 2] ^= 0xFF
            data = bytes(buf)
        status, start = 200, 0
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data = data[start:end + 1]
                status = 206
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if truncate:  # announce everything, send half, hang up
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def _revision(self, repo_id: str, rev: str):
        self._record("GET /api/models/{repo}/revision/{rev}")
        sha = self.state.resolve(repo_id, rev)
        if repo_id not in self.state.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        tree = self.state.repos[repo_id].commits[sha]
        self._json(200, {"id": repo_id, "modelId": repo_id, "sha": sha,
                         "private": self.state.repos[repo_id].private,
                         "siblings": [{"rfilename": p} for p in sorted(tree)]})

    def _tree(self, repo_id: str, rev: str, query):
        self._record("GET /api/models/{repo}/tree/{rev}")
        sha = self.state.resolve(repo_id, rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        repo = self.state.repos[repo_id]
        items = []
        for p, data in sorted(repo.commits[sha].items()):
            item = {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
            if p in repo.lfs_paths:
                item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            items.append(item)
        self._json(200, items)

    # -- upload --------------------------------------------------------------------------------
    def _create_repo(self):
        self._record("POST /api/repos/create")
        body = json.loads(self._body() or b"{}")
        name = body.get("name", "")
        org = body.get("organization")
        repo_id = f"{org}/{name}" if org else name
        if "/" not in repo_id:
            repo_id = f"test-user/{repo_id}"
        url = f"http://{self.headers.get('Host')}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            self.state.repos[repo_id] = Repo(private=bool(body.get("private")))
            attrs = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            self.state.add_commit(repo_id, "main", {".gitattributes": attrs}, set(), message="initial commit")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_id: str, rev: str):
        self._record("POST /api/models/{repo}/preupload/{rev}")
        body = json.loads(self._body() or b"{}")
        if repo_id not in self.state.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        files = []
        for f in body.get("files", []):
            lfs = f["path"].endswith(LFS_SUFFIXES) or f.get("size", 0) >= 10 * 1024 * 1024
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": None})
        self._json(200, {"files": files, "commitOid": self.state.resolve(repo_id, rev)})

    def _branch(self, repo_id: str, branch: str):
        self._record("POST /api/models/{repo}/branch/{branch}")
        body = json.loads(self._body() or b"{}")
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if branch in repo.refs:
            return self._error(409, "Conflict", "Reference already exists")
        start = self.state.resolve(repo_id, body.get("startingPoint") or "main")
        repo.refs[branch] = start
        self._json(200, {})

    def _lfs_batch(self, repo_id: str):
        self._record("POST /{repo}.git/info/lfs/objects/batch")
        body = json.loads(self._body() or b"{}")
        host = self.headers.get("Host")
        objects = []
        for obj in body.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"http://{host}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str):
        self._record("PUT /lfs-upload/{oid}")
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "BadRequest", "sha256 mismatch")
        with self.state.lock:
            self.state.lfs[oid] = data
        self._send(200)

    def _commit(self, repo_id: str, rev: str):
        self._record("POST /api/models/{repo}/commit/{rev}")
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        if repo_id not in self.state.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        files, lfs, deleted, message = {}, set(), set(), ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(400, "BadRequest", f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                deleted.add(value["path"])
        branch = rev
        with self.state.lock:
            if branch not in self.state.repos[repo_id].refs:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            sha = self.state.add_commit(repo_id, branch, files, lfs, deleted, message)
        host = self.headers.get("Host")
        self._json(200, {"success": True, "commitOid": sha, "commitMessage": message,
                         "commitUrl": f"http://{host}/{repo_id}/commit/{sha}", "hookOutput": ""})


class LocalHub:
    """Start/stop a local Hub on 127.0.0.1; ``url`` is the endpoint to pass to the client."""

    def __init__(self, state: HubState | None = None, port: int = 0):
        self.state = state or HubState()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "LocalHub":
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def routes(self) -> set[str]:
        return set(self.state.log)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # manual use: python tests/hub_server.py [PORT]
    import sys
    import time

    hub = LocalHub(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
