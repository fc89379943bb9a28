"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that huggingface_hub and datasets use.

A real HTTP/1.1 server on 127.0.0.1, run in a thread, which the unmodified `huggingface_hub` and
`datasets` clients talk to through `HF_ENDPOINT`. Storage is git-like: file contents are blobs on
disk addressed by sha256, every commit is a full snapshot (path -> blob) with its parent, and
branches and tags are refs to commits, so any revision (branch, tag, commit sha) resolves to its
own historical content.

Endpoints (DESIGN.md, Offline): whoami-v2, repos/create, model/dataset info and revision info,
refs, tag, tree, paths-info, commits, preupload, commit (NDJSON), the LFS batch and upload,
resolve (HEAD/GET with X-Repo-Commit, ETag and Range) and validate-yaml. Errors carry
`X-Error-Code` as the Hub's do, which is what the client maps to its exception types. Card
metadata is validated on validate-yaml and on every commit of a README.md, with the Hub's rules
for the keys factory writes (license, tags, base_model, datasets, model-index, configs).

Faults: `inject()` makes the Nth matching request fail with a 5xx, drop its connection before
handling it, or handle it and drop the connection before answering (the response is lost).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import socket
import threading
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The .gitattributes the Hub puts in every new repo: these paths are stored with LFS.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.png *.jpg *.jpeg *.gif *.webp *.mp3 *.wav"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_SIZE_LIMIT = 10 * 1024 * 1024  # regular (non-LFS) files above this size are refused by the Hub
LICENSES = {
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0", "cc0-1.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "openrail", "llama3", "llama3.1",
    "gemma", "other", "unknown",
}  # fmt: skip
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class HubError(Exception):
    """An error answer: HTTP status, the Hub's X-Error-Code, and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """A file in a snapshot: its content blob and whether the repo stores it with LFS."""

    sha256: str
    size: int
    git_oid: str  # of the content, or of the LFS pointer file for LFS entries (as git does)
    lfs: bool

    def tree_json(self, path: str) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return item

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return TYPE_PREFIX[self.type] + self.id

    def resolve(self, revision: str) -> Commit:
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision in self.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def history(self, oid: str) -> list[Commit]:
        commits = []
        while oid is not None:
            commits.append(self.commits[oid])
            oid = self.commits[oid].parent
        return commits


@dataclass
class Fault:
    """What happens to the matching requests: 'error' (a 5xx), 'drop' (no answer), 'drop_after' (handled, no answer)."""

    pattern: re.Pattern
    kind: str
    status: int
    skip: int
    times: int

    def take(self, request_line: str) -> bool:
        if self.times <= 0 or not self.pattern.search(request_line):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        self.times -= 1
        return True


@dataclass
class User:
    name: str
    role: str  # "write" or "read"
    orgs: tuple[str, ...] = ()


class Hub:
    """The state of the loopback Hub: users, repos, blobs. All access happens under `lock`."""

    def __init__(self, storage: Path):
        self.storage = storage
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: dict[str, User] = {}
        self.lfs_objects: set[str] = set()
        self.pending_uploads: dict[str, int] = {}  # sha256 -> announced size
        self.endpoint = ""
        self._counter = 0

    # ---- blobs
    def blob_path(self, sha256: str) -> Path:
        return self.storage / "blobs" / sha256

    def put_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self.blob_path(sha256)
        if not path.exists():
            path.write_bytes(content)
        return sha256

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # ---- auth
    def user(self, headers) -> User | None:
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header", message_header=True)
        return self.tokens[token]

    def repo(self, repo_type: str, repo_id: str, user: User | None, write: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        namespace = repo_id.split("/")[0]
        allowed = user is not None and namespace in (user.name, *user.orgs)
        if repo is None or (repo.private and not allowed):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not (allowed and user.role == "write"):
            raise HubError(403, f"You don't have the rights to write to {repo_id}", message_header=True)
        return repo

    # ---- commits
    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], title: str, message: str, author: str) -> Commit:
        self._counter += 1
        oid = hashlib.sha1(f"{repo.id}\0{parent}\0{title}\0{self._counter}\0{sorted(files.items())}".encode()).hexdigest()
        commit = Commit(oid, parent, files, title, message, author, _now())
        repo.commits[oid] = commit
        return commit

    def entry(self, path: str, content: bytes, files: dict[str, Entry]) -> Entry:
        """Store `content` as the file `path` of a snapshot whose other files are `files`."""
        sha256 = self.put_blob(content)
        lfs = self.is_lfs_path(path, files) or len(content) > LFS_SIZE_LIMIT
        if lfs:
            self.lfs_objects.add(sha256)
        oid = git_blob_oid(lfs_pointer(sha256, len(content)) if lfs else content)
        return Entry(sha256, len(content), oid, lfs)

    def is_lfs_path(self, path: str, files: dict[str, Entry]) -> bool:
        """Whether the snapshot's .gitattributes tracks `path` with LFS, as git would decide."""
        attributes = files.get(".gitattributes")
        if attributes is None:
            return False
        lines = self.read_blob(attributes.sha256).decode().splitlines()
        patterns = [line.split()[0] for line in lines if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(path if "/" in pattern else name, pattern) for pattern in patterns)


# ------------------------------------------------------------------------------------- validation


def card_metadata(content: str) -> dict[str, Any] | None:
    """The YAML front matter of a README.md, or None when it has none. Raises HubError on bad YAML."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise HubError(400, f"Invalid YAML in metadata: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HubError(400, "Metadata must be a YAML mapping")
    return data


def validate_metadata(data: dict[str, Any], repo_type: str) -> list[str]:
    """The Hub's checks for the metadata keys factory writes; returns error messages."""
    errors: list[str] = []

    def str_list(key: str, value: Any) -> list[str]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            errors.append(f'"{key}" must be a string or an array of strings')
            return []
        return values

    for lic in str_list("license", data.get("license", [])):
        if lic not in LICENSES:
            errors.append(f'"license" must be one of the Hub licenses, got "{lic}"')
    str_list("tags", data.get("tags", []))
    for key in ("base_model", "datasets"):
        for value in str_list(key, data.get(key, [])):
            if not REPO_ID.match(value):
                errors.append(f'"{key}" must be Hub repo ids, got "{value}"')
    if repo_type == "model" and "model-index" in data:
        errors += _model_index_errors(data["model-index"])
    if repo_type == "dataset":
        errors += _configs_errors(data.get("configs", []))
    return errors


def _model_index_errors(model_index: Any) -> list[str]:
    if not isinstance(model_index, list):
        return ['"model-index" must be an array']
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in model.get("results") or []:
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append('"model-index[].results[].task.type" is required')
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append('"model-index[].results[].dataset" needs "type" and "name" strings')
            if not isinstance(metrics, list) or not metrics:
                errors.append('"model-index[].results[].metrics" must be a non-empty array')
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    errors.append('"model-index[].results[].metrics[]" needs a "type" string and a "value"')
    return errors


def _configs_errors(configs: Any) -> list[str]:
    if not isinstance(configs, list):
        return ['"configs" must be an array']
    errors, names = [], []
    for config in configs:
        name = config.get("config_name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            errors.append('"configs[].config_name" must be a string')
            continue
        names.append(name)
        files = config.get("data_files")
        items = [files] if isinstance(files, str) else files
        ok = isinstance(items, list) and all(
            isinstance(i, str) or (isinstance(i, dict) and isinstance(i.get("split"), str) and "path" in i) for i in items
        )
        if not ok:
            errors.append(f'"configs[{name}].data_files" must be paths or {{split, path}} items')
    if len(names) != len(set(names)):
        errors.append('"configs[].config_name" must be unique')
    return errors


def check_card(content: str, repo_type: str) -> None:
    metadata = card_metadata(content)
    errors = validate_metadata(metadata, repo_type) if metadata else []
    if errors:
        raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors), errors=[{"message": e} for e in errors])


# ---------------------------------------------------------------------------------------- routes


class Router:
    """Maps (method, path) to a Hub operation and returns (status, headers, body)."""

    def __init__(self, hub: Hub):
        self.hub = hub
        repo = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
        api = rf"/api/(?P<type>models|datasets|spaces)/{repo}"
        self.routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", rf"{api}", self.info),
            ("GET", rf"{api}/revision/(?P<rev>[^/]+)", self.info),
            ("GET", rf"{api}/refs", self.refs),
            ("GET", rf"{api}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self.tree),
            ("POST", rf"{api}/paths-info/(?P<rev>[^/]+)", self.paths_info),
            ("GET", rf"{api}/commits/(?P<rev>[^/]+)", self.commits),
            ("POST", rf"{api}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"{api}/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", rf"{api}/tag/(?P<rev>[^/]+)", self.tag),
            ("POST", rf"/(?:(?P<type>datasets|spaces)/)?{repo}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("HEAD", rf"/(?:(?P<type>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ("GET", rf"/(?:(?P<type>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
        ]

    def handle(self, method: str, raw_path: str, headers, body: bytes):
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        for route_method, pattern, handler in self.routes:
            match = re.fullmatch(pattern, parts.path)
            if route_method == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if "type" in args:
                    args["type"] = args["type"].rstrip("s")
                if "ns" in args:
                    args["repo_id"] = f"{args.pop('ns')}/{args.pop('name')}"
                with self.hub.lock:
                    return handler(headers=headers, body=body, query=query, method=method, **args)
        raise HubError(404, f"no route for {method} {parts.path}")

    # ---- account
    def whoami(self, headers, **_):
        user = self.hub.user(headers)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header", message_header=True)
        orgs = [{"type": "org", "name": org} for org in user.orgs]
        auth = {"type": "access_token", "accessToken": {"displayName": "test token", "role": user.role}}
        return 200, {}, {"type": "user", "id": user.name, "name": user.name, "fullname": user.name, "orgs": orgs, "auth": auth}

    def validate_yaml(self, body, **_):
        request = json.loads(body)
        check_card(request["content"], request.get("repoType", "model"))
        return 200, {}, {"errors": [], "warnings": []}

    # ---- repos
    def create_repo(self, headers, body, **_):
        user = self.hub.user(headers)
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo", message_header=True)
        request = json.loads(body)
        repo_type = request.get("type") or "model"
        namespace = request.get("organization") or user.name
        if user.role != "write" or namespace not in (user.name, *user.orgs):
            raise HubError(403, "You don't have the rights to create a repo in this namespace", message_header=True)
        repo_id = f"{namespace}/{request['name']}"
        url = f"{self.hub.endpoint}/{TYPE_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        private = request.get("visibility", "private" if request.get("private") else "public") == "private"
        repo = Repo(repo_type, repo_id, private, _now())
        files = {".gitattributes": self.hub.entry(".gitattributes", GITATTRIBUTES, {})}
        repo.branches["main"] = self.hub.new_commit(repo, None, files, "initial commit", "", user.name).oid
        self.hub.repos[(repo_type, repo_id)] = repo
        return 200, {}, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}

    def info(self, headers, type, repo_id, rev="main", **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers))
        commit = repo.resolve(rev)
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
            if entry.lfs:
                sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(sibling)
        card = card_metadata(self.hub.read_blob(commit.files["README.md"].sha256).decode()) if "README.md" in commit.files else None
        return 200, {}, {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": (card or {}).get("tags", []),
            "cardData": card,
            "siblings": siblings,
        }

    def refs(self, headers, type, repo_id, **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers))

        def refs(items: dict[str, str], kind: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(items.items())]

        return 200, {}, {"branches": refs(repo.branches, "heads"), "tags": refs(repo.tags, "tags"), "converts": [], "pullRequests": []}

    def tag(self, headers, body, type, repo_id, rev, **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers), write=True)
        commit = repo.resolve(rev)
        name = json.loads(body)["tag"]
        if name in repo.tags or name in repo.branches:
            raise HubError(409, f"Tag {name} already exists")
        repo.tags[name] = commit.oid
        return 200, {}, {}

    def commits(self, headers, type, repo_id, rev, **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers))
        history = repo.history(repo.resolve(rev).oid)
        return 200, {}, [
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date} for c in history
        ]

    # ---- listing
    def tree(self, headers, query, type, repo_id, rev, path="", **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers))
        commit = repo.resolve(rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist", "EntryNotFound", repo_commit=commit.oid)
        items: dict[str, dict[str, Any]] = {}
        for file_path, entry in commit.files.items():
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            folders = range(1, len(parts)) if recursive else range(1, min(len(parts), 2))
            for level in folders:
                folder = prefix + "/".join(parts[:level])
                items[folder] = _folder_json(commit, folder)
            if recursive or len(parts) == 1:
                items[file_path] = entry.tree_json(file_path)
        return 200, {}, [items[k] for k in sorted(items)]

    def paths_info(self, headers, body, type, repo_id, rev, **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers))
        commit = repo.resolve(rev)
        found = []
        for path in parse_qs(body.decode()).get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                found.append(commit.files[path].tree_json(path))
            elif any(p.startswith(path + "/") for p in commit.files):
                found.append(_folder_json(commit, path))
        return 200, {}, found

    # ---- uploads
    def preupload(self, headers, body, type, repo_id, rev, **_):
        repo = self.hub.repo(type, repo_id, self.hub.user(headers), write=True)
        commit = repo.resolve(rev)
        answers = []
        for item in json.loads(body)["files"]:
            path = item["path"]
            lfs = self.hub.is_lfs_path(path, commit.files) or item["size"] > LFS_SIZE_LIMIT
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {}, {"files": answers, "commitOid": commit.oid}

    def lfs_batch(self, headers, body, repo_id, type=None, **_):
        self.hub.repo(type or "model", repo_id, self.hub.user(headers), write=True)
        request = json.loads(body)
        objects = []
        for obj in request["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                self.hub.pending_uploads[obj["oid"]] = obj["size"]
                item["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(item)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def lfs_upload(self, body, oid, **_):
        if oid not in self.hub.pending_uploads:
            raise HubError(403, "upload not announced through the LFS batch API")
        if hashlib.sha256(body).hexdigest() != oid or len(body) != self.hub.pending_uploads[oid]:
            raise HubError(400, "uploaded content does not match its oid and size")
        self.hub.put_blob(body)
        self.hub.lfs_objects.add(oid)
        del self.hub.pending_uploads[oid]
        return 200, {}, b""

    def commit(self, headers, body, type, repo_id, rev, **_):
        user = self.hub.user(headers)
        repo = self.hub.repo(type, repo_id, user, write=True)
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = repo.commits[repo.branches[rev]]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = self.hub.entry(value["path"], content, files)
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({value['path']})")
                size = self.hub.blob_path(value["oid"]).stat().st_size
                files[value["path"]] = Entry(value["oid"], size, git_blob_oid(lfs_pointer(value["oid"], size)), True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(folder)}
        if "README.md" in files and files["README.md"] is not head.files.get("README.md"):
            check_card(self.hub.read_blob(files["README.md"].sha256).decode(), repo.type)
        commit = self.hub.new_commit(repo, head.oid, files, header["summary"], header.get("description", ""), user.name)
        repo.branches[rev] = commit.oid
        url = f"{self.hub.endpoint}/{repo.url_path}/commit/{commit.oid}"
        return 200, {}, {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}

    # ---- downloads
    def resolve(self, headers, method, repo_id, rev, path, type=None, **_):
        repo = self.hub.repo(type or "model", repo_id, self.hub.user(headers))
        commit = repo.resolve(rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", repo_commit=commit.oid)
        content = self.hub.read_blob(entry.sha256)
        out = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            out.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status, payload = 200, content
        byte_range = headers.get("Range")
        if byte_range:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
            if not match or (not match.group(1) and not match.group(2)):
                raise HubError(416, f"unsupported range {byte_range}")
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(content) - 1
            else:
                start, end = max(len(content) - int(match.group(2)), 0), len(content) - 1
            if start >= len(content):
                raise HubError(416, "range not satisfiable", content_range=f"bytes */{len(content)}")
            end = min(end, len(content) - 1)
            status, payload = 206, content[start : end + 1]
            out["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return status, out, payload


def _folder_json(commit: Commit, folder: str) -> dict[str, Any]:
    listing = sorted((p, e.git_oid) for p, e in commit.files.items() if p.startswith(folder + "/"))
    return {"type": "directory", "oid": hashlib.sha1(repr(listing).encode()).hexdigest(), "size": 0, "path": folder}


# ---------------------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Quiet: the request log is kept on the HubServer instead of stderr."""

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self, method: str) -> None:
        owner: HubServer = self.server.owner
        body = self._read_body()
        fault = owner._take_fault(f"{method} {self.path}")
        if fault is not None and fault.kind == "drop":
            return self._drop(method)
        if fault is not None and fault.kind == "error":
            return self._send(method, fault.status, {}, {"error": "injected server error"})
        try:
            status, headers, payload = owner.router.handle(method, self.path, self.headers, body)
        except HubError as exc:
            status, headers, payload = exc.status, {}, {"error": str(exc)}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            if exc.extra.get("message_header"):
                headers["X-Error-Message"] = str(exc)
            if exc.extra.get("repo_commit"):
                headers["X-Repo-Commit"] = exc.extra["repo_commit"]
            if exc.extra.get("content_range"):
                headers["Content-Range"] = exc.extra["content_range"]
            for key in ("url", "errors"):
                if key in exc.extra:
                    payload[key] = exc.extra[key]
        except Exception as exc:  # a bug of this server: answer 500 and keep it for the fixture to report
            owner.crashes.append(f"{method} {self.path}: {traceback.format_exc()}")
            status, headers, payload = 500, {}, {"error": f"loopback hub bug: {exc!r}"}
        if fault is not None and fault.kind == "drop_after":
            return self._drop(method)
        self._send(method, status, headers, payload)

    def _send(self, method: str, status: int, headers: dict[str, str], payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not isinstance(payload, bytes):
            headers.setdefault("Content-Type", "application/json")
        self.server.owner._log(method, self.path, status)  # before answering: the client may look right after
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _drop(self, method: str) -> None:
        self.server.owner._log(method, self.path, None)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HubServer


class HubServer:
    """The loopback Hub running in a thread. `endpoint` goes into HF_ENDPOINT, `token` into HF_TOKEN."""

    def __init__(self, storage: Path, user: str = "factory-tester", orgs: tuple[str, ...] = ("factory-org",)):
        self.hub = Hub(storage)
        self.router = Router(self.hub)
        self.token = "hf_loopback" + hashlib.sha256(str(storage).encode()).hexdigest()[:24]
        self.read_token = self.token + "read"
        self.user = user
        self.hub.tokens[self.token] = User(user, "write", orgs)
        self.hub.tokens[self.read_token] = User(user, "read", orgs)
        self.requests: list[tuple[str, str, int | None]] = []  # (method, path, status); None = dropped
        self.crashes: list[str] = []  # tracebacks of this server's own bugs
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.hub.endpoint = self.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, match: str, kind: str = "error", *, nth: int = 1, times: int = 1, status: int = 500) -> None:
        """From the `nth` request matching the regex `match` ("METHOD /path?query") on, fault `times` requests."""
        if kind not in ("error", "drop", "drop_after"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._faults_lock:
            self._faults.append(Fault(re.compile(match), kind, status, nth - 1, times))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, request_line: str) -> Fault | None:
        with self._faults_lock:
            fired = [f for f in self._faults if f.take(request_line)]  # each fault counts every matching request
        return fired[0] if fired else None

    def _log(self, method: str, path: str, status: int | None) -> None:
        with self._faults_lock:
            self.requests.append((method, path, status))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """Direct access to a repo's commits and refs, for assertions."""
        return self.hub.repos[(repo_type, repo_id)]
