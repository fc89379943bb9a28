"""The generate stage: traces schema, best-of-n selection, QA figures and drops, resumption after
SIGKILL, shards and merge, data-parallel vLLM workers (through the stand-in module), QA helpers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from generating import kept_ids, plan_for, read, run, write_recipe

from factory.artifacts import is_complete, read_meta
from factory.errors import UserError
from factory.pipeline import execute, make_plan
from factory.qa import paired_bootstrap
from factory.recipe import load_recipe
from factory.stages import load_stages

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------------------------ the stage


def test_traces_best_of_n_checks_and_figures(tmp_path, closing_teacher, tiny_student_dir, data_dir):
    from factory.formats import EXPLANATION_CLOSE, StudentFormat, student_messages
    from factory.qa import answer_leaked, final_answer

    recipe = write_recipe(tmp_path, closing_teacher, tiny_student_dir, data_dir, limit=10)
    artifact, report = run(recipe, tmp_path / "runs")
    assert report.ran == ["generate"] and is_complete(artifact)
    selected, candidates = read(artifact / "data"), read(artifact / "data" / "candidates")
    ids = kept_ids(recipe)
    assert len(ids) == 9  # 10 questions, the first is in the eval set

    # every kept question has its n candidates, exactly once; the contaminated one has none
    assert sorted((c["id"], c["candidate_index"]) for c in candidates) == sorted((i, j) for i in ids for j in range(3))
    by_id: dict[str, list[dict]] = {}
    for c in candidates:
        by_id.setdefault(c["id"], []).append(c)
        assert c["closed"] == (c["drop_reason"] != "unclosed")  # drop_unclosed is on; nothing empty or leaked here
        assert (c["finish_reason"] == "length") == (c["completion_tokens"] == 16 and not c["closed"])
        assert c["explanation_tokens"] <= c["completion_tokens"]
        assert EXPLANATION_CLOSE not in c["explanation"]
        assert c["penalty"] == (0.0 if c["closed"] else -1.0)
        assert c["answer_leaked"] == answer_leaked(c["explanation"], final_answer(c["solution"]))
    assert 0 < sum(c["closed"] for c in candidates) < len(candidates)  # both kinds occur

    # the selected row is the best-rewarded closed candidate; questions with none are dropped
    expected = {}
    for qid, group in by_id.items():
        closed = [c for c in group if c["closed"]]
        if closed:
            expected[qid] = max(closed, key=lambda c: c["reward"])["candidate_index"]
    assert {row["id"]: row["candidate_index"] for row in selected} == expected
    assert {c["id"]: c["candidate_index"] for c in candidates if c["selected"]} == expected
    for row in selected:
        messages = student_messages(row["question"], row["explanation"], row["solution"], StudentFormat("Think."))
        assert row["prompt"] == messages[:2] and row["completion"] == messages[2:]
        assert (row["temperature"], row["top_p"], row["seed"]) == (0.9, 1.0, 7)
        assert row["teacher"].startswith(f"{closing_teacher}@local:")

    meta = read_meta(artifact)
    qa, reward = meta.metrics["qa"], meta.metrics["reward"]
    assert meta.metrics["rows"] == len(selected) and meta.metrics["questions"] == 10
    assert qa["contaminated_questions"] == 1 and qa["contaminated_by_eval_set"] == {"held": 1}
    assert qa["closed_rate"] == pytest.approx(sum(c["closed"] for c in candidates) / 27)
    assert qa["truncation_rate"] == pytest.approx(sum(c["finish_reason"] == "length" for c in candidates) / 27)
    assert qa["dropped_candidates"]["unclosed"] == sum(not c["closed"] for c in candidates)
    assert qa["questions_without_passing_candidate"] == 9 - len(selected)
    assert qa["explanation_tokens"]["max"] == max(c["explanation_tokens"] for c in candidates)
    assert reward["selected"]["mean"] == pytest.approx(sum(r["reward"] for r in selected) / len(selected))
    assert reward["candidates"]["count"] == 27
    gains = [
        max(c["reward"] for c in group if c["closed"]) - sum(c["reward"] for c in group) / 3
        for group in by_id.values()
        if any(c["closed"] for c in group)
    ]
    assert reward["best_of_n_gain"] == pytest.approx(sum(gains) / len(gains))
    for name in ("reward_hist", "explanation_tokens_hist"):
        assert (artifact / f"{name}.png").stat().st_size > 1000
        lines = (artifact / f"{name}.csv").read_text().splitlines()
        assert sum(int(line.split(",")[2]) for line in lines[1:]) == 27  # all candidates are binned
    assert meta.files["candidates"] == "data/candidates"

    # a finished stage re-run does nothing
    stamp = (artifact / "artifact.json").stat().st_mtime_ns
    parts = sorted(p.name for p in (artifact / "work" / "generated").iterdir())
    again, report = run(recipe, tmp_path / "runs")
    assert again == artifact and report.cached == ["generate"] and report.ran == []
    assert (artifact / "artifact.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (artifact / "work" / "generated").iterdir()) == parts


def test_sigkill_midway_then_rerun_same_rows(tmp_path, tiny_model_dir, tiny_student_dir, data_dir, repo_root):
    """A run killed with SIGKILL while generating resumes: same row count and ids, no duplicates,
    the chunks finished before the kill are kept, not redone."""
    recipe = write_recipe(
        tmp_path,
        tiny_model_dir,
        tiny_student_dir,
        data_dir,
        limit=16,
        n=2,
        batch_size=2,
        drop_unclosed=False,
    )
    runs = tmp_path / "runs"
    script = (
        "import sys; from factory.pipeline import make_plan, execute; from factory.recipe import load_recipe; "
        "from factory.stages import load_stages; "
        f"execute(make_plan(load_recipe({str(recipe)!r}), __import__('pathlib').Path({str(runs)!r}), load_stages()), 'r')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=repo_root, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    artifact = plan_for(recipe, runs).stage("generate").artifact_dir
    generated = artifact / "work" / "generated"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None and len(list(generated.glob("*.parquet"))) < 2:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = {p.name: p.stat().st_mtime_ns for p in generated.glob("*.parquet")}
    assert not is_complete(artifact), "the run finished before it could be killed"
    assert 2 <= len(before) < 8  # 15 kept questions in chunks of 2: the kill came midway

    resumed, report = run(recipe, runs)
    assert report.ran == ["generate"] and is_complete(resumed)
    after = {p.name: p.stat().st_mtime_ns for p in generated.glob("*.parquet")}
    assert {name: after[name] for name in before} == before  # finished chunks were not regenerated
    rows, candidates = read(artifact / "data"), read(artifact / "data" / "candidates")
    ids = kept_ids(recipe)
    assert len(ids) == 15 and len(rows) == 15
    assert [row["id"] for row in rows] == ids  # same ids, in data order, each once
    assert sorted((c["id"], c["candidate_index"]) for c in candidates) == sorted((i, j) for i in ids for j in range(2))
    assert read_meta(artifact).metrics["qa"]["duplicates_removed"] == 0


def test_shards_on_separate_workers_then_merge(tmp_path, closing_teacher, tiny_student_dir, data_dir):
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.stages.generate import run_shard

    recipe = write_recipe(tmp_path, closing_teacher, tiny_student_dir, data_dir, limit=8, n=2, drop_unclosed=False)
    runs = tmp_path / "runs"
    cli = CliRunner().invoke(app, ["generate-shard", str(recipe), "--shard", "1/2", "--run-dir", str(runs)])
    assert cli.exit_code == 0, cli.output
    assert "generate shard 1/2 done" in cli.output
    assert "generate shard 0/2 done" in run_shard(plan_for(recipe, runs), 0, 2, log=lambda m: None)
    artifact = plan_for(recipe, runs).stage("generate").artifact_dir
    assert not is_complete(artifact)  # shards alone do not complete the stage
    names = sorted(p.name for p in (artifact / "work" / "scored").glob("*.parquet"))
    assert names and all(name.startswith(("s0of2-", "s1of2-")) for name in names)
    owned = {name[:5] for name in names}
    assert owned == {"s0of2", "s1of2"}

    # the merge run generates nothing new, and throughput settings keep the fingerprint
    plan = plan_for(recipe, runs, ["stages.generate.batch_size=2", "stages.generate.shards=5"])
    assert plan.stage("generate").artifact_dir == artifact and plan.stage("generate").status == "resume"
    merged, report = run(recipe, runs)
    assert report.ran == ["generate"] and merged == artifact
    assert sorted(p.name for p in (artifact / "work" / "generated").glob("*.parquet")) == names
    assert [row["id"] for row in read(artifact / "data")] == kept_ids(recipe)
    assert "complete already" in run_shard(plan_for(recipe, runs), 1, 2)
    changed = plan_for(recipe, runs, ["stages.generate.temperature=0.5"]).stage("generate")
    assert changed.status == "run" and "stages.generate.temperature" in changed.reason


@pytest.mark.slow  # two worker processes, each importing torch and loading models: ~20 s on a busy 2-core box
def test_vllm_data_parallel_one_worker_per_gpu_group(
    tmp_path, tiny_model_dir, tiny_student_dir, data_dir, monkeypatch, vllm_standin
):
    """engine vllm with 2 GPU groups: two worker processes (vLLM = the stand-in), shard g of 2 each."""
    import factory.engines.base as base

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(base, "gpu_count", lambda: 2)
    recipe = write_recipe(
        tmp_path, tiny_model_dir, tiny_student_dir, data_dir, limit=6, n=2, engine="vllm", drop_unclosed=False
    )
    artifact, report = run(recipe, tmp_path / "runs")
    assert report.ran == ["generate"] and is_complete(artifact)
    jobs = [json.loads((artifact / "work" / "jobs" / f"group{g}.json").read_text()) for g in (0, 1)]
    assert [(job["engine"], job["shards"], job["num_shards"]) for job in jobs] == [("vllm", [0], 2), ("vllm", [1], 2)]
    scored = sorted(p.name[:5] for p in (artifact / "work" / "scored").glob("*.parquet"))
    assert set(scored) == {"s0of2", "s1of2"}
    assert [row["id"] for row in read(artifact / "data")] == kept_ids(recipe)


# ------------------------------------------------------------------------------------ helpers


def test_decontamination_by_word_ngrams():
    from factory.qa import Decontaminator

    index = Decontaminator(
        {
            "aime": ["Find the number of ordered pairs (a, b) of integers such that a + b = 10."],
            "tiny": ["What is 2 + 1?"],
        },
        5,
    )
    assert index.match("count the number of ordered ways") == []  # 4 shared words only
    assert index.match("Please FIND the number of ordered pairs!") == ["aime"]  # case-insensitive 5-gram
    assert index.match("What is 2 + 1?") == ["tiny"]  # shorter than n: compared whole
    assert index.match("What is 2 + 10?") == []


def test_answer_leak_and_mention():
    from factory.qa import answer_leaked, answer_mentioned, final_answer

    answer = final_answer("So 3 + 4 = 7, and \\boxed{\\frac{7}{2}}")
    assert answer == "\\frac{7}{2}"
    assert answer_leaked("thus the result is \\boxed{ \\dfrac{7}{2} }", answer)
    assert not answer_leaked("halve 7 to get \\frac{7}{2}", answer)
    assert answer_mentioned("halve 7 to get \\frac{7}{2}", answer)
    assert not answer_mentioned("we get 17 apples", "7") and answer_mentioned("we get 7 apples", "7")
    assert final_answer("no box here", answer="12") == "12" and final_answer("no box here") is None


def test_summary_percentiles():
    from factory.qa import summary

    figures = summary(list(range(1, 11)))
    assert (figures["count"], figures["mean"], figures["min"], figures["max"]) == (10, 5.5, 1, 10)
    assert (figures["p10"], figures["p50"], figures["p90"]) == (1, 5, 9)
    assert summary([])["count"] == 0


def test_parts_are_atomic_and_temporaries_ignored(tmp_path):
    from factory.stages.generate_worker import GENERATED, WorkDir

    work = WorkDir(tmp_path)
    work.write(GENERATED, "s0of1-a", [{"id": "a", "candidate_index": 0}, {"id": "b", "candidate_index": 0}])
    torn = work.folder(GENERATED) / ".s0of1-c.parquet.999.tmp"
    torn.write_bytes(b"PAR1 half a file")  # what a writer killed mid-write leaves
    assert work.ids(GENERATED) == {"a", "b"}
    assert work.remove_temporaries() == 1 and not torn.exists()  # one process per shard: tests/test_shards.py


def test_shard_argument():
    from factory.cli import _parse_shard

    assert _parse_shard("3", 8) == (3, 8) and _parse_shard("1/2", 8) == (1, 2)
    for bad in ("8", "2/2", "x/3", "-1"):
        with pytest.raises(UserError, match="--shard"):
            _parse_shard(bad, 8)


# ------------------------------------------------------------------------------ before vs after RL


def rl_registry(rl_teacher: Path) -> dict:
    """The real stages, with teacher_rl replaced by a copy of `rl_teacher` (RL itself is not under test
    here: what matters is that its artifact differs from the teacher it started from)."""
    from factory.roles import Role
    from factory.stages.base import Stage, StageResult

    class CopiedTeacher(Stage):
        name, consumes, produces = "teacher_rl", (Role.TEACHER,), Role.TEACHER
        passes_on = {Role.INITIAL_TEACHER: Role.TEACHER}  # as teacher RL: generate's before_rl pass uses it

        def run(self, ctx):
            shutil.copytree(rl_teacher, ctx.out_dir / "model", dirs_exist_ok=True)
            return StageResult(summary="copied")

    return {**load_stages(), "teacher_rl": CopiedTeacher()}


def test_before_rl_config_has_the_initial_teachers_traces_on_the_same_questions(
    tmp_path, tiny_model_dir, closing_teacher, tiny_student_dir, data_dir
):
    """RL (here: teacher tiny -> closing teacher) then generate with before_rl: config before_rl holds
    exactly what generating with the initial teacher alone gives, on the same ids with the same seeds."""
    recipe = write_recipe(
        tmp_path, tiny_model_dir, tiny_student_dir, data_dir, limit=6, n=2, drop_unclosed=False, before_rl=True
    )
    runs, with_rl = tmp_path / "runs", ["stages.teacher_rl.enabled=true"]
    plan = make_plan(load_recipe(recipe, with_rl), runs, rl_registry(closing_teacher))
    generate = plan.stage("generate")
    assert generate.inputs["initial_teacher"].model.source == str(tiny_model_dir)
    report = execute(plan, str(recipe), log=lambda message: None)
    assert report.ran == ["teacher_rl", "generate"]
    artifact = generate.artifact_dir
    after, before = read(artifact / "data"), read(artifact / "data" / "before_rl")
    ids = kept_ids(recipe)
    assert len(ids) == 5 and [r["id"] for r in after] == ids and [r["id"] for r in before] == ids
    rl_fingerprint = plan.stage("teacher_rl").fingerprint
    assert {r["teacher"] for r in after} == {f"teacher_rl@{rl_fingerprint[:12]}"}
    assert {r["teacher"].split("@local:")[0] for r in before} == {str(tiny_model_dir)}
    assert {(r["temperature"], r["top_p"], r["seed"]) for r in before + after} == {(0.9, 1.0, 7)}
    assert set(before[0]) == set(after[0])  # the default config's schema
    assert sum(a["explanation"] != b["explanation"] for a, b in zip(after, before)) >= 3  # two different teachers

    meta = read_meta(artifact)
    figures, mean = meta.metrics["before_rl"], lambda rows: sum(r["reward"] for r in rows) / len(rows)  # noqa: E731
    assert figures["rows"] == 5 and figures["qa"]["candidates"] == 10 and "questions" not in figures
    assert figures["reward"]["selected"]["mean"] == pytest.approx(mean(before))
    assert meta.metrics["reward_gain_vs_before_rl"] == pytest.approx(mean(after) - mean(before))
    paired = meta.metrics[
        "reward_gain_vs_before_rl_paired"
    ]  # the same questions: the same difference, with its interval
    assert paired == paired_bootstrap({r["id"]: r["reward"] for r in before}, {r["id"]: r["reward"] for r in after})
    assert paired["questions"] == 5 and paired["mean"] == pytest.approx(mean(after) - mean(before))
    assert paired["low"] <= paired["mean"] <= paired["high"]
    assert meta.files["before_rl"] == "data/before_rl"
    lines = (artifact / "reward_before_after_rl.csv").read_text().splitlines()
    assert lines[0] == "bin_low,bin_high,before RL,after RL"
    assert [sum(int(line.split(",")[k]) for line in lines[1:]) for k in (2, 3)] == [10, 10]  # every candidate
    assert (artifact / "reward_before_after_rl.png").stat().st_size > 1000

    # the same recipe without RL: the initial teacher is the teacher; its traces are config before_rl above
    alone = make_plan(load_recipe(recipe), tmp_path / "runs-alone", load_stages())
    inputs = alone.stage("generate").inputs
    assert inputs["initial_teacher"].fingerprint == inputs["teacher"].fingerprint
    execute(alone, str(recipe), log=lambda message: None)
    plain = alone.stage("generate").artifact_dir
    assert not (plain / "data" / "before_rl").exists() and not (plain / "work" / "before_rl").exists()
    assert "before_rl" not in read_meta(plain).metrics and "reward_gain_vs_before_rl" not in read_meta(plain).metrics
    same = read(plain / "data")
    assert [(r["id"], r["candidate_index"], r["explanation"], r["teacher"]) for r in same] == [
        (r["id"], r["candidate_index"], r["explanation"], r["teacher"]) for r in before
    ]
    assert [r["reward"] for r in same] == pytest.approx([r["reward"] for r in before], abs=1e-5)

    # interrupted after both passes were scored: the re-run regenerates nothing and writes the same rows
    parts = {p: p.stat().st_mtime_ns for p in (artifact / "work" / "before_rl").rglob("*.parquet")}
    assert len(parts) == 4  # 5 questions in chunks of 4, generated and scored
    (artifact / "artifact.json").unlink()
    shutil.rmtree(artifact / "data")
    resumed = execute(
        make_plan(load_recipe(recipe, with_rl), runs, rl_registry(closing_teacher)), str(recipe), log=lambda m: None
    )
    assert resumed.ran == ["generate"]
    assert {p: p.stat().st_mtime_ns for p in (artifact / "work" / "before_rl").rglob("*.parquet")} == parts
    assert read(artifact / "data" / "before_rl") == before


def test_generate_shard_runs_both_passes(tmp_path, tiny_model_dir, closing_teacher, tiny_student_dir, data_dir):
    from factory.stages.generate import run_shard

    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir, data_dir, limit=5, n=1, before_rl=True)
    overrides, runs = ["stages.teacher_rl.enabled=true"], tmp_path / "runs"
    first = make_plan(load_recipe(recipe, overrides), runs, rl_registry(closing_teacher), only=("teacher_rl",))
    execute(first, str(recipe), log=lambda message: None)  # the teacher only: generate-shard needs it complete
    plan = make_plan(load_recipe(recipe, overrides), runs, rl_registry(closing_teacher))
    assert "generate shard 1/2 done" in run_shard(plan, 1, 2, log=lambda message: None)
    artifact = plan.stage("generate").artifact_dir
    for work in (artifact / "work", artifact / "work" / "before_rl"):
        names = [p.name for p in (work / "scored").glob("*.parquet")]
        assert names and all(name.startswith("s1of2-") for name in names), work
    assert not is_complete(artifact)
