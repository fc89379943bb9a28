"""The end-of-run summary: its load_dataset and factory compare lines work as printed; rewards before
vs after RL and the evaluation come from the artifacts; missing pieces leave their lines out."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.artifacts import ArtifactMeta, mark_complete
from factory.hub import LocalStore
from factory.pipeline import Plan, PlannedStage
from factory.recipe import Recipe
from factory.summary import run_summary

RECIPE = Recipe.model_validate(
    {
        "name": "toy",
        "models": {"teacher": {"source": "org/t"}, "student": {"source": "org/t"}, "distill_base": {"source": "org/t"}},
        "data": {
            "train": {"source": "quickstart", "format": "quickstart"},
            "eval": [{"name": "quickstart", "source": "quickstart", "format": "quickstart", "split": "eval"}],
        },
    }
)
AFTER, BEFORE = [1.0, 2.0, 3.0], [0.5, 1.0, 1.5]


def figures(rewards: list[float]) -> dict:
    mean = sum(rewards) / len(rewards)
    return {"rows": len(rewards), "reward": {"candidates": {"mean": mean - 1.0}, "selected": {"mean": mean}}}


def traces(folder: Path, before: bool = True) -> Path:
    def rows(rewards: list[float]) -> pa.Table:
        ids = [f"q{i}" for i in range(len(rewards))]
        return pa.table({"id": ids, "question": ids, "solution": ids, "explanation": ids, "reward": rewards})

    (folder / "data" / "candidates").mkdir(parents=True)
    pq.write_table(rows(AFTER), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(rows(AFTER + AFTER), folder / "data" / "candidates" / "train-00000-of-00001.parquet")
    metrics = figures(AFTER)
    if before:
        (folder / "data" / "before_rl").mkdir()
        pq.write_table(rows(BEFORE), folder / "data" / "before_rl" / "train-00000-of-00001.parquet")
        metrics.update(before_rl=figures(BEFORE), reward_gain_vs_before_rl=1.0)
    mark_complete(folder, ArtifactMeta("dataset", "generate", "traces", "g" * 64, "toy", {}, [], metrics))
    return folder


def report(folder: Path, baselines=(("distill_base", 31.25),)) -> Path:
    """An evaluate artifact whose report.json has evaluate's layout (scores per model, per set, overall)."""
    folder.mkdir(parents=True)
    scores = {
        label: {"sets": {"quickstart": {"accuracy": value, "questions": 32}}, "overall": value, "engine": "hf"}
        for label, value in (("student", 40.625), *baselines)
    }
    report = {"metric": "accuracy (%)", "scores": scores, "skipped_baselines": {}}
    (folder / "report.json").write_text(json.dumps(report, sort_keys=True))  # as evaluate writes it
    mark_complete(folder, ArtifactMeta("report", "evaluate", "report", "e" * 64, "toy", {}, [], {"overall": 40.625}))
    return folder


def plan_and_manifest(recipe_dir: Path, published: dict | None = None, with_report: bool = True) -> tuple[Plan, dict]:
    stages, entries = [], {}
    for name, fingerprint, folder in (("generate", "g" * 64, "artifacts/generate-g"), ("evaluate", "e" * 64, "artifacts/evaluate-e")):
        stages.append(PlannedStage(name=name, stage=None, enabled=True, status="cached", fingerprint=fingerprint,
                                   artifact_dir=recipe_dir / folder))  # fmt: skip
        entries[name] = {"fingerprint": fingerprint, "status": "complete", "artifact_dir": folder, "published": None}
    entries["generate"]["published"] = published
    if not with_report:
        del entries["evaluate"]
    return Plan(recipe=RECIPE, recipe_dir=recipe_dir, stages=stages), {"stages": entries}


def code_in(line: str) -> str:
    return line.split(": ", 1)[1]


def run_load(expression: str):
    from datasets import load_dataset  # noqa: F401  (the printed line calls it)

    assert re.fullmatch(r'load_dataset\(.*\)', expression)
    return eval(expression)  # the exact text the user is told to run


def compare_sources(line: str) -> list[str]:
    words = shlex.split(code_in(line))
    assert words[:2] == ["factory", "compare"]
    return words[2:]


def test_unpublished_run_prints_lines_that_work(tmp_path):
    from factory import compare

    recipe_dir = tmp_path / "runs" / "toy"
    artifact = traces(recipe_dir / "artifacts" / "generate-g")
    report(recipe_dir / "artifacts" / "evaluate-e", baselines=(("distill_base", 31.25), ("before_rl_traces", 25.0)))
    lines = run_summary(*plan_and_manifest(recipe_dir))
    assert lines[0] == f'traces: load_dataset("parquet", data_files="{artifact}/data/*.parquet")'
    assert run_load(code_in(lines[0]))["train"]["reward"] == AFTER  # the candidates config is not read
    assert run_load(code_in(lines[1]))["train"]["reward"] == BEFORE
    sources = compare_sources(lines[2])
    assert sources == [str(artifact), f"{artifact}#before_rl"]
    assert compare.load(sources).difference(1, 0).tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert lines[3] == "mean reward before RL 1.0000 -> after RL 2.0000 (+1.0000; 3 vs 3 traces; all candidates 0.0000 -> 1.0000)"
    assert lines[4:] == [
        "eval quickstart (accuracy %): student 40.6 | before_rl_traces 25.0 | distill_base 31.2",
        "eval overall (accuracy %): student 40.6 | before_rl_traces 25.0 | distill_base 31.2",
        "held-out accuracy of students distilled on the traces before RL 25.0% -> after RL 40.6% (+15.6 points)",
    ]


def test_local_store_lines_load_the_published_version(tmp_path):
    recipe_dir = tmp_path / "runs" / "toy"
    artifact = traces(recipe_dir / "artifacts" / "generate-g")
    ref = LocalStore(RECIPE, recipe_dir / "store", log=lambda _: None).publish(artifact)
    lines = run_summary(*plan_and_manifest(recipe_dir, ref.to_manifest(), with_report=False))
    assert lines[0] == f'traces: load_dataset("{ref.url}")'
    assert run_load(code_in(lines[0]))["train"]["reward"] == AFTER
    assert run_load(code_in(lines[1]))["train"]["reward"] == BEFORE
    assert compare_sources(lines[2]) == [str(artifact), f"{artifact}#before_rl"]
    assert len(lines) == 4  # no evaluate entry: no eval lines


def test_hub_lines_name_repo_revision_and_space(tmp_path):
    recipe_dir = tmp_path / "runs" / "toy"
    traces(recipe_dir / "artifacts" / "generate-g")
    published = {"repo": "org/toy-traces", "revision": "v3", "store": "hub", "url": "https://hf.co/datasets/org/toy-traces/tree/v3",
                 "commit": "c" * 40, "repo_type": "dataset", "space": "https://hf.co/spaces/org/toy-compare"}  # fmt: skip
    lines = run_summary(*plan_and_manifest(recipe_dir, published))
    assert lines[:4] == [
        'traces: load_dataset("org/toy-traces", revision="v3")',
        'traces of the teacher before RL: load_dataset("org/toy-traces", "before_rl", revision="v3")',
        "compare after vs before RL: factory compare org/toy-traces@v3 org/toy-traces@v3#before_rl",
        "compare Space: https://hf.co/spaces/org/toy-compare",
    ]


def test_missing_pieces_leave_their_lines_out(tmp_path):
    recipe_dir = tmp_path / "runs" / "toy"
    artifact = traces(recipe_dir / "artifacts" / "generate-g", before=False)
    evaluate = report(recipe_dir / "artifacts" / "evaluate-e")
    plan, manifest = plan_and_manifest(recipe_dir)
    assert run_summary(plan, manifest) == [
        f'traces: load_dataset("parquet", data_files="{artifact}/data/*.parquet")',
        "eval quickstart (accuracy %): student 40.6 | distill_base 31.2",
        "eval overall (accuracy %): student 40.6 | distill_base 31.2",
    ]
    (evaluate / "report.json").unlink()
    assert run_summary(plan, manifest) == [f'traces: load_dataset("parquet", data_files="{artifact}/data/*.parquet")']
    plan.stages[0].fingerprint = "x" * 64  # the manifest's generate is not this plan's
    assert run_summary(plan, manifest) == []
    assert run_summary(plan, {"stages": {}}) == []
