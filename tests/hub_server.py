"""A small fake Hugging Face Hub on 127.0.0.1 for the hub/zoo tests.

It implements only the HTTP routes ``huggingface_hub`` 2.x really calls for our workflows,
with the headers the client relies on:

* ``POST /api/repos/create``                    create a repo (409 when it exists)
* ``POST /api/validate-yaml``                   README metadata check (YAML parsed for real)
* ``GET  /api/{models|datasets}/{repo}[/revision/{rev}]``  repo info (``?blobs=true``: sizes,
  git blob ids, LFS sha256)
* ``POST /api/{type}s/{repo}/preupload/{rev}``  upload mode per file (``lfs`` / ``regular``)
* ``POST /[datasets/]{repo}.git/info/lfs/objects/batch``  LFS batch: upload actions on the
  "CDN" server (a second port, so a different origin as the real LFS storage)
* ``PUT  <cdn>/upload/{oid}`` and ``POST .../objects/verify``  LFS upload + verify
* ``POST /api/{type}s/{repo}/commit/{rev}``     NDJSON commit (header, file, lfsFile, deletedFile)
* ``POST /api/{type}s/{repo}/tag/{rev}``        create a tag (409 when it exists)
* ``HEAD/GET /[datasets/]{repo}/resolve/{rev}/{path}``  regular files: 200 with ``ETag`` (git
  blob id), ``X-Repo-Commit``, ``Content-Length``; LFS files: 302 to ``<cdn>/lfs/{sha256}``
  with ``X-Linked-Etag`` (sha256), ``X-Linked-Size``, ``X-Repo-Commit``
* ``GET  <cdn>/lfs/{sha256}``                    the LFS bytes

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) as
the Hub does, which huggingface_hub turns into its typed exceptions. Every request is logged in
``FakeHub.requests`` (method, path) so tests can assert that nothing was requested.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["FakeHub", "git_blob_sha1", "guard_sockets", "isolate_hf", "random_variables", "set_offline"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".tif", ".tiff", ".npy", ".npz", ".czi", ".h5", ".zarr", ".png", ".gif")
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.tif filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass(frozen=True)
class _Entry:
    size: int
    lfs_sha256: str | None  # LFS file: its sha256 (bytes in FakeHub.lfs); else regular
    content: bytes | None  # regular file content

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_sha256}\nsize {self.size}\n").encode()

    @property
    def blob_id(self) -> str:
        return git_blob_sha1(self.pointer if self.lfs_sha256 else self.content)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, _Entry]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev in self.commits:
            return rev
        return None


class FakeHub:
    """The fake Hub: state plus two loopback HTTP servers (the Hub API and the LFS "CDN").

    ``token``: when set, writes (and reads of private repos) need ``Authorization: Bearer <token>``.
    """

    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            handler = type(f"_{role}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, name=f"fake-{role}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests ------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        return self.repos[(repo_type, repo_id)]

    def file_bytes(self, repo_id: str, revision: str, path: str, repo_type: str = "model") -> bytes:
        repo = self.repo(repo_id, repo_type)
        entry = repo.commits[repo.resolve(revision)][path]
        return self.lfs[entry.lfs_sha256] if entry.lfs_sha256 else entry.content

    def replace_lfs_bytes(self, sha256: str, data: bytes) -> None:
        """Simulate a corrupted/malicious storage: serve other bytes under an LFS oid."""
        with self.lock:
            self.lfs[sha256] = data

    # -- state changes ------------------------------------------------------------------------------
    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type, repo_id, private)
        tree = {".gitattributes": _Entry(len(_GITATTRIBUTES), None, _GITATTRIBUTES)}
        sha = self._commit_sha(None, tree, "initial commit")
        repo.commits[sha] = tree
        repo.branches["main"] = sha
        self.repos[(repo_type, repo_id)] = repo
        return repo

    @staticmethod
    def _commit_sha(parent: str | None, tree: dict[str, _Entry], message: str) -> str:
        listing = sorted((p, e.blob_id) for p, e in tree.items())
        return hashlib.sha1(json.dumps([parent, listing, message]).encode()).hexdigest()


_REPO = r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None):
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = message
        self._json(status, {"error": message}, h)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _get_repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> _Repo | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if write and not self._authorized():
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.private and not self._authorized()):
            self._error(404 if repo is None else 401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _dispatch(self):
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.body = self._read_body()  # always consume the body: the connection is kept alive
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path))
        for method, pattern, func in self._ROUTES[self.role]:
            if method != self.command:
                continue
            m = re.fullmatch(pattern, path)
            if m:
                with self.hub.lock:
                    return func(self, query=query, **m.groupdict())
        self._error(404, None, f"no route {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # -- hub API --------------------------------------------------------------------------------
    def create_repo(self, query):
        payload = json.loads(self.body)
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:  # the Hub answers the url with the 409
            msg = f"You already created this {repo_type} repo"
            return self._json(409, {"error": msg, "url": url}, {"X-Error-Message": msg})
        self.hub._create_repo(repo_type, repo_id, payload.get("visibility") == "private")
        self._json(200, {"url": url, "name": repo_id})

    def validate_yaml(self, query):
        payload = json.loads(self.body)
        text = payload.get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            if not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._json(200, {"errors": [], "warnings": []})

    def repo_info(self, query, kind, repo, rev=None):
        repo_type = kind[:-1]
        r = self._get_repo(repo_type, repo)
        if r is None:
            return
        rev = unquote(rev) if rev is not None else "main"
        sha = r.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p, e in sorted(r.commits[sha].items()):
            s = {"rfilename": p}
            if blobs:
                s["size"] = e.size
                s["blobId"] = e.blob_id
                if e.lfs_sha256:
                    s["lfs"] = {"size": e.size, "sha256": e.lfs_sha256, "pointerSize": len(e.pointer)}
            siblings.append(s)
        self._json(200, {"id": repo, "sha": sha, "private": r.private, "siblings": siblings,
                         "lastModified": "2026-01-01T00:00:00.000Z", "tags": []})

    def preupload(self, query, kind, repo, rev):
        r = self._get_repo(kind[:-1], repo, write=True)
        if r is None:
            return
        payload = json.loads(self.body)
        sha = r.resolve(unquote(rev))
        tree = r.commits.get(sha, {}) if sha else {}
        files = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f["size"] > 10_000_000 or b"\0" in sample
            out = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            old = tree.get(f["path"])
            if old is not None:
                out["oid"] = old.lfs_sha256 if old.lfs_sha256 else old.blob_id
            files.append(out)
        self._json(200, {"files": files, "commitOid": sha})

    def lfs_batch(self, query, prefix, repo):
        repo_type = "dataset" if prefix else "model"
        r = self._get_repo(repo_type, repo, write=True)
        if r is None:
            return
        payload = json.loads(self.body)
        assert payload["operation"] == "upload", payload
        objects = []
        for o in payload["objects"]:
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.lfs:
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.cdn}/upload/{o['oid']}?size={o['size']}"},
                    "verify": {"href": f"{self.hub.endpoint}/{prefix or ''}{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(obj)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_verify(self, query, prefix, repo):
        payload = json.loads(self.body)
        data = self.hub.lfs.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            return self._error(404, None, "object not found")
        self._json(200, {"ok": True})

    def commit(self, query, kind, repo, rev):
        r = self._get_repo(kind[:-1], repo, write=True)
        if r is None:
            return
        branch = unquote(rev)
        if branch not in r.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        parent = r.branches[branch]
        tree = dict(r.commits[parent])
        header = None
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") and value["parentCommit"] != parent:
                    return self._error(412, None, "parent commit is not the head")
            elif key == "file":
                assert value.get("encoding") == "base64", value
                content = base64.b64decode(value["content"])
                tree[value["path"]] = _Entry(len(content), None, content)
            elif key == "lfsFile":
                data = self.hub.lfs.get(value["oid"])
                if data is None:
                    return self._error(422, None, f"LFS object {value['oid']} was not uploaded")
                tree[value["path"]] = _Entry(len(data), value["oid"], None)
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            else:
                return self._error(400, None, f"unsupported commit operation {key}")
        if header is None:
            return self._error(400, None, "missing header")
        sha = self.hub._commit_sha(parent, tree, header["summary"])
        r.commits[sha] = tree
        r.branches[branch] = sha
        prefix = "" if r.repo_type == "model" else f"{r.repo_type}s/"
        self._json(200, {"commitUrl": f"{self.hub.endpoint}/{prefix}{repo}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None, "success": True})

    def create_tag(self, query, kind, repo, rev):
        r = self._get_repo(kind[:-1], repo, write=True)
        if r is None:
            return
        payload = json.loads(self.body)
        sha = r.resolve(unquote(rev))
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        if payload["tag"] in r.tags or payload["tag"] in r.branches:
            return self._error(409, None, f"Tag {payload['tag']} already exists")
        r.tags[payload["tag"]] = sha
        self._json(200, {})

    def resolve(self, query, prefix, repo, rev, path):
        repo_type = "dataset" if prefix else "model"
        r = self._get_repo(repo_type, repo)
        if r is None:
            return
        rev, path = unquote(rev), unquote(path)
        sha = r.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entry = r.commits[sha].get(path)
        if entry is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {rev}", {"X-Repo-Commit": sha})
        if entry.lfs_sha256:
            headers = {
                "Location": f"{self.hub.cdn}/lfs/{entry.lfs_sha256}",
                "X-Linked-Etag": f'"{entry.lfs_sha256}"',
                "X-Linked-Size": str(entry.size),
                "X-Repo-Commit": sha,
                "ETag": f'"{entry.blob_id}"',
            }
            return self._send(302, b"", headers, content_type="text/plain")
        self._send(200, entry.content, {"ETag": f'"{entry.blob_id}"', "X-Repo-Commit": sha},
                   content_type="application/octet-stream")

    # -- "CDN" ----------------------------------------------------------------------------------
    def cdn_upload(self, query, oid):
        data = self.body
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, "content does not match the oid")
        self.hub.lfs[oid] = data
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def cdn_get(self, query, oid):
        data = self.hub.lfs.get(oid)
        if data is None:
            return self._error(404, None, "no such object")
        self._send(200, data, content_type="application/octet-stream")

    _ROUTES = {
        "hub": [
            ("POST", r"/api/repos/create", create_repo),
            ("POST", r"/api/validate-yaml", validate_yaml),
            ("GET", rf"/api/(?P<kind>models|datasets)/{_REPO}(?:/revision/(?P<rev>[^/]+))?", repo_info),
            ("POST", rf"/api/(?P<kind>models|datasets)/{_REPO}/preupload/(?P<rev>[^/]+)", preupload),
            ("POST", rf"/api/(?P<kind>models|datasets)/{_REPO}/commit/(?P<rev>[^/]+)", commit),
            ("POST", rf"/api/(?P<kind>models|datasets)/{_REPO}/tag/(?P<rev>[^/]+)", create_tag),
            ("POST", rf"/(?P<prefix>datasets/)?{_REPO}\.git/info/lfs/objects/batch", lfs_batch),
            ("POST", rf"/(?P<prefix>datasets/)?{_REPO}\.git/info/lfs/objects/verify", lfs_verify),
            ("HEAD", rf"/(?P<prefix>datasets/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", resolve),
            ("GET", rf"/(?P<prefix>datasets/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", resolve),
        ],
        "cdn": [
            ("PUT", r"/upload/(?P<oid>[0-9a-f]{64})", cdn_upload),
            ("GET", r"/lfs/(?P<oid>[0-9a-f]{64})", cdn_get),
            ("HEAD", r"/lfs/(?P<oid>[0-9a-f]{64})", cdn_get),
        ],
    }


# ------------------------------------------------------------------------------------------------
# test helpers: an isolated Hugging Face environment and a socket guard
# ------------------------------------------------------------------------------------------------
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def isolate_hf(monkeypatch, tmp_path, *, offline: bool = False):
    """Point every huggingface_hub path at ``tmp_path``, disable Xet, no token; return the cache dir.

    huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_DISABLE_XET, HF_HOME, the cache and token paths
    into ``huggingface_hub.constants`` when it is imported, so the constants are patched as well
    as the environment (labelfree_jax.hub.client also reads HF_HUB_OFFLINE from the environment).
    """
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    set_offline(monkeypatch, offline)
    return cache


def set_offline(monkeypatch, offline: bool) -> None:
    """Switch offline mode the way a user does (HF_HUB_OFFLINE=1) and as huggingface_hub sees it."""
    from huggingface_hub import constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


# The real socket functions, taken once when this module is imported. Every guard wraps
# these, never the functions it finds installed: a second guard in one test (say, offline
# without loopback, then online with it) must replace the first, not wrap it, or loopback
# stays blocked whenever a new connection is needed (a pooled keep-alive connection hid this
# on an idle machine; on a busy one the test failed).
_REAL_CONNECT = socket.socket.connect
_REAL_CONNECT_EX = socket.socket.connect_ex
_REAL_CREATE_CONNECTION = socket.create_connection


def guard_sockets(monkeypatch, *, allow_loopback: bool = True) -> list:
    """Make every outgoing connection fail, except to loopback when ``allow_loopback``.

    Calling it again in the same test replaces the previous guard (it does not stack).
    Returns the list of blocked addresses (tests assert on it).
    """
    blocked: list = []
    real_connect = _REAL_CONNECT
    real_connect_ex = _REAL_CONNECT_EX
    real_create = _REAL_CREATE_CONNECTION

    def allowed(address) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        return allow_loopback and host in _LOOPBACK

    def connect(self, address):
        if not allowed(address):
            blocked.append(address)
            raise ConnectionRefusedError(f"socket guard: connection to {address!r} blocked by the test")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(address):
            blocked.append(address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not allowed(address):
            blocked.append(address)
            raise ConnectionRefusedError(f"socket guard: connection to {address!r} blocked by the test")
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return blocked


def random_variables(network, seed: int) -> dict:
    """Random variables with the network's names and shapes (numpy; no XLA compile)."""
    from labelfree_jax.models.fnet import random_variables as _random_variables

    return _random_variables(network, seed, kernels="he")
