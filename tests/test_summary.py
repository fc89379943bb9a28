"""The end-of-run summary: its load_dataset and factory compare lines work as printed; rewards before
vs after RL (paired by question, with a bootstrap interval) and the evaluation come from the artifacts;
missing pieces leave their lines out. The paired bootstrap itself: coverage, zero width, seed stability."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.artifacts import ArtifactMeta, mark_complete
from factory.hub import LocalStore
from factory.pipeline import Plan, PlannedStage
from factory.qa import paired_bootstrap
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


def traces(folder: Path, before: bool = True, before_rewards: list[float] = BEFORE) -> Path:
    def rows(rewards: list[float]) -> pa.Table:
        ids = [f"q{i}" for i in range(len(rewards))]
        return pa.table({"id": ids, "question": ids, "solution": ids, "explanation": ids, "reward": rewards})

    (folder / "data" / "candidates").mkdir(parents=True)
    pq.write_table(rows(AFTER), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(rows(AFTER + AFTER), folder / "data" / "candidates" / "train-00000-of-00001.parquet")
    metrics = figures(AFTER)
    if before:
        (folder / "data" / "before_rl").mkdir()
        pq.write_table(rows(before_rewards), folder / "data" / "before_rl" / "train-00000-of-00001.parquet")
        metrics.update(before_rl=figures(before_rewards), reward_gain_vs_before_rl=1.0)
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
    for name, fingerprint, folder in (
        ("generate", "g" * 64, "artifacts/generate-g"),
        ("evaluate", "e" * 64, "artifacts/evaluate-e"),
    ):
        stages.append(
            PlannedStage(
                name=name,
                stage=None,
                enabled=True,
                status="cached",
                fingerprint=fingerprint,
                artifact_dir=recipe_dir / folder,
            )
        )
        entries[name] = {"fingerprint": fingerprint, "status": "complete", "artifact_dir": folder, "published": None}
    entries["generate"]["published"] = published
    if not with_report:
        del entries["evaluate"]
    return Plan(recipe=RECIPE, recipe_dir=recipe_dir, stages=stages), {"stages": entries}


def code_in(line: str) -> str:
    return line.split(": ", 1)[1]


def run_load(expression: str):
    from datasets import load_dataset  # noqa: F401  (the printed line calls it)

    assert re.fullmatch(r"load_dataset\(.*\)", expression)
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
    paired = paired_bootstrap({"q0": 0.5, "q1": 1.0, "q2": 1.5}, {"q0": 1.0, "q1": 2.0, "q2": 3.0})
    assert 0.5 <= paired["low"] < 1.0 < paired["high"] <= 1.5  # the differences are 0.5, 1.0, 1.5
    assert lines[3] == (
        f"mean reward before RL 1.000 -> after RL 2.000 (+1.000, 95% paired bootstrap CI [{paired['low']:+.3f}, "
        f"{paired['high']:+.3f}] over 3 questions; all candidates 0.000 -> 1.000)"
    )
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
    published = {
        "repo": "org/toy-traces",
        "revision": "v3",
        "store": "hub",
        "url": "https://hf.co/datasets/org/toy-traces/tree/v3",
        "commit": "c" * 40,
        "repo_type": "dataset",
        "space": "https://hf.co/spaces/org/toy-compare",
    }
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


def test_reward_line_pairs_only_questions_in_both(tmp_path):
    recipe_dir = tmp_path / "runs" / "toy"
    traces(recipe_dir / "artifacts" / "generate-g", before_rewards=[0.5, 1.0])  # q2 has no trace before RL
    line = run_summary(*plan_and_manifest(recipe_dir, with_report=False))[3]
    paired = paired_bootstrap({"q0": 0.5, "q1": 1.0}, {"q0": 1.0, "q1": 2.0, "q2": 3.0})
    assert (paired["questions"], paired["before"], paired["after"], paired["mean"]) == (2, 0.75, 1.5, 0.75)
    assert line.startswith(
        f"mean reward before RL 0.750 -> after RL 1.500 (+0.750, 95% paired bootstrap CI [{paired['low']:+.3f}, "
        f"{paired['high']:+.3f}] over 2 questions, of 2 vs 3 traces; "
    )


def test_paired_bootstrap_interval_covers_the_true_mean():
    rng = np.random.default_rng(7)
    before, noise = rng.normal(-6.0, 1.0, 400), rng.normal(0.0, 0.5, 400)
    after = before + 0.3 + (noise - noise.mean())  # the differences' mean is exactly 0.3
    ids = [f"q{i}" for i in range(400)]
    paired = paired_bootstrap(dict(zip(ids, before)), dict(zip(ids, after)))
    differences = after - before
    assert paired["mean"] == pytest.approx(differences.mean())
    assert paired["low"] < 0.3 < paired["high"]
    assert paired["low"] < paired["mean"] < paired["high"]
    normal_half_width = 1.96 * differences.std(ddof=1) / np.sqrt(400)  # the interval normal theory gives
    assert (paired["high"] - paired["low"]) / 2 == pytest.approx(normal_half_width, rel=0.1)
    # over many samples of 16 questions, about 95% of the intervals hold the true mean
    covered = 0
    for trial in range(200):
        differences = rng.normal(0.3, 0.5, 16)
        result = paired_bootstrap(
            {str(i): 0.0 for i in range(16)}, {str(i): d for i, d in enumerate(differences)}, resamples=2000, seed=trial
        )
        covered += result["low"] <= 0.3 <= result["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_zero_width_when_every_difference_is_equal():
    before = {f"q{i}": float(i) for i in range(16)}
    paired = paired_bootstrap(before, {key: value + 0.25 for key, value in before.items()})
    assert paired["low"] == paired["high"] == pytest.approx(0.25)
    assert paired["mean"] == pytest.approx(0.25)
    assert (paired["questions"], paired["resamples"], paired["level"]) == (16, 10_000, 0.95)


def test_paired_bootstrap_is_seed_stable_and_order_free():
    rng = np.random.default_rng(3)
    before = {f"q{i}": float(v) for i, v in enumerate(rng.normal(0, 1, 16))}
    after = {f"q{i}": float(v) for i, v in enumerate(rng.normal(0.2, 1, 16))}
    first = paired_bootstrap(before, after)
    assert paired_bootstrap(before, after) == first
    assert paired_bootstrap(dict(reversed(before.items())), dict(reversed(after.items()))) == first
    other = paired_bootstrap(before, after, seed=1)
    assert (other["low"], other["high"]) != (first["low"], first["high"])  # resampled anew ...
    assert other["low"] == pytest.approx(first["low"], abs=0.1)  # ... to nearly the same interval
    assert paired_bootstrap(before, {"other": 1.0}) is None  # no question in both
