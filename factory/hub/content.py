"""What an artifact puts into its repo: the files, the `factory.json` record, and the repo's name.

Repo per role: `{namespace}/{recipe}-teacher` and `-student` (model repos), `-traces` (a dataset
repo), and one model repo per distilled baseline of evaluate, `-student-reference` and
`-student-before-rl` (the role with dashes). A model artifact's `model/` folder becomes the repo root;
a dataset artifact's parquet files keep their place under `data/`
(`data/{split}[-NNNNN-of-NNNNN].parquet` is config `default`, `data/{config}/{split}...parquet` another
config, e.g. `candidates`); PNG and CSV files at the artifact root are plots and go under `plots/`. A
report goes into the student repo under `eval/`, its scores also under `.eval_results/` (the Hub's
format, factory.hub.eval_results).

`factory.json` is the record of one published version: fingerprint, stage, config, metrics, base
inputs, and the lineage (upstream repos at their tags). Stores find an existing publish by reading
it at each tag, so the repo itself, not local state, says what was published.

A traces version with the `before_rl` config (the teacher before RL, same questions) is also shown
in the recipe's compare Space, `{namespace}/{recipe}-compare`, on stores that hold Spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.artifacts import ArtifactMeta
from factory.errors import UserError
from factory.roles import Role

RECORD_FILE = "factory.json"
CARD_FILE = "README.md"
REPO_TYPES = {role: role.repo_type for role in Role if role.repo_type}  # role -> repo type; suffix: the role
PLOT_SUFFIXES = (".png", ".csv")
EVAL_DIR = "eval/"
EVAL_RESULTS_DIR = ".eval_results/"  # the scores the Hub reads (factory.hub.eval_results)
PLOTS_DIR = "plots/"
BEFORE_RL = "before_rl"  # the traces config of the teacher before RL (factory.stages.generate)
SPACE_SUFFIX = "compare"
SKIPPED = "skipped"  # the metrics key of an artifact with nothing to publish (a baseline that found no rows): why
HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class Target:
    """A repo of a store: its id (`namespace/name`) and type (`model` or `dataset`)."""

    repo: str
    repo_type: str


def hub_id(source: str) -> str | None:
    """`source` when it names a Hub repo (what card metadata may link to), None for local or packaged sources."""
    return source if HUB_REPO.fullmatch(source) and not Path(source).expanduser().exists() else None


def next_tag(numbers: Iterable[int]) -> str:
    """The tag of a repo's next version, from its versions' numbers: v1, then one past the highest."""
    return f"v{max(numbers, default=0) + 1}"


def benchmark_repo(namespace: str, recipe_name: str, set_name: str) -> str:
    """The dataset repo holding an eval set the Hub does not host (factory.hub.benchmarks)."""
    return f"{namespace}/{recipe_name}-eval-{set_name.replace('_', '-')}"


def target_for(namespace: str, recipe_name: str, role: str) -> Target:
    return Target(f"{namespace}/{recipe_name}-{role.replace('_', '-')}", REPO_TYPES[role])


def space_repo(namespace: str, recipe_name: str) -> str:
    """The recipe's compare Space: its traces after RL next to its `before_rl` config."""
    return f"{namespace}/{recipe_name}-{SPACE_SUFFIX}"


def artifact_files(meta: ArtifactMeta, artifact_dir: Path) -> dict[str, Path]:
    """Path in the repo -> local file, for everything the artifact publishes except card and record."""
    files: dict[str, Path] = {}
    if meta.kind == "report":
        report = artifact_dir / "report.json"
        if not report.is_file():
            raise UserError(f"{artifact_dir}: a report artifact needs report.json")
        files[EVAL_DIR + "report.json"] = report
    else:
        payload = artifact_dir / ("model" if meta.kind == "model" else "data")
        found = sorted(p for p in payload.rglob("*") if p.is_file()) if payload.is_dir() else []
        if meta.kind == "dataset":
            found = [p for p in found if p.suffix == ".parquet"]
        if not found:
            raise UserError(f"{artifact_dir}: a {meta.kind} artifact needs its files under {payload.name}/")
        prefix = "" if meta.kind == "model" else "data/"
        files.update({prefix + p.relative_to(payload).as_posix(): p for p in found})
    plots = EVAL_DIR if meta.kind == "report" else PLOTS_DIR
    for path in sorted(artifact_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in PLOT_SUFFIXES:
            files[plots + path.name] = path
    return files


def data_layout(files: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    """config -> split -> parquet paths in the repo, from the `data/` naming convention."""
    layout: dict[str, dict[str, list[str]]] = {}
    for path in sorted(files):
        if not (path.startswith("data/") and path.endswith(".parquet")):
            continue
        parts = path.removeprefix("data/").split("/")
        config = parts[0] if len(parts) > 1 else "default"
        split = Path(parts[-1]).stem.split("-")[0]
        if not split.isidentifier():
            raise UserError(f"{path}: the split name {split!r} must be a word (name files data/SPLIT-*.parquet)")
        layout.setdefault(config, {}).setdefault(split, []).append(path)
    return layout


def owned(path: str, kind: str) -> bool:
    """Whether a publish of this kind replaces `path`: everything for models and datasets, eval/ and
    .eval_results/ for reports."""
    return kind != "report" or path.startswith((EVAL_DIR, EVAL_RESULTS_DIR))


def make_record(
    meta: ArtifactMeta, tag: str, lineage: list[dict[str, Any]], evaluates: dict[str, Any] | None
) -> dict[str, Any]:
    """The `factory.json` of a version: what was published, from what, with which settings."""
    record = {
        "fingerprint": meta.fingerprint,
        "kind": meta.kind,
        "stage": meta.stage,
        "role": meta.role,
        "recipe_name": meta.recipe_name,
        "tag": tag,
        "config": meta.config,
        "metrics": meta.metrics,
        "inputs": [
            {"role": ref.role, "fingerprint": ref.fingerprint, "source": ref.source, "revision": ref.revision}
            for ref in meta.inputs
        ],
        "lineage": lineage,
        "versions": meta.versions,
        "created": meta.created,
    }
    if meta.columns:
        record["columns"] = meta.columns
    if evaluates is not None:
        record["evaluates"] = evaluates
    return record
