"""The loopback Hub's state: users, repos, commits and content blobs, stored git-like.

File contents are blobs on disk addressed by sha256; every commit is a full snapshot (path -> blob) with
its parent; branches and tags are refs to commits, so any revision (branch, tag, commit sha) resolves to
its own historical content. Kept apart from the HTTP routes, which all read and change this one state.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SIZE_LIMIT = 10 * 1024 * 1024  # regular (non-LFS) files above this size are refused by the Hub


class HubError(Exception):
    """An error answer: HTTP status, the Hub's X-Error-Code, and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def timestamp() -> str:
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
            item["lfs"] = {
                "oid": self.sha256,
                "size": self.size,
                "pointerSize": len(lfs_pointer(self.sha256, self.size)),
            }
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
    def new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, Entry], title: str, message: str, author: str
    ) -> Commit:
        self._counter += 1
        oid = hashlib.sha1(
            f"{repo.id}\0{parent}\0{title}\0{self._counter}\0{sorted(files.items())}".encode()
        ).hexdigest()
        commit = Commit(oid, parent, files, title, message, author, timestamp())
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
