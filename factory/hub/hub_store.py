"""The Hub store: `huggingface_hub.HfApi` against `HF_ENDPOINT`, with the token from the usual places.

The token (HF_TOKEN, else the login cache) is checked with `whoami` when the store opens, before
any upload: missing, rejected, read-only, or without rights on the namespace is a UserError that
names where the token came from, never the token. Every publish runs as one idempotent operation
(see factory.hub.store), retried with exponential backoff when the Hub answers 408/429/5xx or the
connection fails, a bounded number of times; a retry re-reads the repo first, so a commit whose
answer was lost is tagged, not committed twice.

With `hub.space` on, publishing a traces version that has the `before_rl` config also deploys the
compare Space `{namespace}/{recipe}-compare` (factory.compare.deploy_space) showing `traces@vN`
and `traces@vN#before_rl`; the client skips files the Space already holds, so deploying the same
sources again makes no commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory.errors import UserError, scrub
from factory.hub.content import RECORD_FILE, Target
from factory.hub.store import TAG, Files, Head, Store, T, Version
from factory.recipe import Recipe

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """A connection failure or a 408/429/5xx answer anywhere in the exception's chain."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.TransportError):
            return True
        response = getattr(current, "response", None)
        if isinstance(current, HfHubHTTPError) and response is not None and response.status_code in TRANSIENT_STATUS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(exc: BaseException) -> str:
    """One line for a log or an error; scrubbed, since a Hub answer may echo the request's headers."""
    return scrub(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}")


class HubStore(Store):
    name = "hub"

    def __init__(
        self,
        recipe: Recipe,
        *,
        log: Callable[[str], None] = print,
        retries: int = 4,
        backoff_s: float = 1.0,
    ):
        from huggingface_hub import HfApi

        self.api = HfApi()
        self.retries, self.backoff_s, self.log = retries, backoff_s, log
        user = self._run(self._whoami)
        namespaces = [user["name"], *(org["name"] for org in user.get("orgs", []))]
        namespace = recipe.hub.namespace or user["name"]
        if namespace not in namespaces:
            raise UserError(
                f"hub.namespace {namespace!r}: the Hugging Face token belongs to {user['name']!r}, who can publish "
                f"to {', '.join(namespaces)}; set --set hub.namespace=NAME"
            )
        super().__init__(recipe, namespace, log)
        self._ready: set[Target] = set()

    # ---------------------------------------------------------------------------------- token

    def _whoami(self) -> dict[str, Any]:
        from huggingface_hub import get_token
        from huggingface_hub.errors import HfHubHTTPError

        token = get_token()
        where = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the login cache (hf auth login)"
        if token is None:
            raise UserError(
                f"publishing to {self.api.endpoint} needs a Hugging Face token with write access: set HF_TOKEN "
                "or run `hf auth login`; without one, runs publish to the local store and `factory push` uploads later"
            )
        try:
            user = self.api.whoami(token=token)
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code in (401, 403):
                raise UserError(
                    f"the Hugging Face token from {where} was rejected by {self.api.endpoint} (invalid or expired); "
                    "nothing was uploaded"
                ) from None
            raise
        role = user.get("auth", {}).get("accessToken", {}).get("role")
        if role == "read":
            raise UserError(f"the Hugging Face token from {where} is read-only; publishing needs write access")
        return user

    # -------------------------------------------------------------------------------- retries

    def _run(self, operation: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                if attempt > self.retries:
                    raise UserError(
                        f"the Hub at {self.api.endpoint} kept failing after {attempt} attempts ({_describe(exc)}); "
                        "no incomplete version was tagged: run the same command again to finish"
                    ) from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                self.log(f"hub: {_describe(exc)}; retrying in {delay:g}s ({attempt}/{self.retries})")
                time.sleep(delay)

    # ----------------------------------------------------------------------------- primitives

    def _ensure_repo(self, target: Target) -> None:
        if target in self._ready:
            return
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.create_repo(
                target.repo, repo_type=target.repo_type, private=self.recipe.hub.private, exist_ok=True
            )
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code == 403:
                raise UserError(
                    f"the Hugging Face token cannot create or write {target.repo} on {self.api.endpoint}"
                ) from None
            raise
        self._ready.add(target)

    def _read(self, target: Target, commit: str, path: str) -> bytes | None:
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(
                self.api.hf_hub_download(target.repo, path, repo_type=target.repo_type, revision=commit)
            ).read_bytes()
        except EntryNotFoundError:
            return None

    def _versions(self, target: Target) -> list[Version]:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = self.api.list_repo_refs(target.repo, repo_type=target.repo_type)
        except RepositoryNotFoundError:
            return []
        found = []
        for ref in refs.tags:
            record = self._record(target, ref.target_commit) if TAG.fullmatch(ref.name) else None
            if record is not None:
                found.append(Version(ref.name, ref.target_commit, record))
        return sorted(found, key=lambda v: v.number)

    def _head(self, target: Target) -> Head:
        info = self.api.repo_info(target.repo, repo_type=target.repo_type, revision="main")
        files = sorted(s.rfilename for s in info.siblings or [])
        record = self._record(target, info.sha) if RECORD_FILE in files else None
        return Head(info.sha, files, record)

    def _commit(self, target: Target, files: Files, delete: list[str], parent: str | None, message: str) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=source if isinstance(source, bytes) else str(source))
            for path, source in sorted(files.items())
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in delete]
        info = self.api.create_commit(
            target.repo, operations, commit_message=message, repo_type=target.repo_type, parent_commit=parent
        )
        return info.oid

    def _tag(self, target: Target, tag: str, commit: str) -> None:
        self.api.create_tag(target.repo, tag=tag, revision=commit, repo_type=target.repo_type)

    def url(self, target: Target, tag: str) -> str:
        prefix = "datasets/" if target.repo_type == "dataset" else ""
        return f"{self.api.endpoint}/{prefix}{target.repo}/tree/{tag}"

    def source(self, target: Target, tag: str) -> str:
        return f"{target.repo}@{tag}"

    def space_url(self, repo: str) -> str | None:
        return f"{self.api.endpoint}/spaces/{repo}"

    def _deploy_space(self, repo: str, sources: list[str]) -> None:
        from factory.compare import deploy_space

        title = f"{self.recipe.name}: teacher before vs after RL"
        deploy_space(repo, sources, title=title, private=self.recipe.hub.private)
