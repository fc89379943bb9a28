"""Account and repository routes: whoami, create, info (with `expand=evalResults`), refs, tags and commit history.

What a client asks before it reads or writes files: who the token belongs to, whether a repo exists
(and may be seen), which revisions it has.
"""

from __future__ import annotations

import hashlib
import json

from .cards import card_metadata
from .eval_results import read_eval_results
from .storage import TYPE_PREFIX, Hub, HubError, Repo, lfs_pointer, timestamp

# The .gitattributes the Hub puts in every new repo: these paths are stored with LFS.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.png *.jpg *.jpeg *.gif *.webp *.mp3 *.wav"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def whoami(hub: Hub, headers, **_):
    user = hub.user(headers)
    if user is None:
        raise HubError(401, "Invalid credentials in Authorization header", message_header=True)
    orgs = [{"type": "org", "name": org} for org in user.orgs]
    auth = {"type": "access_token", "accessToken": {"displayName": "test token", "role": user.role}}
    return (
        200,
        {},
        {"type": "user", "id": user.name, "name": user.name, "fullname": user.name, "orgs": orgs, "auth": auth},
    )


def create_repo(hub: Hub, headers, body, **_):
    user = hub.user(headers)
    if user is None:
        raise HubError(401, "You must be authenticated to create a repo", message_header=True)
    request = json.loads(body)
    repo_type = request.get("type") or "model"
    namespace = request.get("organization") or user.name
    if user.role != "write" or namespace not in (user.name, *user.orgs):
        raise HubError(403, "You don't have the rights to create a repo in this namespace", message_header=True)
    repo_id = f"{namespace}/{request['name']}"
    url = f"{hub.endpoint}/{TYPE_PREFIX[repo_type]}{repo_id}"
    if (repo_type, repo_id) in hub.repos:
        raise HubError(409, f"You already created this {repo_type} repo", url=url)
    private = request.get("visibility", "private" if request.get("private") else "public") == "private"
    repo = Repo(repo_type, repo_id, private, timestamp())
    files = {".gitattributes": hub.entry(".gitattributes", GITATTRIBUTES, {})}
    repo.branches["main"] = hub.new_commit(repo, None, files, "initial commit", "", user.name).oid
    hub.repos[(repo_type, repo_id)] = repo
    return 200, {}, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}


def info(hub: Hub, headers, query, type, repo_id, rev="main", **_):
    repo = hub.repo(type, repo_id, hub.user(headers))
    commit = repo.resolve(rev)
    siblings = []
    for path, entry in sorted(commit.files.items()):
        sibling = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
        if entry.lfs:
            sibling["lfs"] = {
                "size": entry.size,
                "sha256": entry.sha256,
                "pointerSize": len(lfs_pointer(entry.sha256, entry.size)),
            }
        siblings.append(sibling)
    card = (
        card_metadata(hub.read_blob(commit.files["README.md"].sha256).decode()) if "README.md" in commit.files else None
    )
    expanded = {"evalResults": read_eval_results(hub, commit)} if "evalResults" in query.get("expand", []) else {}
    return (
        200,
        {},
        expanded
        | {
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
        },
    )


def refs(hub: Hub, headers, type, repo_id, **_):
    repo = hub.repo(type, repo_id, hub.user(headers))

    def listing(items: dict[str, str], kind: str) -> list[dict[str, str]]:
        return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(items.items())]

    return (
        200,
        {},
        {
            "branches": listing(repo.branches, "heads"),
            "tags": listing(repo.tags, "tags"),
            "converts": [],
            "pullRequests": [],
        },
    )


def tag(hub: Hub, headers, body, type, repo_id, rev, **_):
    repo = hub.repo(type, repo_id, hub.user(headers), write=True)
    commit = repo.resolve(rev)
    name = json.loads(body)["tag"]
    if name in repo.tags or name in repo.branches:
        raise HubError(409, f"Tag {name} already exists")
    repo.tags[name] = commit.oid
    return 200, {}, {}


def commits(hub: Hub, headers, type, repo_id, rev, **_):
    repo = hub.repo(type, repo_id, hub.user(headers))
    history = repo.history(repo.resolve(rev).oid)
    return (
        200,
        {},
        [
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in history
        ],
    )
