"""The preflight: every check that needs no model runs in `validate`, `plan` and `run` before any work.

Each malformed recipe extends one valid, fully local recipe (a tiny model folder, JSON Lines train and
eval files) by a few lines. Every one must exit 2 from all three commands, with the recipe key and its
line (or the path, the column) in the message, without importing torch (no model is loaded) and
without writing anything under the run directory. All cases run in one subprocess (the CLI's own
`main`, in process) so the table stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from commands import python

BASE = """\
name: preflight
models:
  teacher:
    source: {model}
  student:
    source: {model}
  distill_base:
    source: {model}
data:
  train:
    source: {dir}/train.jsonl
    format: jsonl
    thought_column: thought
  eval:
    - name: held_out
      source: {dir}/eval.jsonl
      format: jsonl
stages:
  teacher_sft:
    global_batch_size: 4
    per_device_batch_size: 2
    max_length: 256
  teacher_rl:
    steps: 1
    prompts_per_step: 2
    generations_per_prompt: 2
    per_device_batch_size: 2
    max_prompt_length: 256
    max_completion_length: 32
  generate:
    engine: hf
    max_new_tokens: 32
  distill:
    global_batch_size: 4
    per_device_batch_size: 2
    max_length: 256
  evaluate:
    engine: hf
    max_new_tokens: 32
    baselines: [distill_base]
"""


@dataclass
class Case:
    """`extra` is appended to `extends: base.yaml` + `name: bad`; `line` is a text of `extra` whose line
    in bad.yaml the message must name; `needles` must all be in the message."""

    id: str
    extra: str
    needles: list[str]
    line: str | None = None
    options: list[str] = field(default_factory=list)
    marks: tuple = ()


CASES = [
    # ---- batch sizes of every training stage
    Case(
        "distill-batch",
        "stages:\n  distill:\n    global_batch_size: 5\n",
        ["stages.distill.global_batch_size", "give a multiple of 2"],
        "global_batch_size: 5",
    ),
    Case(
        "teacher-sft-batch",
        "stages:\n  teacher_sft:\n    global_batch_size: 7\n",
        ["stages.teacher_sft.global_batch_size", "give a multiple of 2"],
        "global_batch_size: 7",
    ),
    Case(
        "batches-with-processes",
        "stages:\n  teacher_rl:\n    enabled: false\nlaunch:\n  preset: ddp\n  num_processes: 3\n",
        ["2 problems", "stages.teacher_sft.global_batch_size", "stages.distill.global_batch_size", "2 x 3 = 6"],
    ),
    Case(
        "rl-rollouts",
        "stages:\n  teacher_rl:\n    per_device_batch_size: 3\n",
        ["stages.teacher_rl.per_device_batch_size", "rollouts per step"],
        "per_device_batch_size: 3",
    ),
    Case(
        "distilled-baseline-batch",
        "stages:\n  distill:\n    enabled: false\n    global_batch_size: 5\n  evaluate:\n    baselines: [reference_traces]\n",
        ["stages.distill.global_batch_size"],
        "global_batch_size: 5",
    ),
    Case(
        "batch-from-set",
        "",
        ["stages.distill.global_batch_size (--set stages.distill.global_batch_size)"],
        options=["--set", "stages.distill.global_batch_size=5"],
    ),
    # ---- settings that must agree
    Case(
        "rl-temperature",
        "stages:\n  teacher_rl:\n    temperature: 1.0\n",
        ["stages.teacher_rl.temperature", "reward.teacher_temperature = 0.7"],
        "temperature: 1.0",
    ),
    Case(
        "reward-temperature",
        "reward:\n  teacher_temperature: 0.9\n",
        ["reward.teacher_temperature", "stages.teacher_rl.temperature = 0.7"],
        "teacher_temperature: 0.9",
    ),
    Case(
        "rl-more-prompts-than-data",
        "data:\n  train:\n    limit: 1\n",
        ["data.train.limit", "prompts_per_step = 2"],
        "limit: 1",
    ),
    Case(
        "vllm-server-gpus",
        "launch:\n  vllm_mode: server\n  vllm_gpus: 3\n  tensor_parallel_size: 2\n",
        ["launch.vllm_gpus", "tensor_parallel_size = 2"],
        "vllm_gpus: 3",
    ),
    Case(
        "before-rl-baseline-without-inputs",
        "stages:\n  evaluate:\n    baselines: [before_rl_traces]\n",
        ["stages.evaluate.baselines", "stages.generate.before_rl: true"],
        "baselines: [before_rl_traces]",
    ),
    # ---- reference thoughts a stage trains on
    Case(
        "teacher-sft-without-thoughts",
        "data:\n  train:\n    thought_column: null\n",
        ["data.train.thought_column", "stages.teacher_sft trains on"],
        "thought_column: null",
    ),
    Case(
        "distill-without-thoughts",
        "data:\n  train:\n    thought_column: null\nstages:\n  teacher_sft:\n    enabled: false\n  generate:\n    enabled: false\n",
        ["data.train.thought_column", "stages.distill (stages.generate is disabled)"],
        "thought_column: null",
    ),
    Case(
        "reference-baseline-without-thoughts",
        "data:\n  train:\n    thought_column: null\nstages:\n  teacher_sft:\n    enabled: false\n"
        "  evaluate:\n    baselines: [reference_traces]\n",
        ["data.train.thought_column", "reference_traces"],
        "thought_column: null",
    ),
    # ---- data files: readable, the columns each stage needs (eval sets included)
    Case(
        "train-missing-column",
        "data:\n  train:\n    source: {dir}/train_no_solution.jsonl\n",
        ["data.train.source", "train_no_solution.jsonl", "no column 'solution'"],
        "train_no_solution.jsonl",
    ),
    Case(
        "train-not-found",
        "data:\n  train:\n    source: {dir}/missing.jsonl\n",
        ["data.train.source", "data file not found", "missing.jsonl"],
        "missing.jsonl",
    ),
    Case(
        "train-empty",
        "data:\n  train:\n    source: {dir}/empty.jsonl\n",
        ["data.train.source", "empty.jsonl", "no rows"],
        "empty.jsonl",
    ),
    Case(
        "eval-missing-answer",
        "data:\n  eval:\n    - name: held_out\n      source: {dir}/eval_no_answer.jsonl\n      format: jsonl\n",
        ["data.eval.0.source", "eval_no_answer.jsonl", "no column 'answer'"],
        "eval_no_answer.jsonl",
    ),
    Case(
        "eval-answer-column-renamed",
        "data:\n  eval:\n    - name: held_out\n      source: {dir}/eval.jsonl\n      format: jsonl\n      answer_column: gold\n",
        ["data.eval.0.source", "no column 'gold'"],
        "eval.jsonl",
    ),
    Case(
        "eval-not-json",
        "data:\n  eval:\n    - name: held_out\n      source: {dir}/garbage.jsonl\n      format: jsonl\n",
        ["data.eval.0.source", "garbage.jsonl line 1: not valid JSON"],
        "garbage.jsonl",
    ),
    Case(
        "eval-unknown-quickstart-split",
        "data:\n  eval:\n    - name: held_out\n      source: quickstart\n      format: quickstart\n      split: validation\n",
        ["data.eval.0.source", "no split 'validation'"],
        "source: quickstart",
    ),
    # ---- model folders
    Case(
        "model-without-weights",
        "models:\n  teacher:\n    source: {dir}/weightless\n",
        ["models.teacher.source", "weightless has config.json but no weights"],
        "weightless",
    ),
    Case(
        "model-path-missing",
        "models:\n  distill_base:\n    source: {dir}/no-such-model\n",
        ["models.distill_base.source", "model folder not found", "no-such-model"],
        "no-such-model",
    ),
    Case(
        "model-without-config",
        "models:\n  student:\n    source: {dir}/configless\n",
        ["models.student.source", "configless has no config.json"],
        "configless",
    ),
    Case(
        "unknown-packaged-model",
        "models:\n  student:\n    source: packaged:no-such-model\n",
        ["models.student.source", "unknown packaged model 'packaged:no-such-model'"],
        "packaged:no-such-model",
    ),
    Case(
        "not-a-model-source",
        "models:\n  teacher:\n    source: not a hub id!\n",
        ["models.teacher.source", "neither an existing local folder, a Hub id"],
        "not a hub id!",
    ),
    # ---- every mistake at once
    Case(
        "all-together",
        "models:\n  distill_base:\n    source: {dir}/weightless\nstages:\n  distill:\n    global_batch_size: 5\n"
        "  teacher_rl:\n    temperature: 1.0\n",
        [
            "3 problems",
            "models.distill_base.source",
            "stages.distill.global_batch_size",
            "stages.teacher_rl.temperature",
        ],
    ),
]

COMMANDS = ("validate", "plan", "run")
# Runs groups of commands; in a group that must be refused, a command that accepts the recipe ends the
# group (a `run` that got through would train for minutes).
DRIVER = r"""
import contextlib, io, json, sys
from factory import cli
results = []
for refuse, group in json.loads(sys.stdin.read()):
    accepted = False
    for args in group:
        if accepted:
            results.append({"code": None, "stderr": "not run: an earlier command accepted the recipe"})
            continue
        err = io.StringIO()
        sys.argv = ["factory", *args]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code
        results.append({"code": code, "stderr": err.getvalue()})
        accepted = refuse and code == 0
heavy = [m for m in ("torch", "transformers", "trl", "vllm") if m in sys.modules]
print(json.dumps({"results": results, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir) -> Path:
    """The base recipe and the files the cases point at."""
    root = tmp_path_factory.mktemp("preflight")
    rows = [
        {"question": f"What is {i} + 1?", "solution": f"\\boxed{{{i + 1}}}", "thought": "add one"} for i in range(4)
    ]
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "train_no_solution.jsonl", [{"question": r["question"], "thought": r["thought"]} for r in rows])
    write_jsonl(root / "eval.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    write_jsonl(root / "eval_no_answer.jsonl", [{"question": "What is 2 + 2?"}])
    (root / "empty.jsonl").write_text("")
    (root / "garbage.jsonl").write_text("question: not JSON\n")
    (root / "weightless").mkdir()
    shutil.copy(tiny_model_dir / "config.json", root / "weightless")
    (root / "configless").mkdir()
    shutil.copy(tiny_model_dir / "model.safetensors", root / "configless")
    (root / "base.yaml").write_text(BASE.format(model=tiny_model_dir, dir=root))
    return root


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def bad_recipe(world: Path, case_id: str, extra: str) -> tuple[Path, str]:
    folder = world / case_id
    folder.mkdir(exist_ok=True)
    text = f"extends: {world / 'base.yaml'}\nname: bad\n" + extra.replace("{dir}", str(world))
    (folder / "bad.yaml").write_text(text)
    return folder, text


def drive(world: Path, groups: list[tuple[bool, list[list[str]]]]) -> dict:
    """Run groups (must refuse?, commands) of factory commands in one fresh interpreter: each command's
    exit code and stderr, and the model libraries imported."""
    result = python("-c", DRIVER, input=json.dumps(groups), cwd=world, columns=1000, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def invocations(folder: Path, options: list[str]) -> list[list[str]]:
    recipe, runs = str(folder / "bad.yaml"), str(folder / "runs")
    return [
        ["validate", recipe, *options],
        ["plan", recipe, "--run-dir", runs, *options],
        ["run", recipe, "--run-dir", runs, *options],
    ]


@pytest.fixture(scope="module")
def outcomes(world) -> dict[str, tuple[str, list[dict]]]:
    """case id -> (bad.yaml's text, [validate, plan, run] results); all cases in one interpreter."""
    groups, texts = [], {}
    for case in CASES:
        folder, texts[case.id] = bad_recipe(world, case.id, case.extra)
        groups.append((True, invocations(folder, case.options)))
    driven = drive(world, groups)
    assert not driven["heavy"], f"a model library was imported: {driven['heavy']}"
    results = driven["results"]
    return {case.id: (texts[case.id], results[3 * i : 3 * i + 3]) for i, case in enumerate(CASES)}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_every_command_refuses_before_any_work(case, outcomes, world):
    text, results = outcomes[case.id]
    for command, result in zip(COMMANDS, results):
        message = " ".join(result["stderr"].split())
        assert result["code"] == 2, f"{command}: exit {result['code']}\n{result['stderr']}"
        assert "Traceback" not in message
        for needle in case.needles:
            assert needle in message, f"{command}: {needle!r} missing from:\n{result['stderr']}"
        if case.line:
            number = next(i for i, line in enumerate(text.splitlines(), 1) if case.line.replace("{dir}", "") in line)
            assert f"bad.yaml:{number}" in message, f"{command}: line {number} not named:\n{result['stderr']}"
    runs = world / case.id / "runs"
    assert not runs.exists() or not any(runs.rglob("*")), f"written under the run dir: {list(runs.rglob('*'))}"


def test_the_base_recipe_passes_and_warnings_name_key_and_line(world):
    """The cases fail for their own mistake: the base recipe validates and plans. A setting that runs
    but probably not as meant is a warning with its key and line, and the commands go on."""
    base, _ = bad_recipe(world, "valid", "")
    warned, text = bad_recipe(world, "warned", "stages:\n  generate:\n    temperature: 0.5\n  evaluate:\n    n: 2\n")
    driven = drive(world, [(False, invocations(base, [])[:2]), (False, invocations(warned, [])[:2])])
    assert not driven["heavy"]
    for result in driven["results"]:
        assert result["code"] == 0, result["stderr"]
    assert not any("warning" in result["stderr"] for result in driven["results"][:2])
    lines = {key: i for i, key in enumerate(text.splitlines(), 1)}
    for result in driven["results"][2:]:
        message = " ".join(result["stderr"].split())
        assert "warning: stages.generate.temperature (" in message and "reward.teacher_temperature = 0.7" in message
        assert f"bad.yaml:{lines['    temperature: 0.5']})" in message
        assert "warning: stages.evaluate.n (" in message and f"bad.yaml:{lines['    n: 2']})" in message


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) for name in ("wandb", "vllm")), reason="wandb or vllm is installed here"
)
def test_what_this_machine_lacks_stops_run_and_warns_in_validate_and_plan(world):
    """A tracking backend or vLLM missing here is no mistake in the recipe (it is often planned on a login
    node and run on a GPU node): validate and plan warn, `run` refuses before any work."""
    extra = "stages:\n  distill:\n    report_to: [wandb]\n  generate:\n    engine: vllm\n"
    folder, text = bad_recipe(world, "machine", extra)
    lines = {line: i for i, line in enumerate(text.splitlines(), 1)}
    validate, plan, run = drive(world, [(False, invocations(folder, []))])["results"]
    assert (validate["code"], plan["code"], run["code"]) == (0, 0, 2), run["stderr"]
    for result in (validate, plan, run):
        message = " ".join(result["stderr"].split())
        assert f"bad.yaml:{lines['    report_to: [wandb]']}): wandb is not installed on this machine" in message
        assert (
            f"stages.generate.engine ({folder}/bad.yaml:{lines['    engine: vllm']}): vllm is not installed" in message
        )
    assert "warning: stages.distill.report_to (" in validate["stderr"]
    assert "cannot run (2 problems" in run["stderr"]
    assert not (folder / "runs").exists()
