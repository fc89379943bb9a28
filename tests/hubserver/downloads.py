"""Read routes: the tree listing, paths-info, and resolve (HEAD/GET with X-Repo-Commit, ETag and Range).

What snapshot_download, hf_hub_download and load_dataset use to find and fetch files at a revision.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qs

from .storage import Commit, Hub, HubError


def tree(hub: Hub, headers, query, type, repo_id, rev, path="", **_):
    repo = hub.repo(type, repo_id, hub.user(headers))
    commit = repo.resolve(rev)
    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in commit.files):
        raise HubError(404, f"{path} does not exist", "EntryNotFound", repo_commit=commit.oid)
    items: dict[str, dict[str, Any]] = {}
    for file_path, entry in commit.files.items():
        if not file_path.startswith(prefix):
            continue
        parts = file_path[len(prefix) :].split("/")
        folders = range(1, len(parts)) if recursive else range(1, min(len(parts), 2))
        for level in folders:
            folder = prefix + "/".join(parts[:level])
            items[folder] = _folder_json(commit, folder)
        if recursive or len(parts) == 1:
            items[file_path] = entry.tree_json(file_path)
    return 200, {}, [items[k] for k in sorted(items)]


def paths_info(hub: Hub, headers, body, type, repo_id, rev, **_):
    repo = hub.repo(type, repo_id, hub.user(headers))
    commit = repo.resolve(rev)
    found = []
    for path in parse_qs(body.decode()).get("paths", []):
        path = path.strip("/")
        if path in commit.files:
            found.append(commit.files[path].tree_json(path))
        elif any(p.startswith(path + "/") for p in commit.files):
            found.append(_folder_json(commit, path))
    return 200, {}, found


def resolve(hub: Hub, headers, method, repo_id, rev, path, type=None, **_):
    repo = hub.repo(type or "model", repo_id, hub.user(headers))
    commit = repo.resolve(rev)
    entry = commit.files.get(path)
    if entry is None:
        raise HubError(404, "Entry not found", "EntryNotFound", repo_commit=commit.oid)
    content = hub.read_blob(entry.sha256)
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
