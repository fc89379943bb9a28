"""Scores as the Hub reads them: one `.eval_results/{eval set}.yaml` per benchmark in a model repo.

The Hub shows these files on the model page and on the benchmark dataset's leaderboard
(https://huggingface.co/docs/hub/eval-results; written with huggingface_hub's `EvalResultEntry`).
Each file holds one entry: the benchmark's Hub dataset id, its task id (the eval set's `config`, else
`default`), the dataset revision evaluated (when the report resolved it to a commit), the value (the
report's main metric, accuracy in %), the date of the report, its source (the version holding
`eval/report.json`) and, in `notes`, the protocol that produced it (template, sampling, grader).

The format names a benchmark by Hub dataset id: an eval set the Hub does not host (a local file, the
bundled quickstart task) is published by the store as `{namespace}/{recipe}-eval-{set}`
(factory.hub.benchmarks) and its entry names that repo at the commit published. The student's files are part of its report version; a distilled baseline's go into its own repo
(Store._publish_baseline_results). The untouched base model is not ours to write to: its scores stay
in the student's report and card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from factory.artifacts import ArtifactMeta
from factory.hub.content import EVAL_DIR, EVAL_RESULTS_DIR, benchmark_repo, hub_id
from factory.recipe import Recipe

METRIC = "accuracy"  # evaluate's main metric (factory.stages.evaluate.METRIC)
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def benchmark_ids(recipe: Recipe, namespace: str) -> dict[str, str]:
    """Eval set name -> the Hub dataset id its scores name: its own, or the repo factory publishes it as."""
    return {s.name: hub_id(s.source) or benchmark_repo(namespace, recipe.name, s.name) for s in recipe.data.eval}


def protocol_notes(protocol: dict[str, Any] | None, set_name: str) -> str | None:
    """One line of how a set was scored, from the report's protocol (factory.stages.evaluate.protocol)."""
    if not protocol:
        return None
    entry = protocol["sets"].get(set_name, {})
    grader = entry.get("grader") or {}
    grader_text = " ".join(filter(None, (grader.get("name"), grader.get("version"))))
    return (
        f"{METRIC} in %, mean over questions of the mean over samples; student format (system prompt in the "
        f"report), template {entry.get('template', '?')}; temperature {protocol['temperature']:g}, top_p "
        f"{protocol['top_p']:g}, n {protocol['n']}, up to {protocol['max_new_tokens']} new tokens, seed "
        f"{protocol['seed']}; grader {grader_text or '?'}"
    )


def eval_result_files(
    scores: dict[str, Any],
    recipe: Recipe,
    *,
    protocol: dict[str, Any] | None,
    revisions: dict[str, str],
    date: str,
    source_url: str,
    namespace: str,
    published: dict[str, str],
) -> dict[str, bytes]:
    """`.eval_results/{set}.yaml` -> content for each eval set with a score in `scores` (`{set: {"accuracy": v}}`
    as the student's metrics, or `{set: v}` as a baseline's); `published`: set -> commit of the sets the store
    published itself (factory.hub.benchmarks), which are the revisions their entries name."""
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    sets = {s.name: s for s in recipe.data.eval}
    revisions = {**revisions, **published}
    files: dict[str, bytes] = {}
    for name, repo in benchmark_ids(recipe, namespace).items():
        value = scores.get(name)
        value = value.get(METRIC) if isinstance(value, dict) else value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        revision = revisions.get(name) or sets[name].revision or ""
        entry = EvalResultEntry(
            dataset_id=repo,
            task_id=sets[name].config or "default",
            value=round(float(value), 4),
            dataset_revision=revision if COMMIT_SHA.fullmatch(revision) else None,
            date=date or None,
            source_url=source_url,
            source_name="factory evaluate report (eval/report.json)",
            notes=protocol_notes(protocol, name),
        )
        text = yaml.safe_dump(eval_result_entries_to_yaml([entry]), sort_keys=False, allow_unicode=True)
        files[f"{EVAL_RESULTS_DIR}{name}.yaml"] = text.encode()
    return files


def report_results(
    meta: ArtifactMeta,
    files: dict[str, Any],
    recipe: Recipe,
    url: str,
    scores: dict[str, Any],
    namespace: str,
    published: dict[str, str],
) -> dict[str, bytes]:
    """The `.eval_results/` files of `scores` (the student's, or one baseline's) from a report artifact
    whose files (`artifact_files`) hold `eval/report.json`; `url`: the version holding that report."""
    report = json.loads(Path(files[EVAL_DIR + "report.json"]).read_text())
    return eval_result_files(
        scores,
        recipe,
        protocol=meta.metrics.get("protocol"),
        revisions=resolved_revisions(report),
        date=meta.created,
        source_url=url,
        namespace=namespace,
        published=published,
    )


def resolved_revisions(report: dict[str, Any]) -> dict[str, str]:
    """Eval set name -> the dataset commit the report evaluated (report.json's `eval_sets`)."""
    return {s["name"]: s.get("resolved_revision") or "" for s in report.get("eval_sets", []) if "name" in s}


def where_published(recipe: Recipe, baselines: list[str], namespace: str) -> str:
    """The card's line saying where the Hub reads the scores, and which benchmarks factory published itself."""
    sets = benchmark_ids(recipe, namespace)
    ours = {s.name: sets[s.name] for s in recipe.data.eval if not hub_id(s.source)}
    lines = []
    if sets:
        files = ", ".join(f"`{EVAL_RESULTS_DIR}{name}.yaml`" for name in sets)
        lines.append(f"The Hub reads this model's scores from {files} (model page and benchmark leaderboards).")
    if ours:
        repos = ", ".join(f"{name} as `{repo}`" for name, repo in ours.items())
        lines.append(
            f"Eval sets not hosted on the Hub are published with the run ({repos}), so that their scores can name "
            "their benchmark by dataset id."
        )
    if "distill_base" in baselines:
        lines.append(
            "The distillation base's scores are recorded here and in `eval/report.json` only: its repo is not ours."
        )
    if any(label != "distill_base" for label in baselines):
        lines.append("Each distilled baseline's scores are in its own repo's `.eval_results/` where it is published.")
    return " ".join(lines) + "\n" if lines else ""
