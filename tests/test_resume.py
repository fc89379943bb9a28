"""Exact resume of the training stages: a stage killed with SIGKILL (right after its final checkpoint,
mid-run, or between result.json and its checkpoint clean-up) ends, run again, as an uninterrupted run
does: the same weights (max |diff| 0 on CPU), step count, logged losses and metrics.

The kill is real: the stage runs through the pipeline in a child process whose trainer gets a callback
(added by the driver below, test code only) that sends SIGKILL to its own process at the chosen moment.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory.artifacts import is_complete
from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: threads only oversubscribe a shared CPU

# argv: recipe, run dir, when ("final": after the last checkpoint; "N": after optimizer step N, before its
# checkpoint; "cleanup": after result.json, before the checkpoints are dropped)
DRIVER = """\
import os, signal, sys
from pathlib import Path
from transformers import Trainer, TrainerCallback

recipe, runs, when = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # the checkpoint of this step is complete
        if when == "final" and state.global_step >= state.max_steps:
            die()

    def on_step_end(self, args, state, control, **kwargs):  # before this step's checkpoint
        if when.isdigit() and state.global_step == int(when):
            die()

train = Trainer.train
def train_then_die(self, *args, **kwargs):
    self.add_callback(Kill())
    return train(self, *args, **kwargs)
Trainer.train = train_then_die

if when == "cleanup":
    from factory import training
    write = training.write_json_atomic
    def write_then_die(path, data):
        write(path, data)
        if Path(path).name == training.RESULT_FILE:
            die()
    training.write_json_atomic = write_then_die

from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages
execute(make_plan(load_recipe(recipe), runs, load_stages()), recipe, log=print)
"""

# 8 rows in batches of 2: 4 optimizer steps an epoch, so step 5 is no epoch's end (where the final
# checkpoint used to resume into one more step) and a resume from step 2 crosses an epoch boundary.
SFT = {
    "learning_rate": 1.0e-3,
    "lr_scheduler": "constant",  # a decayed learning rate would hide an extra step in the weights
    "max_steps": 5,
    "global_batch_size": 2,
    "per_device_batch_size": 2,
    "max_length": 512,
    "bf16": False,
    "save_steps": 2,
}
RL = {  # one prompt's 4 generations a step, 8 prompts: step 3 is no epoch's end either
    "steps": 3,
    "prompts_per_step": 1,
    "generations_per_prompt": 4,
    "per_device_batch_size": 4,
    "learning_rate": 1.0e-3,
    "beta": 0.04,
    "ref_sync_steps": 1,
    "max_prompt_length": 2048,
    "max_completion_length": 8,
    "gradient_checkpointing": False,
    "bf16": False,
    "save_steps": 2,
}
SETTINGS = {"teacher_sft": SFT, "distill": {**SFT, "packing": False}, "teacher_rl": RL}
STEPS = {"teacher_sft": 5, "distill": 5, "teacher_rl": 3}
CURVES = {"teacher_sft": "loss_curve.csv", "distill": "loss_curve.csv", "teacher_rl": "reward_curve.csv"}


def write_recipe(folder: Path, stage: str, teacher: Path, student: Path) -> Path:
    stages = {name: {"enabled": False} for name in ("teacher_sft", "teacher_rl", "generate", "distill", "evaluate")}
    stages[stage] = SETTINGS[stage]
    recipe = {
        "name": f"resume-{stage}",
        "models": {
            "teacher": {"source": str(teacher)},
            "student": {"source": str(student)},
            "distill_base": {"source": str(student)},
        },
        "data": {"train": {"source": "quickstart", "format": "quickstart", "limit": 8}},
        "reward": {"batch_size": 4},
        "stages": stages,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def artifact_dir(recipe: Path, runs: Path, stage: str) -> Path:
    return make_plan(load_recipe(recipe), runs, load_stages()).stage(stage).artifact_dir


def run(recipe: Path, runs: Path, stage: str) -> Path:
    plan = make_plan(load_recipe(recipe), runs, load_stages())
    execute(plan, str(recipe), log=lambda line: None)
    folder = plan.stage(stage).artifact_dir
    assert is_complete(folder)
    return folder


def kill(recipe: Path, runs: Path, when: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.run(
        [sys.executable, "-c", DRIVER, str(recipe), str(runs), when],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert child.returncode == -9, child.stderr[-3000:]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


def curve(folder: Path, stage: str) -> list[dict[str, str]]:
    with (folder / CURVES[stage]).open() as handle:
        return list(csv.DictReader(handle))


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def checkpoints(folder: Path) -> list[str]:
    return sorted(path.name for path in (folder / "checkpoints").glob("checkpoint-*"))


def assert_same_run(stage: str, resumed: Path, reference: Path, resumed_from: int) -> None:
    """Weights bit for bit, the logged curve, and every metric but where the run resumed from."""
    a, b = weights(resumed), weights(reference)
    assert a.keys() == b.keys()
    assert max((a[name] - b[name]).abs().max().item() for name in a) == 0
    assert curve(resumed, stage) == curve(reference, stage)
    assert len(curve(resumed, stage)) == STEPS[stage]
    got, want = result(resumed), result(reference)
    assert got.pop("resumed_from_step") == resumed_from and want.pop("resumed_from_step") == 0
    assert got == want and got["steps"] == STEPS[stage]
    if stage == "teacher_rl":  # every scored rollout, step by step
        assert (resumed / "rollouts.jsonl").read_text() == (reference / "rollouts.jsonl").read_text()
    assert not (resumed / "checkpoints").exists()


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_model_dir, tiny_student_dir) -> dict[str, Path]:
    """Each stage run once, uninterrupted."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return {
        stage: run(write_recipe(tmp, stage, tiny_model_dir, tiny_student_dir), tmp / "runs", stage)
        for stage in SETTINGS
    }


@pytest.mark.parametrize("stage", list(SETTINGS))
def test_killed_right_after_the_final_checkpoint(stage, references, tmp_path, tiny_model_dir, tiny_student_dir):
    recipe, runs = write_recipe(tmp_path, stage, tiny_model_dir, tiny_student_dir), tmp_path / "runs"
    kill(recipe, runs, "final")
    folder = artifact_dir(recipe, runs, stage)
    final = STEPS[stage]
    assert checkpoints(folder) == sorted(f"checkpoint-{step}" for step in {*range(2, final, 2), final})
    assert not (folder / "result.json").exists()
    saved = folder / "checkpoints"  # Adam's state only where training can go on from: not in the final checkpoint
    assert (saved / "checkpoint-2" / "optimizer.pt").is_file() and not (
        saved / f"checkpoint-{final}" / "optimizer.pt"
    ).exists()
    assert_same_run(stage, run(recipe, runs, stage), references[stage], resumed_from=final)


@pytest.mark.parametrize("stage", list(SETTINGS))
def test_killed_mid_run(stage, references, tmp_path, tiny_model_dir, tiny_student_dir):
    recipe, runs = write_recipe(tmp_path, stage, tiny_model_dir, tiny_student_dir), tmp_path / "runs"
    kill(recipe, runs, "3")
    folder = artifact_dir(recipe, runs, stage)
    assert checkpoints(folder) == ["checkpoint-2"]
    assert_same_run(stage, run(recipe, runs, stage), references[stage], resumed_from=2)


def test_killed_between_result_and_checkpoint_cleanup(references, tmp_path, tiny_model_dir, tiny_student_dir):
    """The next run finds the stage trained (result.json), publishes it and drops the leftover checkpoints."""
    recipe, runs = write_recipe(tmp_path, "distill", tiny_model_dir, tiny_student_dir), tmp_path / "runs"
    kill(recipe, runs, "cleanup")
    folder = artifact_dir(recipe, runs, "distill")
    assert (folder / "result.json").is_file() and not is_complete(folder)
    assert checkpoints(folder) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    stamp = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    assert_same_run("distill", run(recipe, runs, "distill"), references["distill"], resumed_from=0)
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again


def test_whole_run_mean_loss_weighs_each_log_by_its_steps():
    from factory.training import mean_loss

    history = [{"loss": 4.0, "step": 2}, {"loss": 1.0, "step": 3}, {"train_loss": 9.0, "step": 3}, {"eval_loss": 7.0}]
    assert mean_loss(history) == (4.0 * 2 + 1.0) / 3
    assert mean_loss([{"train_runtime": 1.0}]) is None
