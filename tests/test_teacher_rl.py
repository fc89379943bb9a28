"""Teacher RL: GRPO with the RLT reward on tiny models, on one and on two processes; resume after a kill."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from tiny import recipe_head

from factory.artifacts import is_complete, read_meta
from factory.errors import UserError
from factory.formats import teacher_prompt_ids
from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages
from factory.stages.base import stage_view

RECIPE = """\
data:
  train: {{source: quickstart, format: quickstart, limit: 8}}
reward: {{max_length: 2060, batch_size: 4}}
stages:
  teacher_sft: {{enabled: false}}
  teacher_rl:
    steps: 2
    prompts_per_step: 2
    generations_per_prompt: 4
    per_device_batch_size: 4
    learning_rate: 1.0e-3
    beta: 0.04
    ref_sync_steps: 1
    max_prompt_length: 2048
    max_completion_length: 12
    gradient_checkpointing: false
    bf16: false
    save_steps: 1
  generate: {{enabled: false}}
  distill: {{enabled: false}}
  evaluate: {{enabled: false}}
launch: {{main_process_port: {port}}}
"""


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: threads only oversubscribe a shared CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_recipe(folder: Path, teacher: Path, student: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rl.yaml"
    path.write_text(recipe_head("rl", teacher, student) + RECIPE.format(port=free_port()))
    return path


def run_rl(recipe_path: Path, run_dir: Path, overrides: list[str] = ()):
    recipe = load_recipe(recipe_path, list(overrides))
    plan = make_plan(recipe, run_dir, load_stages())
    execute(plan, str(recipe_path), log=print)
    return plan.stage("teacher_rl")


def rollouts(artifact: Path) -> list[dict]:
    return [json.loads(line) for line in (artifact / "rollouts.jsonl").read_text().splitlines()]


def check_advantages(records: list[dict]) -> None:
    """TRL's advantages are (r - group mean) / (group std + 1e-4), a group being one prompt's
    generations of one step, whichever rank scored them (std with Bessel's correction)."""
    groups = defaultdict(list)
    for record in records:
        groups[record["step"], record["id"]].append(record)
    for group in groups.values():
        rewards = [r["reward"] for r in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))
        for record in group:
            assert record["advantage"] == pytest.approx((record["reward"] - mean) / (std + 1e-4), rel=1e-4, abs=1e-5)


def check_reward_components(records: list[dict], alpha: float = 0.01, kl_coef: float = 3.0) -> None:
    for r in records:
        expected = (
            (r["r_ss_mean"] + alpha * r["r_ss_min"]) - kl_coef * (r["kl_mean"] + alpha * r["kl_max"]) + r["penalty"]
        )
        assert r["reward"] == pytest.approx(expected, rel=1e-5)
        assert r["penalty"] == (0.0 if r["closed"] else -1.0)
        assert 0 <= r["explanation_tokens"] <= 12


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, tiny_student_dir):
    tmp = tmp_path_factory.mktemp("rl1")
    return run_rl(write_recipe(tmp, tiny_model_dir, tiny_student_dir), tmp / "runs")


def test_grpo_with_rlt_reward_runs_two_steps_on_one_process(one_process):
    artifact = one_process.artifact_dir
    assert is_complete(artifact)
    meta = read_meta(artifact)
    assert meta.metrics["steps"] == 2 and meta.metrics["rollouts_per_step"] == 8
    assert meta.metrics["prompts"] == 8 and meta.metrics["prompts_dropped_too_long"] == 0
    records = rollouts(artifact)
    assert [r["step"] for r in records] == [1] * 8 + [2] * 8
    groups = defaultdict(int)
    for record in records:
        groups[record["step"], record["id"]] += 1
    assert sorted(groups.values()) == [4, 4, 4, 4]  # 2 prompts x 4 generations per step
    check_reward_components(records)
    check_advantages(records)
    with (artifact / "reward_curve.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in curve] == [1, 2]
    for row in curve:  # the logged per-step figures are the means over that step's rollouts
        step = [r for r in records if r["step"] == int(row["step"])]
        assert float(row["reward"]) == pytest.approx(sum(r["reward"] for r in step) / 8, rel=1e-5)
        assert float(row["r_ss"]) == pytest.approx(
            sum(r["r_ss_mean"] + 0.01 * r["r_ss_min"] for r in step) / 8, rel=1e-5
        )
        assert float(row["penalty_rate"]) == sum(not r["closed"] for r in step) / 8
        assert float(row["explanation_tokens"]) == sum(r["explanation_tokens"] for r in step) / 8
    assert float(curve[0]["kl_to_reference"]) == 0.0 < float(curve[1]["kl_to_reference"])  # the policy moved
    assert (artifact / "reward_curve.png").stat().st_size > 1000
    assert (artifact / "model" / "model.safetensors").is_file() and not list(artifact.glob("checkpoints/checkpoint-*"))


def test_a_sum_of_reward_terms_trains_and_logs_every_component(tmp_path, tiny_model_dir, tiny_student_dir):
    """reward.terms [rlt, correct_generation]: the worker builds the sum through factory.rewards.build and logs
    each component per step; the rollouts hold the sum, the curve the terms."""
    terms = ["reward.terms=[rlt, correct_generation]", "reward.correct_generation_coeff=0.5"]
    generation = ["reward.correct_generation.rollouts=2", "reward.correct_generation.max_new_tokens=4"]
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir)
    planned = run_rl(recipe, tmp_path / "runs", [*terms, *generation, "stages.teacher_rl.steps=1"])
    records = rollouts(planned.artifact_dir)
    assert len(records) == 8
    for r in records:
        assert r["reward"] == r["rlt.reward"] + 0.5 * r["correct_generation.reward"]
        assert r["correct_generation.reward"] in (0.0, 0.5, 1.0) and r["correct_generation.answered"] in (0.0, 0.5, 1.0)
        rlt = {name.removeprefix("rlt."): value for name, value in r.items() if name.startswith("rlt.")}
        check_reward_components([{**r, **rlt}])
    with (planned.artifact_dir / "reward_curve.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    for name in ("reward", "rlt.reward", "correct_generation.reward", "correct_generation.answered", "rlt.kl_mean"):
        assert float(row[name]) == pytest.approx(sum(r[name] for r in records) / 8, rel=1e-5), name
    assert float(row["r_ss"]) == pytest.approx(sum(r["rlt.r_ss_mean"] + 0.01 * r["rlt.r_ss_min"] for r in records) / 8)
    metrics = read_meta(planned.artifact_dir).metrics
    assert metrics["correct_generation.reward_first_third"] == pytest.approx(float(row["correct_generation.reward"]))
    assert metrics["r_ss_first_third"] == pytest.approx(float(row["r_ss"]))


def trainer_job(artifact: Path, out_dir: Path, steps: int):
    """The job of a finished run, pointed at a fresh folder, for building trainers in the test process."""
    from factory.worker_job import ROWS_DIR, WorkerJob, read_job

    job = read_job(artifact / "job.json").model_dump(mode="json")
    job["out_dir"] = str(out_dir)
    job["recipe"]["stages"]["teacher_rl"]["steps"] = steps
    shutil.copytree(artifact / ROWS_DIR, out_dir / ROWS_DIR)
    return WorkerJob.model_validate(job)


def test_grpo_generates_from_the_exact_prefilled_teacher_prompt(one_process, tmp_path):
    """What TRL's generation feeds the policy is formats.teacher_prompt_ids (left-padded), not a re-tokenised text."""
    from factory.stages.teacher_rl_worker import build_trainer
    from factory.worker_job import open_rows

    job = trainer_job(one_process.artifact_dir, tmp_path, steps=1)
    trainer, tokenizer, _ = build_trainer(job)
    rows = open_rows(job.rows_file).select(range(3)).to_list()
    seen = []
    generate = trainer.model.generate

    def recording_generate(**kwargs):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return generate(**kwargs)

    trainer.model.generate = recording_generate
    trainer.model.train()
    trainer._generate([row["prompt"] for row in rows])
    assert len(seen) == 3
    for row, ids in zip(rows, seen):
        assert ids == teacher_prompt_ids(tokenizer, row["question"], row["solution"])
        assert tokenizer.decode(ids).endswith("<|begin_of_explanation|>\n\n")
        assert tokenizer.decode(ids).count("<|im_start|>assistant") == 1  # the prefilled turn, not a new one


def test_grpo_runs_two_steps_on_two_processes(tmp_path, tiny_model_dir, tiny_student_dir):
    """accelerate launch, 2 gloo ranks: each scores its half of every group; advantages use the whole group."""
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir)
    overrides = [
        "launch.preset=ddp",
        "launch.num_processes=2",
        "stages.teacher_rl.prompts_per_step=1",
        "stages.teacher_rl.per_device_batch_size=2",
        "stages.teacher_rl.save_steps=10",
    ]
    planned = run_rl(recipe, tmp_path / "runs", overrides)
    records = rollouts(planned.artifact_dir)
    assert [r["step"] for r in records] == [1] * 4 + [2] * 4
    for step in (1, 2):
        group = [r for r in records if r["step"] == step]
        assert len({r["id"] for r in group}) == 1  # one prompt, its 4 generations split 2 + 2 over the ranks
        assert sorted(r["rank"] for r in group) == [0, 0, 1, 1]
    check_reward_components(records)
    check_advantages(records)
    assert read_meta(planned.artifact_dir).metrics["steps"] == 2


KILLER = """\
import os, signal, sys
from pathlib import Path
import transformers
original = transformers.Trainer._save_checkpoint
def save_then_die(self, model, trial):
    original(self, model, trial)
    if self.state.global_step == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # killed right after checkpoint-2 is complete
transformers.Trainer._save_checkpoint = save_then_die
from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages
from factory.stages.base import stage_view
recipe = load_recipe(sys.argv[1], ["stages.teacher_rl.steps=3"])
execute(make_plan(recipe, Path(sys.argv[2]), load_stages()), sys.argv[1])
"""


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, tiny_student_dir, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir)
    run_dir = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(recipe), str(run_dir)], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    plan = make_plan(load_recipe(recipe, ["stages.teacher_rl.steps=3"]), run_dir, load_stages())
    planned = plan.stage("teacher_rl")
    assert planned.status == "resume"
    checkpoints = sorted(p.name for p in (planned.artifact_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    assert (planned.artifact_dir / "checkpoints" / "checkpoint-2" / "reference.pt").is_file()
    before = rollouts(planned.artifact_dir)
    assert sorted({r["step"] for r in before}) == [1, 2]
    execute(plan, str(recipe), log=print)
    assert "reference model restored from checkpoint-2" in capsys.readouterr().out
    metrics = read_meta(planned.artifact_dir).metrics
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 3
    after = rollouts(planned.artifact_dir)
    assert after[:16] == before[:16]  # steps 1-2 kept from the killed run, step 3 trained once
    assert [r["step"] for r in after] == [1] * 8 + [2] * 8 + [3] * 8
    with (planned.artifact_dir / "reward_curve.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]


def test_reference_model_round_trips_through_a_checkpoint(one_process, tmp_path):
    """The soft-synced reference saved with a checkpoint is what a new trainer restores (TRL saves no reference)."""
    import torch

    from factory.stages.teacher_rl_worker import build_trainer

    job = trainer_job(one_process.artifact_dir, tmp_path, steps=1)
    first, _, _ = build_trainer(job)
    initial = {k: v.clone() for k, v in first.ref_model.state_dict().items()}
    first.train()
    saved = torch.load(tmp_path / "checkpoints" / "checkpoint-1" / "reference.pt", weights_only=True)
    moved = max((saved[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 0  # ref <- 0.9 policy + 0.1 ref after step 1
    for key, value in first.ref_model.state_dict().items():
        assert torch.equal(saved[key], value)
    second, _, _ = build_trainer(job)
    assert second.restore_reference(tmp_path / "checkpoints" / "checkpoint-1")
    for key, value in second.ref_model.state_dict().items():
        assert torch.equal(saved[key], value)


def test_prompts_over_max_prompt_length_are_dropped_with_a_count(tiny_model_dir):
    from factory.models import load_tokenizer
    from factory.stages.teacher_rl import teacher_prompts

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = [
        {"id": "a", "question": "What is 1 + 1?", "solution": "\\boxed{2}"},
        {"id": "b", "question": "What is 1 + 1? " * 20, "solution": "\\boxed{2}"},
    ]
    lengths = [len(teacher_prompt_ids(tokenizer, r["question"], r["solution"])) for r in rows]
    prompts, dropped = teacher_prompts(rows, tokenizer, None, max_prompt_length=lengths[0])
    assert dropped == 1 and [p["row_id"] for p in prompts] == ["a"] and len(prompts[0]["prompt_ids"]) == lengths[0]
    assert teacher_prompts(rows, tokenizer, None, max_prompt_length=lengths[1])[1] == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.teacher_rl.max_prompt_length=16", "max_prompt_length=16: 0 of 8 prompts fit"),
    ],
)
def test_user_errors_come_before_training(tmp_path, tiny_model_dir, tiny_student_dir, override, message):
    """Errors only the data shows; the recipe's own (temperatures, report_to) are tests/test_preflight.py's."""
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        run_rl(write_recipe(tmp_path, tiny_model_dir, tiny_student_dir), tmp_path / "runs", [override])
    assert not list(tmp_path.glob("runs/rl/artifacts/*/checkpoints"))


def test_report_to_reaches_both_trainers_and_logs_land_in_the_artifact(repo_root, tmp_path):
    from factory.stages.teacher_rl_worker import grpo_config
    from factory.stages.teacher_sft_worker import sft_config
    from factory.training import tracking_env

    recipe = load_recipe(
        repo_root / "recipes" / "quickstart.yaml",
        ["stages.teacher_sft.report_to=[tensorboard, trackio]", "stages.teacher_rl.report_to=[wandb]"],
    )
    sft = sft_config(recipe, tmp_path, "quickstart-teacher_sft", False)
    rl = grpo_config(recipe, tmp_path, "quickstart-teacher_rl", False)
    assert (sft.report_to, rl.report_to) == (["tensorboard", "trackio"], ["wandb"])
    assert sft.project == rl.project == "factory-quickstart" and rl.run_name == "quickstart-teacher_rl"
    assert grpo_config(load_recipe(repo_root / "recipes" / "quickstart.yaml"), tmp_path, "x", False).report_to == []
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    artifact = tmp_path / "runs" / "quickstart" / "artifacts" / "teacher_sft-0123456789ab"
    with tracking_env(artifact):
        for name in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR"):
            assert Path(os.environ[name]).is_relative_to(artifact / "logs"), name
        assert os.environ["TRACKIO_DIR"] == str(tmp_path / "runs" / "quickstart" / "trackio")  # one per recipe
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == before


def test_vllm_server_mode_maps_the_launch_section(repo_root, tmp_path):
    """Server mode (the paper's 4 generating + 4 training GPUs): TRL's server command and client settings.
    vLLM itself cannot run here; what is checked is what factory hands to it."""
    from factory.stages.teacher_rl import VLLM_SERVER_PORT, vllm_server, vllm_server_command
    from factory.stages.teacher_rl_worker import grpo_config

    server = [
        "launch.num_processes=4",
        "launch.vllm_mode=server",
        "launch.vllm_gpus=4",
        "launch.tensor_parallel_size=2",
    ]
    recipe = load_recipe(repo_root / "recipes" / "aime.yaml", server)
    command = vllm_server_command(recipe.launch, "/models/teacher", 20480, "bfloat16")
    flags = dict(zip(command[5::2], command[6::2]))  # after: python -m vllm.entrypoints.cli.main serve MODEL
    assert command[3:5] == ["serve", "/models/teacher"]
    assert (flags["--tensor-parallel-size"], flags["--data-parallel-size"]) == ("2", "2")
    assert (flags["--port"], flags["--max-model-len"], flags["--dtype"]) == (str(VLLM_SERVER_PORT), "20480", "bfloat16")
    assert flags["--gpu-memory-utilization"] == "0.3"
    config = grpo_config(recipe, tmp_path, "aime", False)
    assert (config.use_vllm, config.vllm_mode, config.vllm_server_port) == (True, "server", VLLM_SERVER_PORT)
    assert config.gradient_accumulation_steps == 32  # 1024 rollouts / (8 per device x 4 training GPUs)
    with pytest.raises(UserError, match="needs num_processes \\+ vllm_gpus = 8 GPUs"):
        with vllm_server(stage_view(load_stages()["teacher_rl"], recipe), "/models/teacher", tmp_path, print):
            pass


def test_rollouts_prefill_each_distinct_prompt_once_and_sample_the_same(tiny_model_dir):
    """GRPO's repeated prompts: one prefill per distinct prompt, then the same completions as transformers'
    own generate with the same seed (left padding included)."""
    import torch
    from transformers import GenerationConfig

    from factory.models import load_causal_lm, load_tokenizer
    from factory.stages.teacher_rl_worker import share_prompt_prefill

    model, tok = load_causal_lm(str(tiny_model_dir), dtype="float32"), load_tokenizer(tiny_model_dir)
    prompts = [tok("What is 12 + 7? Add the units first.")["input_ids"], tok("What is 3 + 4?")["input_ids"]]
    width = max(map(len, prompts))
    rows = [p for p in prompts for _ in range(3)]  # as GRPO orders them: each prompt's copies together
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    config = GenerationConfig(
        max_new_tokens=12,
        do_sample=True,
        temperature=0.7,
        top_p=1.0,
        top_k=0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )

    def sample() -> tuple[torch.Tensor, list[tuple[int, int]]]:
        shapes = []
        hook = model.get_decoder().register_forward_hook(
            lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
        )
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        hook.remove()
        return out, shapes

    expected, full = sample()
    share_prompt_prefill(model)
    shared, shapes = sample()
    assert torch.equal(shared, expected)
    assert full[0] == (6, width) and shapes[:2] == [(2, width - 1), (6, 1)]  # 2 prompts once, then the last tokens
