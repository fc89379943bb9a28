"""Pipeline engine with stages registered by the test: caching, invalidation, resume, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.artifacts import is_complete, read_meta
from factory.errors import UserError
from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages.base import Stage, StageResult

RECIPE = """\
name: toy
models:
  teacher: {source: MODEL}
  student: {source: MODEL}
  distill_base: {source: MODEL}
data:
  train: {source: quickstart, format: quickstart}
  eval:
    - {name: held_out, source: quickstart, format: quickstart, split: eval}
"""


class Recorder:
    """Counts stage executions so tests can say exactly what ran."""

    def __init__(self):
        self.calls: list[str] = []


def make_stage(name: str, consumes: tuple[str, ...], section: str, recorder: Recorder, fail: bool = False) -> Stage:
    class ToyStage(Stage):
        """Writes a payload derived from its config and its inputs' payloads."""

        version = 1

        def config(self, recipe):
            return getattr(recipe.stages, section).model_dump(mode="json")

        def run(self, ctx):
            recorder.calls.append(self.name)
            upstream = [
                (item.artifact_dir / "payload.txt").read_text() for item in ctx.inputs.values() if item.is_artifact
            ]
            (ctx.out_dir / "partial.txt").write_text("started")
            if fail:
                raise RuntimeError("killed midway")
            (ctx.out_dir / "payload.txt").write_text(f"{self.name}({'+'.join(upstream)})")
            return StageResult(metrics={"calls": len(recorder.calls)}, summary=f"{self.name} ok")

    ToyStage.name = name
    ToyStage.consumes = consumes
    return ToyStage()


def toy_registry(recorder: Recorder, failing: str | None = None) -> dict[str, Stage]:
    specs = {
        "teacher_sft": (("teacher", "train_data"), "teacher_sft"),
        "teacher_rl": (("teacher", "reward_student", "train_data"), "teacher_rl"),
        "generate": (("teacher", "reward_student", "train_data"), "generate"),
        "distill": (("traces", "distill_base"), "distill"),
        "evaluate": (("student",), "evaluate"),
    }
    return {
        name: make_stage(name, consumes, section, recorder, fail=(name == failing))
        for name, (consumes, section) in specs.items()
    }


@pytest.fixture
def recipe_path(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE.replace("MODEL", str(tiny_model_dir)))
    return path


def run(recipe_path: Path, run_dir: Path, registry, overrides=(), **options):
    recipe = load_recipe(recipe_path, list(overrides))
    plan = make_plan(recipe, run_dir, registry, **options)
    lines: list[str] = []
    report = execute(plan, str(recipe_path), log=lines.append)
    return plan, report, lines


def test_second_run_executes_nothing_and_says_why(recipe_path, tmp_path):
    recorder = Recorder()
    registry = toy_registry(recorder)
    plan, report, _ = run(recipe_path, tmp_path / "runs", registry)
    assert recorder.calls == ["teacher_sft", "teacher_rl", "generate", "distill", "evaluate"]
    final = plan.stage("evaluate").artifact_dir / "payload.txt"
    assert final.read_text() == "evaluate(distill(generate(teacher_rl(teacher_sft()))))"

    plan, report, lines = run(recipe_path, tmp_path / "runs", registry)
    assert recorder.calls == ["teacher_sft", "teacher_rl", "generate", "distill", "evaluate"]
    assert report.ran == [] and len(report.cached) == 5
    assert all("complete artifact with this fingerprint" in line for line in lines if line.startswith("[cached]"))
    assert sum(line.startswith("[cached]") for line in lines) == 5


def test_changed_hyperparameter_reruns_that_stage_and_downstream_only(recipe_path, tmp_path):
    recorder = Recorder()
    registry = toy_registry(recorder)
    run(recipe_path, tmp_path / "runs", registry)
    recorder.calls.clear()

    recipe = load_recipe(recipe_path, ["stages.generate.temperature=0.9"])
    plan = make_plan(recipe, tmp_path / "runs", registry)
    status = {s.name: s.status for s in plan.stages}
    assert status == {"teacher_sft": "cached", "teacher_rl": "cached", "generate": "run", "distill": "run", "evaluate": "run"}
    assert plan.stage("generate").changed == ["temperature"]
    assert "changed: temperature" in plan.stage("generate").reason
    assert "input changed: traces" in plan.stage("distill").reason

    run(recipe_path, tmp_path / "runs", registry, ["stages.generate.temperature=0.9"])
    assert recorder.calls == ["generate", "distill", "evaluate"]
    # the earlier artifact of generate is still there, untouched
    generate_dirs = sorted((tmp_path / "runs/toy/artifacts").glob("generate-*"))
    assert len(generate_dirs) == 2 and all(is_complete(d) for d in generate_dirs)


def test_disabled_stage_is_bypassed_and_base_inputs_are_used(recipe_path, tmp_path):
    recorder = Recorder()
    plan, _, _ = run(recipe_path, tmp_path / "runs", toy_registry(recorder), ["stages.teacher_sft.enabled=false"])
    assert recorder.calls == ["teacher_rl", "generate", "distill", "evaluate"]
    assert plan.stage("teacher_rl").inputs["teacher"].model is not None
    assert plan.stage("teacher_sft").status == "disabled"


def test_unregistered_stage_blocks_downstream_and_plan_says_so(recipe_path, tmp_path):
    registry = toy_registry(Recorder())
    del registry["generate"]
    plan = make_plan(load_recipe(recipe_path), tmp_path / "runs", registry)
    status = {s.name: (s.status, s.reason) for s in plan.stages}
    assert status["generate"] == ("unregistered", "stage not implemented in this build")
    assert status["distill"][0] == "blocked" and "generate" in status["distill"][1]
    assert status["teacher_rl"][0] == "run"


def test_interrupted_stage_resumes_in_place_and_completion_is_last(recipe_path, tmp_path):
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="killed midway"):
        run(recipe_path, tmp_path / "runs", toy_registry(recorder, failing="generate"))
    recipe = load_recipe(recipe_path)
    plan = make_plan(recipe, tmp_path / "runs", toy_registry(recorder))
    generate = plan.stage("generate")
    assert (generate.artifact_dir / "partial.txt").exists() and not is_complete(generate.artifact_dir)
    assert generate.status == "resume"
    assert plan.stage("teacher_rl").status == "cached"
    recorder.calls.clear()
    run(recipe_path, tmp_path / "runs", toy_registry(recorder))
    assert recorder.calls == ["generate", "distill", "evaluate"]


def test_force_only_and_from(recipe_path, tmp_path):
    recorder = Recorder()
    registry = toy_registry(recorder)
    runs = tmp_path / "runs"
    run(recipe_path, runs, registry)
    recorder.calls.clear()
    run(recipe_path, runs, registry, force=("distill",))
    assert recorder.calls == ["distill"]
    assert len(list((runs / "toy/artifacts").glob("distill-*.replaced-*"))) == 1
    recorder.calls.clear()
    run(recipe_path, runs, registry, from_stage="generate")
    assert recorder.calls == ["generate", "distill", "evaluate"]
    recorder.calls.clear()
    with pytest.raises(UserError, match="evaluate needs the 'student' artifact of distill"):
        run(recipe_path, runs, registry, ["stages.distill.epochs=2"], only=("evaluate",))
    run(recipe_path, runs, registry, ["stages.distill.epochs=2"], only=("distill", "evaluate"))
    assert recorder.calls == ["distill", "evaluate"]
    with pytest.raises(UserError, match="nosuch"):
        make_plan(load_recipe(recipe_path), runs, registry, only=("nosuch",))


def test_only_refuses_when_upstream_missing(recipe_path, tmp_path):
    registry = toy_registry(Recorder())
    with pytest.raises(UserError, match="needs the 'traces' artifact of generate"):
        make_plan(load_recipe(recipe_path), tmp_path / "runs", registry, only=("distill",))


def test_manifest_records_lineage_and_metadata(recipe_path, tmp_path):
    plan, _, _ = run(recipe_path, tmp_path / "runs", toy_registry(Recorder()))
    manifest = json.loads((tmp_path / "runs/toy/manifest.json").read_text())
    distill = manifest["stages"]["distill"]
    assert distill["inputs"]["traces"] == manifest["stages"]["generate"]["fingerprint"]
    assert distill["input_sources"]["distill_base"].startswith(str(plan.recipe.models.distill_base.source))
    meta = read_meta(plan.stage("distill").artifact_dir)
    assert meta.kind == "model" and meta.role == "student"
    traces_ref = next(ref for ref in meta.inputs if ref.role == "traces")
    assert traces_ref.fingerprint == plan.stage("generate").fingerprint
    assert "torch" in meta.versions and meta.config["epochs"] == 3.0


def test_initial_teacher_is_what_rl_started_from(recipe_path, tmp_path):
    registry = toy_registry(Recorder())
    registry["generate"] = make_stage(
        "generate", ("teacher", "initial_teacher", "reward_student", "train_data"), "generate", Recorder()
    )
    plan = make_plan(load_recipe(recipe_path), tmp_path / "runs", registry)
    inputs = plan.stage("generate").inputs
    assert inputs["teacher"].fingerprint == plan.stage("teacher_rl").fingerprint
    assert inputs["initial_teacher"].fingerprint == plan.stage("teacher_sft").fingerprint
    assert inputs["initial_teacher"].role == "initial_teacher"

    no_rl = make_plan(load_recipe(recipe_path, ["stages.teacher_rl.enabled=false"]), tmp_path / "runs", registry)
    inputs = no_rl.stage("generate").inputs
    assert inputs["initial_teacher"].fingerprint == inputs["teacher"].fingerprint == no_rl.stage("teacher_sft").fingerprint
