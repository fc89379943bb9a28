"""Upload routes: preupload, the LFS batch API and its upload target, and the NDJSON commit.

The two-step LFS flow (announce through the batch API, then PUT the content, then name it in a commit)
is what huggingface_hub runs for weights and parquet; regular files travel base64 in the commit itself.
"""

from __future__ import annotations

import base64
import hashlib
import json

from .cards import check_card
from .storage import LFS_SIZE_LIMIT, Entry, Hub, HubError, git_blob_oid, lfs_pointer


def preupload(hub: Hub, headers, body, type, repo_id, rev, **_):
    repo = hub.repo(type, repo_id, hub.user(headers), write=True)
    commit = repo.resolve(rev)
    answers = []
    for item in json.loads(body)["files"]:
        path = item["path"]
        lfs = hub.is_lfs_path(path, commit.files) or item["size"] > LFS_SIZE_LIMIT
        existing = commit.files.get(path)
        oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
        answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return 200, {}, {"files": answers, "commitOid": commit.oid}


def lfs_batch(hub: Hub, headers, body, repo_id, type=None, **_):
    hub.repo(type or "model", repo_id, hub.user(headers), write=True)
    request = json.loads(body)
    objects = []
    for obj in request["objects"]:
        item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if obj["oid"] not in hub.lfs_objects:
            hub.pending_uploads[obj["oid"]] = obj["size"]
            item["actions"] = {"upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
        objects.append(item)
    return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}


def lfs_upload(hub: Hub, body, oid, **_):
    if oid not in hub.pending_uploads:
        raise HubError(403, "upload not announced through the LFS batch API")
    if hashlib.sha256(body).hexdigest() != oid or len(body) != hub.pending_uploads[oid]:
        raise HubError(400, "uploaded content does not match its oid and size")
    hub.put_blob(body)
    hub.lfs_objects.add(oid)
    del hub.pending_uploads[oid]
    return 200, {}, b""


def commit(hub: Hub, headers, body, type, repo_id, rev, **_):
    user = hub.user(headers)
    repo = hub.repo(type, repo_id, user, write=True)
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
            files[value["path"]] = hub.entry(value["path"], content, files)
        elif key == "lfsFile":
            if value["oid"] not in hub.lfs_objects:
                raise HubError(
                    422,
                    f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({value['path']})",
                )
            size = hub.blob_path(value["oid"]).stat().st_size
            files[value["path"]] = Entry(value["oid"], size, git_blob_oid(lfs_pointer(value["oid"], size)), True)
        elif key == "deletedFile":
            if files.pop(value["path"], None) is None:
                raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            files = {p: e for p, e in files.items() if not p.startswith(folder)}
    if "README.md" in files and files["README.md"] is not head.files.get("README.md"):
        check_card(hub.read_blob(files["README.md"].sha256).decode(), repo.type)
    commit = hub.new_commit(repo, head.oid, files, header["summary"], header.get("description", ""), user.name)
    repo.branches[rev] = commit.oid
    url = f"{hub.endpoint}/{repo.url_path}/commit/{commit.oid}"
    return (
        200,
        {},
        {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None},
    )
