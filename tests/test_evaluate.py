"""Evaluation: scoring arithmetic, prompts, baselines, the stage through the pipeline, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny import TINY_DISTILL

from factory.recipe import Recipe
from factory.roles import Role
from factory.stages import load_stages
from factory.stages.base import ResolvedInput, StageContext, stage_view
from factory.stages.baselines import DistillBeforeRL, DistillReference
from factory.stages.distill import DistillStage
from factory.stages.evaluate import EvaluateStage, _baselines, overall, score_records, student_prompt_ids


def record(qid, correct, extracted="1", finish="stop", tokens=10):
    return {"id": qid, "correct": correct, "extracted": extracted, "finish_reason": finish, "completion_tokens": tokens}


def test_score_is_mean_over_questions_of_mean_over_samples():
    records = [
        record("a", True),
        record("a", False),  # question a: 0.5
        record("b", True),
        record("b", True),  # b: 1.0
        record("c", False, extracted=None, finish="length", tokens=30),
        record("c", False),  # c: 0.0
        record("d", False),
        record("d", False),  # d: 0.0
    ]
    scores = score_records(records)
    assert scores["accuracy"] == pytest.approx(100 * 1.5 / 4)
    assert (scores["questions"], scores["samples"]) == (4, 8)
    assert scores["no_answer"] == pytest.approx(1 / 8) and scores["truncated"] == pytest.approx(1 / 8)
    assert scores["mean_completion_tokens"] == pytest.approx((7 * 10 + 30) / 8)


def test_overall_is_the_plain_mean_of_sets():
    small = score_records([record("x", True)])  # 100 on 1 question
    large = score_records([record(str(i), i < 10) for i in range(100)])  # 10 on 100 questions
    assert overall({"aime": small, "math": large}) == pytest.approx(55.0)  # not 110/101 weighted


def test_prompt_is_the_training_prompt(tiny_model_dir):
    """The eval prompt is exactly the prefix the student saw before its completion in training."""
    from factory.formats import DEFAULT_STUDENT_SYSTEM, student_messages
    from factory.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = student_prompt_ids(tokenizer, "What is 2 + 3?", DEFAULT_STUDENT_SYSTEM)
    full = tokenizer.apply_chat_template(student_messages("What is 2 + 3?", "think", "\\boxed{5}"), tokenize=False)
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(ids)] == ids
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n") and DEFAULT_STUDENT_SYSTEM in text and "2 + 3" in text
    assert "SYS" in tokenizer.decode(student_prompt_ids(tokenizer, "q", "SYS"))


def make_recipe(
    model: Path, tmp_path: Path, *, distill: bool = True, generate: bool = False, baselines=("distill_base",)
):
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"q": f"Pick one of A-D ({i})", "a": "ABCD"[i]}) + "\n" for i in range(2)))
    off = {"enabled": False}
    return Recipe.model_validate(
        {
            "name": "eval-test",
            "models": {k: {"source": str(model)} for k in ("teacher", "student", "distill_base")},
            "data": {
                "train": {"source": "quickstart", "format": "quickstart", "limit": 8},
                "eval": [
                    {"name": "arith", "source": "quickstart", "format": "quickstart", "split": "eval", "limit": 3},
                    {
                        "name": "mc",
                        "source": str(mc),
                        "format": "jsonl",
                        "question_column": "q",
                        "answer_column": "a",
                        "kind": "multiple_choice",
                    },
                ],
            },
            "stages": {
                "teacher_sft": off,
                "teacher_rl": off,
                "generate": {"enabled": generate},
                "distill": {"enabled": distill, **TINY_DISTILL},
                "evaluate": {"engine": "hf", "max_new_tokens": 5, "batch_size": 4, "baselines": list(baselines)},
            },
        }
    )


def test_evaluate_stage_student_and_base_through_the_pipeline(tmp_path, tiny_student_dir, monkeypatch):
    from importlib.metadata import version

    from factory.artifacts import read_meta
    from factory.formats import DEFAULT_STUDENT_SYSTEM
    from factory.pipeline import execute, make_plan

    recipe = make_recipe(tiny_student_dir, tmp_path)
    registry = {"distill": DistillStage(), "evaluate": EvaluateStage()}
    plan = make_plan(recipe, tmp_path / "runs", registry)
    evaluate = plan.stage("evaluate")
    assert evaluate.inputs["student"].artifact_dir == plan.stage("distill").artifact_dir
    logged: list[str] = []
    execute(plan, "test.yaml", log=lambda line: logged.append(str(line)))
    folder = evaluate.artifact_dir
    report = json.loads((folder / "report.json").read_text())
    assert set(report["scores"]) == {"student", "distill_base"}
    for label in ("student", "distill_base"):
        scores = report["scores"][label]
        assert scores["engine"] == "hf" and scores["loaded_dtype"] == "torch.float32"
        for name, questions in (("arith", 3), ("mc", 2)):
            rows = pq.read_table(folder / "outputs" / label / f"{name}.parquet").to_pylist()
            assert len(rows) == questions and {r["sample"] for r in rows} == {0}
            assert all(r["completion_tokens"] <= 5 for r in rows)
            assert scores["sets"][name]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / questions)
        by_set = scores["sets"]
        assert scores["overall"] == pytest.approx((by_set["arith"]["accuracy"] + by_set["mc"]["accuracy"]) / 2)
    # the protocol: sampling, each set's template (SkyThought's by kind), grader and its version, the system prompt
    protocol = report["protocol"]
    assert protocol == {**protocol, "temperature": 0.0, "n": 1, "max_new_tokens": 5, "seed": 42}
    assert protocol["system_prompt"] == DEFAULT_STUDENT_SYSTEM
    arith, mc = protocol["sets"]["arith"], protocol["sets"]["mc"]
    assert arith["template_text"] == "Return your final response within \\boxed{}. {question}"
    assert (arith["grader"]["name"], arith["grader"]["version"]) == ("math-verify", version("math-verify"))
    assert mc["template"] == "skythought_gpqa" and mc["grader"]["name"] == "choice letter"
    rows = pq.read_table(folder / "outputs" / "student" / "mc.parquet").to_pylist()
    assert rows[0]["prompt"] == mc["template_text"].replace("{question}", rows[0]["question"])
    assert report["versions"]["transformers"] and report["versions"]["trl"]
    assert [s["resolved_revision"] for s in report["eval_sets"]][0] == "quickstart-v1"
    assert [s["questions"] for s in report["eval_sets"]] == [3, 2]
    # the printed per-set table
    table = next(line for line in logged if "overall" in line and "distill_base" in line)
    assert "arith" in table and "mc" in table and "student" in table
    # metrics in the card contract: per-set for the student; baselines and overall apart
    meta = read_meta(folder)
    assert meta.kind == "report"
    assert meta.metrics["arith"] == {"accuracy": report["scores"]["student"]["sets"]["arith"]["accuracy"]}
    assert meta.metrics["baselines"]["distill_base"]["overall"] == report["scores"]["distill_base"]["overall"]
    assert meta.metrics["protocol"] == protocol
    assert (folder / "scores.png").stat().st_size > 1000
    assert (folder / "scores.csv").read_text().splitlines()[0] == "model,arith,mc,overall"

    # resume: outputs that exist are not generated again (no engine may be opened)
    shutil.rmtree(folder / "outputs" / "distill_base")
    (folder / "artifact.json").unlink()
    opened: list[str] = []
    import factory.engines
    from factory.models import describe

    def recording_open(kind, source, *args, **kwargs):
        opened.append(describe(source))
        return real_open(kind, source, *args, **kwargs)

    real_open = factory.engines.open_engine
    monkeypatch.setattr(factory.engines, "open_engine", recording_open)
    execute(make_plan(recipe, tmp_path / "runs", registry), "test.yaml", log=lambda line: None)
    assert opened == [str(tiny_student_dir)]  # only the deleted model's sets ran again
    assert json.loads((folder / "report.json").read_text())["scores"]["student"] == report["scores"]["student"]


def ctx_for(recipe: Recipe, tmp_path: Path, student_is_artifact: bool) -> StageContext:
    student = (
        ResolvedInput(role="student", fingerprint="s", artifact_dir=tmp_path / "distill-x")
        if student_is_artifact
        else ResolvedInput(role="student", fingerprint="b", model=recipe.models.distill_base)
    )
    base = ResolvedInput(role="distill_base", fingerprint="b", model=recipe.models.distill_base)
    inputs = {"student": student, "distill_base": base}
    for role in (Role.STUDENT_REFERENCE, Role.STUDENT_BEFORE_RL):  # no baseline stage: the base (role fallback)
        inputs[role] = ResolvedInput(role=role, fingerprint="b", model=recipe.models.distill_base)
    view = stage_view(load_stages()["evaluate"], recipe)  # as the pipeline hands it: undeclared keys raise
    return StageContext(view, tmp_path, tmp_path / "out", "f", inputs=inputs)


def test_baselines_identical_to_the_student_are_skipped(tmp_path, tiny_model_dir):
    recipe = make_recipe(tiny_model_dir, tmp_path, distill=False, baselines=("distill_base",))
    run, skipped = _baselines(ctx_for(recipe, tmp_path, student_is_artifact=False))
    assert run == [] and "stages.distill is disabled" in skipped["distill_base"]
    recipe = make_recipe(tiny_model_dir, tmp_path, distill=True, generate=False, baselines=("reference_traces",))
    run, skipped = _baselines(ctx_for(recipe, tmp_path, student_is_artifact=True))
    assert run == [] and "reference traces" in skipped["reference_traces"]
    recipe = make_recipe(tiny_model_dir, tmp_path, baselines=("distill_base",))
    run, skipped = _baselines(ctx_for(recipe, tmp_path, student_is_artifact=True))
    assert [label for label, _, _ in run] == ["distill_base"] and skipped == {}


def test_reference_traces_baseline_is_a_stage_distilling_the_reference_thoughts(tmp_path, tiny_model_dir):
    """With generate on, the baseline is a student SFT'd on data.train's thoughts by stage
    distill_reference, whose artifact evaluate takes by role."""
    from factory.pipeline import execute, make_plan
    from factory.stages import load_stages

    recipe = make_recipe(tiny_model_dir, tmp_path, distill=True, generate=True, baselines=("reference_traces",))
    registry = load_stages()
    execute(make_plan(recipe, tmp_path / "runs", registry, only=("distill_reference",)), "test.yaml", log=print)
    plan = make_plan(recipe, tmp_path / "runs", registry)
    trained = plan.stage("distill_reference")
    assert trained.status == "cached" and trained.config["stages"]["distill"]["learning_rate"] == 1e-3
    folder = trained.artifact_dir
    assert (folder / "model" / "config.json").is_file() and json.loads((folder / "result.json").read_text())[
        "rows"
    ] == 8
    ctx = ctx_for(recipe, tmp_path, student_is_artifact=True)
    ctx.inputs[Role.STUDENT_REFERENCE] = plan.stage("evaluate").inputs[Role.STUDENT_REFERENCE]
    run, skipped = _baselines(ctx)
    assert [(label, source) for label, source, _ in run] == [
        ("reference_traces", str(folder / "model"))
    ] and skipped == {}
    assert "stages.distill" not in EvaluateStage().sections_for(recipe)  # the baseline's own fingerprint has them


def test_before_rl_traces_baseline_distills_on_the_before_rl_config(tmp_path, tiny_model_dir):
    """The student's twin: same settings, same questions, the explanations of the teacher before RL; the
    same student, numbers and weights, as distill_model gives on those rows (as evaluate trained it before)."""
    import pyarrow as pa
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from factory.artifacts import ArtifactMeta, mark_complete
    from factory.stages.distill import distill_model, trace_rows
    from factory.worker_job import open_rows

    data = make_recipe(tiny_model_dir, tmp_path, distill=True, generate=True).model_dump(mode="json")
    data["stages"]["teacher_rl"]["enabled"] = data["stages"]["generate"]["before_rl"] = True  # what the baseline needs
    data["stages"]["evaluate"]["baselines"] = ["before_rl_traces"]
    recipe = Recipe.model_validate(data)
    stage = DistillBeforeRL()
    assert stage.disabled_by(recipe) is None and DistillReference().disabled_by(recipe) is not None
    ctx = ctx_for(recipe, tmp_path, student_is_artifact=True)
    traces = tmp_path / "generate-x"
    ctx.inputs["traces"] = ResolvedInput(role="traces", fingerprint="g", artifact_dir=traces)
    own = replace(ctx, recipe=stage_view(stage, recipe))  # the baseline stage reads its own sections, same inputs
    result = stage.run(own)  # no before_rl config: nothing trained, with the reason
    assert "no before_rl config" in result.metrics["skipped"] and not (ctx.out_dir / "model").exists()
    mark_complete(
        ctx.out_dir, ArtifactMeta("model", stage.name, stage.produces, "s", recipe.name, {}, metrics=result.metrics)
    )
    ctx.inputs[Role.STUDENT_BEFORE_RL] = ResolvedInput(role=stage.produces, fingerprint="s", artifact_dir=ctx.out_dir)
    run, skipped = _baselines(ctx)
    assert run == [] and skipped == {"before_rl_traces": result.metrics["skipped"]}

    def write_config(folder: Path, explanation: str) -> None:
        folder.mkdir(parents=True)
        rows = [
            {
                "id": f"q{i}",
                "question": f"What is {i} + 1?",
                "solution": f"\\boxed{{{i + 1}}}",
                "explanation": f"{explanation} {i}",
            }
            for i in range(3)
        ]
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")

    write_config(traces / "data", "after RL")
    write_config(traces / "data" / "before_rl", "before RL")
    shutil.rmtree(ctx.out_dir)
    result = stage.run(own)
    folder = ctx.out_dir
    assert (folder / "model" / "config.json").is_file() and result.metrics["baseline"] == "before_rl_traces"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trained_on = [  # the supervised text of each row the worker trained on
        tokenizer.decode([label for label in row["labels"] if label != -100])
        for row in open_rows(folder / "rows" / "rows.arrow")
    ]
    assert len(trained_on) == 3
    assert all("before RL" in text and "after RL" not in text for text in trained_on)
    mark_complete(
        folder, ArtifactMeta("model", stage.name, stage.produces, "s", recipe.name, {}, metrics=result.metrics)
    )
    run, skipped = _baselines(ctx)
    assert [(label, source) for label, source, _ in run] == [
        ("before_rl_traces", str(folder / "model"))
    ] and not skipped

    # the student evaluate distilled itself before this stage existed: same rows, settings, seed
    inside = tmp_path / "evaluate-f" / "baselines" / "before_rl_traces"
    rows = trace_rows(ctx.inputs["traces"], print, config="before_rl")
    before = distill_model(
        rows=rows,
        base=ctx.inputs["distill_base"],
        recipe=recipe,
        out_dir=inside,
        log=print,
        run_name="eval-test-before-rl-traces-f",
    )
    for key in ("rows", "steps", "supervised_tokens", "first_loss", "last_loss"):
        assert result.metrics[key] == before[key], key
    ours, theirs = load_file(folder / "model" / "model.safetensors"), load_file(inside / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_multiple_choice_gold_is_checked_before_loading(tmp_path, tiny_model_dir):
    from factory.errors import UserError
    from factory.stages.evaluate import load_eval_sets

    recipe = make_recipe(tiny_model_dir, tmp_path)
    (tmp_path / "mc.jsonl").write_text(json.dumps({"q": "Which?", "a": "forty-two"}) + "\n")
    with pytest.raises(UserError, match=r"data.eval.1 \(mc\).*not a choice letter"):
        load_eval_sets(recipe, print)


@pytest.mark.slow
def test_smollm2_quickstart_eval_prints_the_table(repo_root, tmp_path):
    """The real small model on the bundled eval split, through the CLI (minutes on a CPU)."""
    import subprocess
    import sys

    off = [f"--set=stages.{s}.enabled=false" for s in ("teacher_sft", "teacher_rl", "generate", "distill")]
    off.append("--set=stages.evaluate.baselines=[]")  # before_rl_traces needs the stages just disabled
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "run",
            str(repo_root / "recipes" / "quickstart.yaml"),
            *off,
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluation (accuracy, %)" in result.stdout and "overall" in result.stdout
    report = json.loads(next((tmp_path / "quickstart" / "artifacts").glob("evaluate-*/report.json")).read_text())
    from factory.recipe import load_recipe

    expected = load_recipe(repo_root / "recipes" / "quickstart.yaml").data.eval[0].limit
    assert report["scores"]["student"]["sets"]["quickstart"]["questions"] == expected


def test_estimate_counts_the_distillation_of_distilled_baselines(repo_root):
    """evaluate counts each baseline's generation; the baseline's distillation is its own stage's estimate."""
    from factory.recipe import load_recipe

    recipe = load_recipe(repo_root / "recipes" / "quickstart.yaml")
    with_baseline = EvaluateStage().estimate(recipe)
    without = EvaluateStage().estimate(
        load_recipe(repo_root / "recipes" / "quickstart.yaml", ["stages.evaluate.baselines=[distill_base]"])
    )
    one_generation = without["tokens"] / 2  # student + distill_base, each the same generation bound
    assert with_baseline["tokens"] == without["tokens"] + one_generation
    assert with_baseline["flops"] == pytest.approx(without["flops"] * 1.5)
    assert DistillBeforeRL().estimate(recipe) == DistillReference().estimate(recipe) == DistillStage().estimate(recipe)
