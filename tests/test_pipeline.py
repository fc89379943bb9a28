"""Pipeline engine with stages registered by the test: caching, invalidation, resume, lineage, the
graph derived from the stages' declarations, one fingerprint rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import QUICKSTART_DATA, recipe_head

from factory.artifacts import is_complete, read_meta
from factory.dotted import flatten
from factory.errors import UserError
from factory.pipeline import Status, execute, make_plan
from factory.recipe import load_recipe
from factory.roles import Role
from factory.stages import base, load_stages
from factory.stages.base import Stage, StageResult, register

RECIPE = recipe_head("toy", "MODEL") + QUICKSTART_DATA


class Recorder:
    """Counts stage executions so tests can say exactly what ran."""

    def __init__(self):
        self.calls: list[str] = []


def make_stage(name: str, roles: tuple, recorder: Recorder, fail: bool = False) -> Stage:
    """A stage named like a real one, with the declarations `roles` = (consumes, produces, passes_on)."""

    class ToyStage(Stage):
        """Writes a payload derived from its config and its inputs' payloads."""

        version = 1
        consumes, produces, passes_on = roles
        sections = (f"stages.{name}",)

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
    return ToyStage()


TOY_ROLES = {
    "teacher_sft": ((Role.TEACHER, Role.TRAIN_DATA), Role.TEACHER, {}),
    "teacher_rl": (
        (Role.TEACHER, Role.REWARD_STUDENT, Role.TRAIN_DATA),
        Role.TEACHER,
        {Role.INITIAL_TEACHER: Role.TEACHER},
    ),
    "generate": ((Role.TEACHER, Role.REWARD_STUDENT, Role.TRAIN_DATA), Role.TRACES, {}),
    "distill": ((Role.TRACES, Role.DISTILL_BASE), Role.STUDENT, {}),
    "evaluate": ((Role.STUDENT,), Role.REPORT, {}),
}


def toy_registry(recorder: Recorder, failing: str | None = None) -> dict[str, Stage]:
    return {name: make_stage(name, roles, recorder, fail=(name == failing)) for name, roles in TOY_ROLES.items()}


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


def statuses(plan) -> dict[str, list[str]]:
    """The plan's stage names by status, each list in plan order."""
    grouped: dict[str, list[str]] = {}
    for planned in plan.stages:
        grouped.setdefault(planned.status, []).append(planned.name)
    return grouped


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
    assert statuses(plan) == {"cached": ["teacher_sft", "teacher_rl"], "run": ["generate", "distill", "evaluate"]}
    assert plan.stage("generate").changed == ["stages.generate.temperature"]
    assert "changed: stages.generate.temperature" in plan.stage("generate").reason
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
    assert "torch" in meta.versions and meta.config["stages"]["distill"]["epochs"] == 3.0


def test_initial_teacher_is_what_rl_started_from(recipe_path, tmp_path):
    registry = toy_registry(Recorder())
    consumes = (Role.TEACHER, Role.INITIAL_TEACHER, Role.REWARD_STUDENT, Role.TRAIN_DATA)
    registry["generate"] = make_stage("generate", (consumes, Role.TRACES, {}), Recorder())
    plan = make_plan(load_recipe(recipe_path), tmp_path / "runs", registry)
    inputs = plan.stage("generate").inputs
    assert inputs["teacher"].fingerprint == plan.stage("teacher_rl").fingerprint
    assert inputs["initial_teacher"].fingerprint == plan.stage("teacher_sft").fingerprint
    assert inputs["initial_teacher"].role == "initial_teacher"

    no_rl = make_plan(load_recipe(recipe_path, ["stages.teacher_rl.enabled=false"]), tmp_path / "runs", registry)
    inputs = no_rl.stage("generate").inputs
    assert (
        inputs["initial_teacher"].fingerprint == inputs["teacher"].fingerprint == no_rl.stage("teacher_sft").fingerprint
    )


class FilterTraces(Stage):
    """A stage this file alone adds: it refines the traces before distillation. It has no recipe section
    of its own (nothing turns it off) and reads an existing one; a stage with settings of its own adds a
    `Section` subclass as field `stages.<name>` of recipe.Stages."""

    name = "filter_traces"
    consumes = (Role.TRACES,)
    produces = Role.TRACES
    sections = ("reward",)

    def run(self, ctx):
        upstream = (ctx.inputs[Role.TRACES].artifact_dir / "payload.txt").read_text()
        (ctx.out_dir / "payload.txt").write_text(f"filter_traces[kl={ctx.recipe.reward.kl_coef}]({upstream})")
        return StageResult(summary="filtered")


def test_a_stage_added_by_one_module_is_placed_by_its_roles_planned_and_run(recipe_path, tmp_path, monkeypatch):
    recorder = Recorder()
    registry = toy_registry(recorder)
    monkeypatch.setattr(base, "REGISTRY", registry)  # @register fills this test's registry, not the package's
    register(FilterTraces)
    plan, report, _ = run(recipe_path, tmp_path / "runs", registry)
    order = ["teacher_sft", "teacher_rl", "generate", "filter_traces", "distill", "evaluate"]
    assert [s.name for s in plan.stages] == order
    assert plan.stage("distill").inputs[Role.TRACES].artifact_dir == plan.stage("filter_traces").artifact_dir
    payload = (plan.stage("evaluate").artifact_dir / "payload.txt").read_text()
    assert payload == "evaluate(distill(filter_traces[kl=3.0](generate(teacher_rl(teacher_sft())))))"
    assert read_meta(plan.stage("filter_traces").artifact_dir).kind == "dataset"

    plan, report, _ = run(recipe_path, tmp_path / "runs", registry, ["reward.batch_size=2", "reward.chunk_size=64"])
    assert report.ran == [] and len(report.cached) == 6  # result-neutral keys of its section change nothing
    plan = make_plan(load_recipe(recipe_path, ["reward.kl_coef=2.5"]), tmp_path / "runs", registry)
    status = {s.name: s.status for s in plan.stages}
    assert status["generate"] is Status.CACHED and status["filter_traces"] is Status.RUN
    assert plan.stage("filter_traces").changed == ["reward.kl_coef"]
    assert plan.stage("distill").reason == "input changed: traces"


def test_register_takes_roles_and_the_graph_refuses_a_cycle(recipe_path, tmp_path):
    class Untyped(Stage):
        name, consumes, produces = "untyped", ("traces",), Role.REPORT

    with pytest.raises(TypeError, match="Role members"):
        register(Untyped)

    class Backwards(Stage):  # makes traces from the student, which distill makes from the traces
        name, consumes, produces = "backwards", (Role.STUDENT,), Role.TRACES

    registry = {**toy_registry(Recorder()), "backwards": Backwards()}
    with pytest.raises(ValueError, match="cycle: .*distill .*after backwards"):
        make_plan(load_recipe(recipe_path), tmp_path / "runs", registry)


def test_one_fingerprint_rule_result_neutral_fields_are_left_out(recipe_path, tmp_path):
    """The real stages: fingerprints hash the declared sections minus the fields recipe.py marks."""
    stages = ("teacher_rl", "generate", "distill", "evaluate")

    def fingerprints(*overrides: str) -> dict[str, str]:
        plan = make_plan(load_recipe(recipe_path, list(overrides)), tmp_path / "runs", load_stages())
        return {name: plan.stage(name).fingerprint for name in stages}

    before = fingerprints()
    assert fingerprints("reward.batch_size=2", "reward.chunk_size=64", "reward.max_padding=0.5") == before
    assert fingerprints("stages.generate.batch_size=3", "stages.generate.shards=4") == before
    assert fingerprints("stages.teacher_rl.report_to=[tensorboard]")["teacher_rl"] == before["teacher_rl"]
    changed = fingerprints("reward.kl_coef=2.5")
    assert all(changed[name] != before[name] for name in stages)  # teacher_rl, generate, and downstream

    plan = make_plan(load_recipe(recipe_path), tmp_path / "runs", load_stages())
    for name in stages:  # every stage that builds student sequences hashes the student format
        keys = flatten(plan.stage(name).config)
        assert {"formats.student_system", "formats.student_padding", "formats.student_separator"} <= set(keys)
    assert "reward.kl_coef" in flatten(plan.stage("teacher_rl").config)
    assert "reward.batch_size" not in flatten(plan.stage("generate").config)


def test_distilled_baselines_are_stages_with_their_own_fingerprints(repo_root, tmp_path):
    """evaluate's baselines reference_traces / before_rl_traces are planned as stages (shown by `plan`,
    before evaluate, which takes their students by role); stages.distill's settings are theirs, so a
    changed learning rate runs both again, and evaluate after them; a baseline not listed is disabled."""
    from factory.artifacts import ArtifactMeta, mark_complete
    from factory.plan_view import render_plan

    recipe_file = repo_root / "recipes" / "quickstart.yaml"
    listed = ["stages.evaluate.baselines=[distill_base,reference_traces,before_rl_traces]"]
    registry = load_stages()
    plan = make_plan(load_recipe(recipe_file, listed), tmp_path / "runs", registry)
    names = [s.name for s in plan.stages]
    assert names.index("distill") < names.index("distill_reference") < names.index("distill_before_rl")
    assert names.index("distill_before_rl") < names.index("evaluate")
    reference, before_rl, evaluate = (plan.stage(n) for n in ("distill_reference", "distill_before_rl", "evaluate"))
    assert reference.status == before_rl.status == Status.RUN and reference.fingerprint != before_rl.fingerprint
    assert set(reference.config) == {"stages", "formats", "data"} and "distill" in reference.config["stages"]
    assert reference.inputs[Role.TRAIN_DATA].data is not None  # the reference thoughts
    assert before_rl.inputs[Role.TRACES].fingerprint == plan.stage("generate").fingerprint
    assert evaluate.inputs[Role.STUDENT_REFERENCE].fingerprint == reference.fingerprint
    assert evaluate.inputs[Role.STUDENT_BEFORE_RL].fingerprint == before_rl.fingerprint
    assert plan.repo_for(before_rl) == "local/quickstart-student-before-rl"  # a model repo of its own
    assert plan.repo_for(reference) == "local/quickstart-student-reference"
    from rich.console import Console

    console = Console(record=True, width=200)
    render_plan(plan, console)
    shown = console.export_text()
    for planned in (reference, before_rl):
        assert f"{planned.name}" in shown and planned.fingerprint[:12] in shown

    for planned in plan.stages:  # every planned stage done
        if planned.fingerprint:
            meta = ArtifactMeta(
                planned.stage.kind, planned.name, planned.stage.produces, planned.fingerprint, "quickstart", {}
            )
            mark_complete(planned.artifact_dir, meta)
    changed = make_plan(
        load_recipe(recipe_file, [*listed, "stages.distill.learning_rate=0.0002"]), tmp_path / "runs", registry
    )
    assert statuses(changed) == {
        "cached": ["teacher_sft", "teacher_rl", "generate"],
        "run": ["distill", "distill_reference", "distill_before_rl", "evaluate"],
    }

    quickstart = make_plan(
        load_recipe(recipe_file), tmp_path / "runs", registry
    )  # baselines [distill_base, before_rl_traces]
    assert quickstart.stage("distill_reference").status == Status.DISABLED
    assert quickstart.stage("distill_reference").reason == "stages.evaluate.baselines does not list reference_traces"
    assert (
        quickstart.stage("distill_before_rl").fingerprint == before_rl.fingerprint
    )  # evaluate's list is not its setting
    off = make_plan(load_recipe(recipe_file, ["stages.evaluate.enabled=false"]), tmp_path / "runs", registry)
    assert off.stage("distill_before_rl").status == Status.DISABLED
