"""Stores: one publishing procedure over two backends, the Hub and a local folder with the same content.

A publish is idempotent and resumable. It reads what the repo already holds (each `vN` tag's
`factory.json`, and main's), and then:

- a tag whose record has this fingerprint exists: nothing to do (`created=False`);
- main's record has this fingerprint but no tag points at it (a publish interrupted between
  commit and tag): tag that commit with the tag its record names;
- otherwise: one commit with the files, card and record, then the next tag `vN+1`.

The tag is created only after the whole commit succeeded, so a version is either complete or absent.
Lineage is looked up the same way: each upstream artifact input is found in its role's repo by
fingerprint, so the card links the versions this store actually holds, whichever run published them.

A report (the evaluate stage) is not its own repo: it becomes a version of the student repo whose
commit adds `eval/` and `.eval_results/` (the scores the Hub reads) and re-renders the card with the
`model-index`, on top of the student version it evaluated (so the newest student tag carries both the
weights and their evaluation); its lineage is that student's. The distilled baselines it also scores
have repos of their own: each gets its `.eval_results/` on main, on top of the version evaluated (no new
tag: same weights), when main still holds that version. An artifact whose metrics say `skipped` (a
baseline stage that found nothing to train on) is not published.

A traces version with a `before_rl` config is comparable before vs after RL: its card says how
(`factory compare` on the version, and the compare Space's link where the store holds Spaces), and
the Hub store, with `hub.space` on, deploys that Space after the version is tagged (see hub_store).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from factory.artifacts import ArtifactMeta, is_complete, read_meta
from factory.errors import UserError
from factory.hub.benchmarks import BenchmarkPublishing
from factory.hub.cards import dataset_card, model_card, plot_paths
from factory.hub.content import (
    BEFORE_RL,
    CARD_FILE,
    EVAL_DIR,
    EVAL_RESULTS_DIR,
    RECORD_FILE,
    REPO_TYPES,
    SKIPPED,
    Target,
    artifact_files,
    data_layout,
    make_record,
    next_tag,
    owned,
    space_repo,
    target_for,
)
from factory.hub.eval_results import report_results
from factory.recipe import Recipe

TAG = re.compile(r"v(\d+)")
KEEP = {".gitattributes"}  # files of the repo itself, never replaced by a publish
T = TypeVar("T")
Files = dict[str, "Path | bytes"]


@dataclass(frozen=True)
class PublishedRef:
    """Where an artifact was published: repo, tag, commit, browsable URL; `created` False if it already was."""

    repo: str
    revision: str
    commit: str
    url: str
    created: bool
    repo_type: str = "model"
    store: str = "hub"
    space: str | None = None  # URL of the compare Space showing this version (traces before vs after RL)

    def to_manifest(self) -> dict[str, str]:
        """The run manifest's `published` entry."""
        entry = {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "url": self.url,
            "repo_type": self.repo_type,
            "store": self.store,
        }
        return entry | ({"space": self.space} if self.space else {})


@dataclass(frozen=True)
class Version:
    """A tag of a repo and the `factory.json` record at its commit."""

    tag: str
    commit: str
    record: dict[str, Any]

    @property
    def number(self) -> int:
        return int(self.tag[1:])


@dataclass(frozen=True)
class Head:
    """The tip of main: its commit, its files and its record (None for a repo factory never wrote)."""

    commit: str | None
    files: list[str]
    record: dict[str, Any] | None


class Store(BenchmarkPublishing):
    """The publishing procedure; subclasses supply the repo primitives."""

    name: ClassVar[str]

    def __init__(self, recipe: Recipe, namespace: str, log: Callable[[str], None] = print):
        self.recipe = recipe
        self.namespace = namespace
        self.log = log
        self._benchmarks: dict[str, str] | None = None  # factory.hub.benchmarks, published on first use

    # ---------------------------------------------------------------------------- primitives

    def _ensure_repo(self, target: Target) -> None:
        raise NotImplementedError

    def _versions(self, target: Target) -> list[Version]:
        """The `vN` tags with a factory record, oldest first; empty when the repo does not exist."""
        raise NotImplementedError

    def _head(self, target: Target) -> Head:
        raise NotImplementedError

    def _commit(self, target: Target, files: Files, delete: list[str], parent: str | None, message: str) -> str:
        """One commit on main on top of `parent`, adding `files` and removing `delete`; returns its id."""
        raise NotImplementedError

    def _tag(self, target: Target, tag: str, commit: str) -> None:
        raise NotImplementedError

    def _read(self, target: Target, commit: str, path: str) -> bytes | None:
        """A file's content at a commit; None when the commit has no such file."""
        raise NotImplementedError

    def _record(self, target: Target, commit: str) -> dict[str, Any] | None:
        """The factory.json record at a commit; None without one."""
        content = self._read(target, commit, RECORD_FILE)
        return json.loads(content) if content is not None else None

    def url(self, target: Target, tag: str) -> str:
        raise NotImplementedError

    def source(self, target: Target, tag: str) -> str:
        """How `factory compare` (and `load_dataset`) names this version of a dataset repo."""
        raise NotImplementedError

    def space_url(self, repo: str) -> str | None:
        """The page of a Space repo; None for a store that holds no Spaces."""
        return None

    def _deploy_space(self, repo: str, sources: list[str]) -> None:
        """Create or update the compare Space `repo` showing `sources` (stores that hold Spaces)."""
        raise NotImplementedError

    def _run(self, operation: Callable[[], T]) -> T:
        """Run one idempotent operation; the Hub store retries it on transient errors."""
        return operation()

    # ----------------------------------------------------------------------------- publishing

    def target(self, role: str) -> Target:
        return target_for(self.namespace, self.recipe.name, role)

    def publish(self, artifact_dir: Path) -> PublishedRef | None:
        """Publish one complete artifact folder; None for a report whose student this store does not hold."""
        artifact_dir = Path(artifact_dir)
        meta = read_meta(artifact_dir)
        if meta.metrics.get(SKIPPED):  # a baseline stage with nothing trained (factory.stages.baselines)
            self.log(f"{meta.stage}: not published, nothing was trained: {meta.metrics[SKIPPED]}")
            return None
        attempted: set[str] = set()
        ref = self._run(lambda: self._publish_once(meta, artifact_dir, attempted))
        if ref is None:
            return None
        state = "published" if ref.created else "already published"
        self.log(f"{meta.stage}: {state} {ref.repo}@{ref.revision} ({ref.url})")
        if meta.kind == "report":
            self._publish_baseline_results(meta, artifact_dir, ref)
        if meta.kind != "dataset":
            return ref
        comparison = self._comparison(self.target(meta.role), ref.revision, artifact_files(meta, artifact_dir))
        if comparison is None or comparison["space"] is None:
            return ref
        space, sources = comparison["space"], comparison["sources"]
        self._run(lambda: self._deploy_space(space["repo"], sources))  # the same sources again: no new commit
        self.log(f"compare Space {space['repo']}: {' vs '.join(sources)} ({space['url']})")
        return replace(ref, space=space["url"])

    def _comparison(self, target: Target, tag: str, files: dict[str, Any]) -> dict[str, Any] | None:
        """For a traces version with the `before_rl` config: the two sources that compare it (after RL
        first) and the compare Space showing them ({repo, url}, None when the store holds no Spaces or
        `hub.space` is off); None for a version without it."""
        if BEFORE_RL not in data_layout(files):
            return None
        version = self.source(target, tag)
        repo = space_repo(self.namespace, self.recipe.name)
        url = self.space_url(repo) if self.recipe.hub.space else None
        return {"sources": [version, f"{version}#{BEFORE_RL}"], "space": {"repo": repo, "url": url} if url else None}

    def _publish_once(self, meta: ArtifactMeta, artifact_dir: Path, attempted: set[str]) -> PublishedRef | None:
        lineage, upstream = self._lineage(meta)
        if meta.kind == "report":
            if "student" not in upstream:
                self.log(f"{meta.stage}: report not published, its student is not published in the {self.name} store")
                return None
            target = upstream["student"][0]
        else:
            target = self.target(meta.role)
        self._ensure_repo(target)
        versions = self._versions(target)
        for version in versions:
            if version.record.get("fingerprint") == meta.fingerprint:
                return self._ref(target, version.tag, version.commit, created=version.tag in attempted)
        head = self._head(target)
        if head.record is not None and head.record.get("fingerprint") == meta.fingerprint:
            tag, commit = head.record["tag"], head.commit  # committed by an interrupted publish, never tagged
        else:
            tag = next_tag(v.number for v in versions)
            files = self._contents(meta, artifact_dir, target, tag, lineage, upstream.get("student"), head)
            delete = [p for p in head.files if p not in KEEP and p not in files and owned(p, meta.kind)]
            message = f"{meta.stage}: {tag} (fingerprint {meta.fingerprint[:12]})"
            commit = self._commit(target, files, delete, head.commit, message)
        attempted.add(tag)
        self._tag(target, tag, commit)
        return self._ref(target, tag, commit, created=True)

    def _publish_baseline_results(self, meta: ArtifactMeta, artifact_dir: Path, report: PublishedRef) -> None:
        """Each published distilled baseline the report scored: its `.eval_results/` on its repo's main."""
        files = artifact_files(meta, artifact_dir)
        for ref in meta.inputs:
            if ref.source is not None or ref.role == "student" or ref.role not in REPO_TYPES:
                continue
            target = self.target(ref.role)
            version = self._find(target, ref.fingerprint)
            if version is None:
                continue
            scores = meta.metrics.get("baselines", {}).get(version.record["metrics"].get("baseline"), {})
            results = report_results(
                meta, files, self.recipe, report.url, scores, self.namespace, self.benchmark_commits()
            )
            if results:
                self._run(lambda t=target, v=version, r=results: self._attach(t, v, r))

    def _attach(self, target: Target, version: Version, files: dict[str, bytes]) -> None:
        """Commit `files` on main on top of `version` unless main already holds them; skipped (logged)
        when main has moved to another version, whose weights these scores are not."""
        head = self._head(target)
        if head.record is None or head.record.get("fingerprint") != version.record["fingerprint"]:
            self.log(f"{target.repo}: main is no longer {version.tag}, the version evaluated; its scores not written")
            return
        if all(self._read(target, head.commit, path) == content for path, content in files.items()):
            return
        stale = [p for p in head.files if p.startswith(EVAL_RESULTS_DIR) and p not in files]
        self._commit(target, dict(files), stale, head.commit, f"evaluate: scores of {version.tag}")
        self.log(f"evaluate: scores of {target.repo}@{version.tag} in {EVAL_RESULTS_DIR} on main")

    def _ref(self, target: Target, tag: str, commit: str, created: bool) -> PublishedRef:
        return PublishedRef(target.repo, tag, commit, self.url(target, tag), created, target.repo_type, self.name)

    def _find(self, target: Target, fingerprint: str) -> Version | None:
        return next((v for v in self._versions(target) if v.record.get("fingerprint") == fingerprint), None)

    def _lineage(self, meta: ArtifactMeta) -> tuple[list[dict[str, Any]], dict[str, tuple[Target, Version]]]:
        """The upstream chain (oldest first) of an artifact, and its published artifact inputs by role."""
        chain: list[dict[str, Any]] = []
        upstream: dict[str, tuple[Target, Version]] = {}
        for ref in meta.inputs:
            if ref.source is not None or ref.role not in REPO_TYPES:
                continue  # a base model or dataset, not an artifact of this recipe
            if meta.kind == "report" and ref.role != "student":
                continue  # a report's lineage is its student's; the baselines it scores are not its ancestors
            target = self.target(ref.role)
            version = self._find(target, ref.fingerprint)
            if version is None:
                path = Path(ref.path) if ref.path else None
                stage = read_meta(path).stage if path is not None and is_complete(path) else ref.role
                chain.append({"role": ref.role, "stage": stage, "fingerprint": ref.fingerprint, "repo": None})
                continue
            upstream[ref.role] = (target, version)
            for entry in [*version.record.get("lineage", []), self._entry(target, version)]:
                if entry not in chain:
                    chain.append(entry)
        return chain, upstream

    def _entry(self, target: Target, version: Version) -> dict[str, Any]:
        return {
            "role": version.record["role"],
            "stage": version.record["stage"],
            "fingerprint": version.record["fingerprint"],
            "repo": target.repo,
            "repo_type": target.repo_type,
            "revision": version.tag,
            "commit": version.commit,
            "url": self.url(target, version.tag),
        }

    def _contents(
        self,
        meta: ArtifactMeta,
        artifact_dir: Path,
        target: Target,
        tag: str,
        lineage: list[dict[str, Any]],
        student: tuple[Target, Version] | None,
        head: Head,
    ) -> Files:
        """Every file the new version writes: the artifact's files, its record and its card."""
        files: Files = dict(artifact_files(meta, artifact_dir))
        if meta.kind == "report":
            student_target, student_version = student
            evaluated = student_version.record["fingerprint"]
            current = head.record or {}
            if evaluated not in (current.get("fingerprint"), current.get("evaluates", {}).get("fingerprint")):
                raise UserError(
                    f"{target.repo}: main no longer holds {target.repo}@{student_version.tag}, the student this report "
                    f"evaluated; publish that student again (factory push) before its report"
                )
            record = make_record(meta, tag, lineage, evaluates=self._entry(student_target, student_version))
            evaluation = (record, plot_paths(files, EVAL_DIR))
            card = model_card(student_version.record, self.recipe, target, plot_paths(head.files), evaluation)
            url, published = self.url(target, tag), self.benchmark_commits()
            files.update(report_results(meta, files, self.recipe, url, meta.metrics, self.namespace, published))
        else:
            record = make_record(meta, tag, lineage, evaluates=None)
            if meta.kind == "model":
                card = model_card(record, self.recipe, target, plot_paths(files))
            else:
                comparison = self._comparison(target, tag, files)
                card = dataset_card(record, self.recipe, target, plot_paths(files), files, comparison)
        files[RECORD_FILE] = json.dumps(record, indent=2, sort_keys=True, default=str).encode() + b"\n"
        files[CARD_FILE] = card.encode()
        return files


# ----------------------------------------------------------------------------------- local folder


class LocalStore(Store):
    """The offline store: `root/{models,datasets}/{namespace}/{repo}/` with `snapshots/<commit>/`,
    a `main` link to the newest snapshot and one `vN` link per tag, each snapshot holding exactly
    what the Hub repo holds at that tag. Snapshots hard-link the artifact files (no copies)."""

    name = "local"

    def __init__(self, recipe: Recipe, root: Path, log: Callable[[str], None] = print):
        super().__init__(recipe, recipe.hub.namespace or "local", log)
        self.root = Path(root)

    def _dir(self, target: Target) -> Path:
        return self.root / f"{target.repo_type}s" / target.repo

    def _ensure_repo(self, target: Target) -> None:
        (self._dir(target) / "snapshots").mkdir(parents=True, exist_ok=True)

    def _versions(self, target: Target) -> list[Version]:
        folder = self._dir(target)
        found = []
        for link in folder.iterdir() if folder.is_dir() else []:
            record = (
                self._record(target, link.resolve().name) if TAG.fullmatch(link.name) and link.is_symlink() else None
            )
            if record is not None:
                found.append(Version(link.name, link.resolve().name, record))
        return sorted(found, key=lambda v: v.number)

    def _head(self, target: Target) -> Head:
        main = self._dir(target) / "main"
        if not main.exists():
            return Head(None, [], None)
        snapshot = main.resolve()
        files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
        return Head(snapshot.name, files, self._record(target, snapshot.name))

    def _commit(self, target: Target, files: Files, delete: list[str], parent: str | None, message: str) -> str:
        snapshots = self._dir(target) / "snapshots"
        incoming = Path(tempfile.mkdtemp(dir=snapshots, prefix=".incoming-"))
        try:
            if parent is not None:
                base = snapshots / parent
                for path in base.rglob("*"):
                    relative = path.relative_to(base).as_posix()
                    if path.is_file() and relative not in files and relative not in delete:
                        _link(path, incoming / relative)
            for relative, source in files.items():
                destination = incoming / relative
                if isinstance(source, bytes):
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(source)
                else:
                    _link(source, destination)
            commit = hashlib.sha1(os.urandom(20)).hexdigest()  # a snapshot id; content is checked by records
            incoming.rename(snapshots / commit)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _point(self._dir(target) / "main", Path("snapshots") / commit)
        return commit

    def _tag(self, target: Target, tag: str, commit: str) -> None:
        link = self._dir(target) / tag
        if link.is_symlink() and link.resolve().name != commit:
            raise UserError(f"{link} already points at another snapshot")
        if not link.is_symlink():
            link.symlink_to(Path("snapshots") / commit)

    def _read(self, target: Target, commit: str, path: str) -> bytes | None:
        file = self._dir(target) / "snapshots" / commit / path
        return file.read_bytes() if file.is_file() else None

    def url(self, target: Target, tag: str) -> str:
        return str(self._dir(target) / tag)

    def source(self, target: Target, tag: str) -> str:
        return self.url(target, tag)  # the version's folder: `load_dataset(folder)` and `factory compare` read it


def _link(source: Path, destination: Path) -> None:
    """Hard-link (same file system) or copy `source` to `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _point(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target`, replacing the old one atomically."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)
