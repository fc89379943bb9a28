"""Teacher RL (RLT.md "Training pipeline", step 2): GRPO with the RLT reward, on TRL 1.16.

The teacher prompt is the teacher format with the assistant turn prefilled (solution, then the
opened explanation tag): GRPO samples the continuation of that turn. TRL 1.16 renders conversational
prompts with `add_generation_prompt=True`, which would open a new assistant turn, so the prompts are
given as their token ids (`formats.teacher_prompt_ids`), carried as the decoded text in the dataset's
`prompt` column and mapped back to the exact ids by the worker's trainer. The completion ids go to
the reward unchanged, so the scored explanation spans are exact (`formats.split_completion_ids`).

TRL 1.16 no longer truncates prompts: prompts longer than `max_prompt_length` tokens are dropped
here, with a count. Every paper setting is a recipe key passed explicitly to `GRPOConfig` by the
worker (`teacher_rl_worker.grpo_config`), because TRL's defaults differ. Rollouts come from vLLM
when `launch.vllm_mode` is colocate or server (this stage then starts the server on the GPUs after
the training ones), else from transformers' `generate` (the CPU path); the recipe keys are the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.errors import UserError
from factory.formats import check_same_vocabulary, student_format, teacher_prompt_ids
from factory.recipe import Launch, Recipe
from factory.roles import Role
from factory.stages.base import Problem, Stage, StageContext, StageResult, register, vllm_problems
from factory.stages.handoff import ROLLOUTS_FILE, VLLM_SERVER_PORT
from factory.training import LOGS, check_report_to
from factory.worker import run_training
from factory.worker_job import WorkerJob, model_of

WORKER = "factory.stages.teacher_rl_worker"


def teacher_prompts(
    rows: list[dict[str, str]], tokenizer: Any, system: str | None, max_prompt_length: int
) -> tuple[list[dict[str, Any]], int]:
    """GRPO rows (row_id, question, solution, prompt text, prompt ids) within `max_prompt_length`, and how many
    were dropped."""
    prompts, dropped = [], 0
    for row in rows:
        ids = teacher_prompt_ids(tokenizer, row["question"], row["solution"], system)
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        prompts.append(
            {
                "row_id": row["id"],
                "question": row["question"],
                "solution": row["solution"],
                "prompt": tokenizer.decode(ids),
                "prompt_ids": ids,
            }
        )
    return prompts, dropped


def vllm_server_command(launch: Launch, model_path: str, max_model_length: int, dtype: str) -> list[str]:
    """TRL's own `vllm serve` command line for server mode (weight sync, processed logprobs)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    return build_command(
        ScriptArguments(
            model=model_path,
            tensor_parallel_size=launch.tensor_parallel_size,
            data_parallel_size=launch.vllm_gpus // launch.tensor_parallel_size,
            host="0.0.0.0",
            port=VLLM_SERVER_PORT,
            gpu_memory_utilization=launch.vllm_gpu_memory_utilization,
            max_model_len=max_model_length,
            dtype=dtype,
        )
    )


@contextmanager
def vllm_server(recipe: Recipe, model_path: str, out_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """In server mode, run a vLLM server on GPUs [num_processes, num_processes + vllm_gpus) of the main
    machine for the duration; training ranks use GPUs [0, num_processes). No-op in other modes."""
    launch, rl = recipe.launch, recipe.stages.teacher_rl
    if launch.vllm_mode != "server" or launch.machine_rank != 0:
        yield
        return
    import torch

    needed = launch.num_processes + launch.vllm_gpus
    if torch.cuda.device_count() < needed:
        raise UserError(
            f"launch: vllm_mode server needs num_processes + vllm_gpus = {needed} GPUs, {torch.cuda.device_count()} visible"
        )
    dtype = recipe.models.teacher.dtype
    command = vllm_server_command(launch, model_path, rl.max_prompt_length + rl.max_completion_length, dtype)
    gpus = ",".join(str(i) for i in range(launch.num_processes, needed))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus, "VLLM_SERVER_DEV_MODE": "1"}
    (out_dir / LOGS).mkdir(parents=True, exist_ok=True)
    with (out_dir / LOGS / "vllm_server.log").open("ab") as server_log:
        log(f"teacher_rl: vLLM server on GPUs {gpus}, port {VLLM_SERVER_PORT} (log: {server_log.name})")
        server = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and the workers it spawned
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@register
class TeacherRL(Stage):
    name = "teacher_rl"
    consumes = (Role.TEACHER, Role.REWARD_STUDENT, Role.TRAIN_DATA)
    produces = Role.TEACHER
    passes_on = {Role.INITIAL_TEACHER: Role.TEACHER}  # the teacher before RL, for generate's before_rl pass
    sections = ("stages.teacher_rl", "reward", "formats")
    version = 2  # 2: the reference layouts and spans, empty spans penalised, whole sequences scored

    def check(self, recipe):
        rl, launch, reward = recipe.stages.teacher_rl, recipe.launch, recipe.reward
        problems = check_report_to(rl.report_to, "stages.teacher_rl.report_to")
        problems += vllm_problems(launch.vllm_mode != "off", "launch.vllm_mode")
        if reward.teacher_temperature != rl.temperature:
            # named by the key the recipe wrote; the other one is at its default
            key = (
                "stages.teacher_rl.temperature"
                if "temperature" in rl.model_fields_set
                else "reward.teacher_temperature"
            )
            message = (
                f"reward.teacher_temperature = {reward.teacher_temperature} differs from stages.teacher_rl.temperature "
                f"= {rl.temperature}: the RLT reward takes the teacher's log-probabilities at the sampling "
                "temperature (RLT.md: both 0.7); set both to the same value"
            )
            problems.append(Problem(key, message))
        if launch.vllm_mode == "server" and launch.vllm_gpus % launch.tensor_parallel_size:
            message = (
                f"{launch.vllm_gpus} GPUs for the vLLM server do not split into engines of "
                f"launch.tensor_parallel_size = {launch.tensor_parallel_size} GPUs; give a multiple of it"
            )
            problems.append(Problem("launch.vllm_gpus", message))
        limit = recipe.data.train.limit
        if limit is not None and limit < rl.prompts_per_step:
            message = f"{limit} question(s), fewer than one RL step takes (prompts_per_step = {rl.prompts_per_step})"
            problems.append(Problem("data.train.limit", message))
        return problems

    def estimate(self, recipe):
        """Upper bound (every prompt and completion at its maximum length): generation, the reference and
        old-policy forwards, training (x iterations_per_generation), and the reward's two forwards."""
        from factory.models import estimate_parameters

        rl = recipe.stages.teacher_rl
        completions = rl.steps * rl.rollouts_per_step * rl.max_completion_length
        tokens = rl.steps * rl.rollouts_per_step * (rl.max_prompt_length + rl.max_completion_length)
        teacher, student = estimate_parameters(recipe.models.teacher), estimate_parameters(recipe.models.student)
        if not teacher or not student:
            return {"tokens": tokens}
        passes = 2 + 6 * rl.iterations_per_generation + 2  # reference forward, training, reward forward
        flops = 2 * teacher * completions + passes * teacher * tokens + 2 * student * tokens
        return {"tokens": tokens, "flops": flops}

    def memory(self, recipe):
        """The policy trained on micro-batches of per_device_batch_size rollouts at the longest prompt and
        completion, beside the KL reference and the reward student; the reward's no-grad forwards (both models
        at reward.batch_size x its length) and, without vLLM, transformers' rollouts are phases of their own."""
        from factory import memory as m

        rl, launch, reward, models = recipe.stages.teacher_rl, recipe.launch, recipe.reward, recipe.models
        teacher, student = m.architecture(models.teacher), m.architecture(models.student)
        if teacher is None or student is None:
            return None
        length = rl.max_prompt_length + rl.max_completion_length
        train = m.training_parts(
            teacher,
            launch,
            bf16=rl.bf16,
            checkpointing=rl.gradient_checkpointing,
            tokens=rl.per_device_batch_size * length,
            labelled=rl.per_device_batch_size * rl.max_completion_length,
        )
        student_bytes = m.weight_bytes(models.student, student)
        frozen = m.frozen_bytes(student, student_bytes, launch)
        frozen += m.frozen_bytes(teacher, 4, launch) if rl.beta > 0 else 0  # TRL loads the reference in fp32
        resident = {key: train[key] for key in ("weights", "gradients", "optimizer")} | {"frozen models": frozen}
        share = launch.vllm_gpu_memory_utilization if launch.vllm_mode == "colocate" else 0.0
        scored = reward.batch_size * (reward.max_length or length)
        per_value = 2 if rl.bf16 else 4
        scoring = max(
            m.forward_bytes(student, scored, student_bytes, reward.chunk_size),
            m.forward_bytes(teacher, scored, per_value, reward.chunk_size),
        )
        phases = [
            m.Phase("training", train | {"frozen models": frozen}, share),
            m.Phase("reward", resident | {"activations": scoring}, share),
        ]
        if launch.vllm_mode == "off":  # every rollout of this process generated at once, by the fp32 policy
            rows = -(-rl.rollouts_per_step // launch.world_size)
            phases.append(m.Phase("rollouts", resident | {"activations": m.kv_cache_bytes(teacher, rows * length, 4)}))
        return m.MemoryEstimate(tuple(phases), section="stages.teacher_rl")

    def run(self, ctx: StageContext) -> StageResult:
        from factory.models import resolve_model_path

        def around(job: WorkerJob):
            return vllm_server(ctx.recipe, str(resolve_model_path(job.models["teacher"])), ctx.out_dir, ctx.log)

        result = run_training(ctx.out_dir, ctx.recipe.launch, lambda: self.prepare(ctx), around)
        return StageResult(
            metrics=result,
            files={
                "model": "model",
                "reward_curve_csv": "reward_curve.csv",
                "reward_curve_png": "reward_curve.png",
                "rollouts": ROLLOUTS_FILE,
            },
            summary=(
                f"{result['steps']} steps, reward {result['reward_first_third']:.3f} -> {result['reward_last_third']:.3f}"
                + (  # the RLT reward's solution term, when the reward has one
                    f", r_SS {result['r_ss_first_third']:.3f} -> {result['r_ss_last_third']:.3f}"
                    if "r_ss_first_third" in result
                    else ""
                )
                + " (first vs last third)"
            ),
        )

    def prepare(self, ctx: StageContext) -> tuple[WorkerJob, list[dict[str, Any]]]:
        """The worker's job and prompts: the train questions as exact teacher prompt ids, the long ones dropped."""
        from factory.data import load_rows
        from factory.models import load_tokenizer

        recipe, rl = ctx.recipe, ctx.recipe.stages.teacher_rl
        teacher, student = ctx.inputs["teacher"], ctx.inputs["reward_student"]
        tokenizer = load_tokenizer(teacher.model_source())
        check_same_vocabulary(tokenizer, load_tokenizer(student.model_source()))
        rows = load_rows(ctx.inputs["train_data"].data, log=ctx.log)
        prompts, dropped = teacher_prompts(rows, tokenizer, recipe.formats.teacher_system, rl.max_prompt_length)
        if dropped:
            ctx.log(
                f"teacher_rl: dropped {dropped} of {len(rows)} prompts longer than "
                f"stages.teacher_rl.max_prompt_length={rl.max_prompt_length}"
            )
        if len(prompts) < rl.prompts_per_step:
            raise UserError(
                f"stages.teacher_rl.max_prompt_length={rl.max_prompt_length}: {len(prompts)} of {len(rows)} "
                f"prompts fit, fewer than prompts_per_step={rl.prompts_per_step}"
            )
        job = WorkerJob.of_stage(
            ctx,
            self.name,
            WORKER,
            models={"teacher": model_of(teacher), "reward_student": model_of(student)},
            counts={"prompts": len(prompts), "prompts_dropped_too_long": dropped},
            student_format=student_format(recipe.formats, rows),
        )
        return job, prompts
