"""Scores as the Hub reads them: one `.eval_results/{eval set}.yaml` per benchmark in a model repo.

The Hub shows these files on the model page and on the benchmark dataset's leaderboard
(https://huggingface.co/docs/hub/eval-results; written with huggingface_hub's `EvalResultEntry`).
Each file holds one entry: the benchmark's Hub dataset id, its task id (the eval set's `config`, else
`default`), the dataset revision evaluated (when the report resolved it to a commit), the value (the
report's main metric, accuracy in %), the date of the report, its source (the version holding
`eval/report.json`) and, in `notes`, the protocol that produced it (template, sampling, grader).

Only eval sets hosted on the Hub get one: the format names a benchmark by Hub dataset id, which a
local file or the bundled quickstart set does not have; their scores stay in `eval/report.json` and the
card. The student's files are part of its report version; a distilled baseline's go into its own repo
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
from factory.hub.content import EVAL_DIR, EVAL_RESULTS_DIR, hub_id
from factory.recipe import Recipe

METRIC = "accuracy"  # evaluate's main metric (factory.stages.evaluate.METRIC)
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def hub_eval_sets(recipe: Recipe) -> dict[str, str]:
    """Eval set name -> Hub dataset id, for the sets hosted on the Hub."""
    return {s.name: repo for s in recipe.data.eval if (repo := hub_id(s.source))}


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
) -> dict[str, bytes]:
    """`.eval_results/{set}.yaml` -> content for each Hub-hosted eval set with a score in `scores`
    (`{set: {"accuracy": v}}` as the student's metrics, or `{set: v}` as a baseline's)."""
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    sets = {s.name: s for s in recipe.data.eval}
    files: dict[str, bytes] = {}
    for name, repo in hub_eval_sets(recipe).items():
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
    meta: ArtifactMeta, files: dict[str, Any], recipe: Recipe, url: str, scores: dict[str, Any]
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
    )


def resolved_revisions(report: dict[str, Any]) -> dict[str, str]:
    """Eval set name -> the dataset commit the report evaluated (report.json's `eval_sets`)."""
    return {s["name"]: s.get("resolved_revision") or "" for s in report.get("eval_sets", []) if "name" in s}


def where_published(recipe: Recipe, baselines: list[str]) -> str:
    """The card's line saying which scores the Hub reads, and why the others are only in the report."""
    sets = hub_eval_sets(recipe)
    others = [s.name for s in recipe.data.eval if s.name not in sets]
    lines = []
    if sets:
        files = ", ".join(f"`{EVAL_RESULTS_DIR}{name}.yaml`" for name in sets)
        lines.append(f"The Hub reads this model's scores from {files} (model page and benchmark leaderboards).")
    if others:
        lines.append(
            f"Eval sets not hosted on the Hub ({', '.join(others)}) have no `{EVAL_RESULTS_DIR}` file: the Hub "
            "names a benchmark by its dataset id; their scores are in this table and `eval/report.json`."
        )
    if "distill_base" in baselines:
        lines.append(
            "The distillation base's scores are recorded here and in `eval/report.json` only: its repo is not ours."
        )
    if any(label != "distill_base" for label in baselines):
        lines.append("Each distilled baseline's scores are in its own repo's `.eval_results/` where it is published.")
    return " ".join(lines) + "\n" if lines else ""
