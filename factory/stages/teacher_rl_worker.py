"""Teacher RL worker: TRL 1.16 GRPOTrainer with the RLT reward, one process or one per rank.

`start(job)` is called by the worker entry (`python -m factory.worker JOB`, factory.worker), in process
or once per rank under `accelerate launch`; the prompts are the stage's memory-mapped Arrow file. Each rank generates and scores its slice of the generation batch; TRL gathers
the rewards and normalises each group of `generations_per_prompt` over the gathered values, so a
group may span ranks. The reward function is a plain callable: the reward student is forward-only
(no gradient; a full copy on each rank's device in its recipe dtype, or sharded like the policy under
ZeRO-3), the teacher term comes from the live policy at the sampling temperature.

Checkpoints every `save_steps` also hold the soft-synced reference model once it has moved away from
the initial policy (TRL does not save it), so a killed run resumes with the right reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.distributed import DistributedBackend

from factory.formats import StudentFormat, split_completion_ids
from factory.models import load_causal_lm, load_tokenizer, resolve_model_path
from factory.recipe import Recipe
from factory.rewards.base import Reward
from factory.rewards.build import build_reward
from factory.stages.handoff import ROLLOUTS_FILE, VLLM_SERVER_PORT
from factory.training import ExactResume, checkpoint_step, common_arguments, head_on_labelled_positions, tf32
from factory.worker import Session
from factory.worker_job import WorkerJob, open_rows

REFERENCE_FILE = "reference.pt"
ROLLOUT_FIGURES = ("penalty_rate", "explanation_tokens", "truncated_rate")  # of the rollouts, whatever the reward
TRAINER_COLUMNS = {"kl_to_reference": "kl", "entropy": "entropy", "loss": "loss", "learning_rate": "learning_rate"}


def reward_figures(reward: Reward) -> tuple[str, ...]:
    """What the reward function logs per step, each as `rlt/<name>`: the reward, its summaries, its other
    components, then the rollouts' figures."""
    return tuple(dict.fromkeys(("reward", *reward.summaries, *reward.components[:-1], *ROLLOUT_FIGURES)))


def curve_columns(reward: Reward) -> dict[str, str]:
    """reward_curve.csv's columns and the logged names they read."""
    figures = {name: f"rlt/{name}" for name in reward_figures(reward)}
    return {"reward": figures.pop("reward"), "reward_std": "reward_std", **figures, **TRAINER_COLUMNS}


def grpo_config(recipe: Recipe, out_dir: Path, run_name: str, trust_remote_code: bool) -> GRPOConfig:
    """Every RLT setting passed explicitly: TRL 1.16's defaults differ (loss dapo, beta 0, temperature 1, ...)."""
    rl, launch = recipe.stages.teacher_rl, recipe.launch
    micro_steps = rl.rollouts_per_step // (rl.per_device_batch_size * launch.world_size)
    use_vllm = launch.vllm_mode != "off"
    return GRPOConfig(
        **common_arguments(rl, out_dir, run_name, f"factory-{recipe.name}"),
        tf32=tf32(True),  # the reference's tf32: true (cfgs/trainer_cfg/base.yaml)
        save_strategy="steps",
        max_steps=rl.steps,
        logging_steps=rl.logging_steps,
        # one generation round = prompts_per_step x generations_per_prompt rollouts = one optimizer step
        per_device_train_batch_size=rl.per_device_batch_size,
        gradient_accumulation_steps=micro_steps,
        steps_per_generation=micro_steps,
        generation_batch_size=None,  # follows from steps_per_generation: the step's rollouts
        num_generations=rl.generations_per_prompt,
        num_iterations=rl.iterations_per_generation,  # 1: strictly on-policy
        shuffle_dataset=True,
        remove_unused_columns=False,  # the reward reads question, solution and row_id
        # sampling; the policy's log-probs in the loss are taken at the same temperature
        temperature=rl.temperature,
        top_p=rl.top_p,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=rl.max_completion_length,
        generation_kwargs=None,  # no sampling option beyond the ones above
        cache_implementation=None,
        use_transformers_paged=False,
        # objective: k3 KL to a reference soft-updated as ref <- mix * policy + (1 - mix) * ref every ref_sync_steps
        beta=rl.beta,
        sync_ref_model=rl.beta > 0,
        ref_model_mixup_alpha=rl.ref_sync_mix,
        ref_model_sync_steps=rl.ref_sync_steps,
        use_bias_correction_kl=rl.kl_bias_correction,
        loss_type=rl.loss_type,  # grpo: mean over each sequence's tokens, then over sequences
        scale_rewards=rl.scale_rewards,  # group: (r - group mean) / (group std + 1e-4)
        epsilon=rl.clip_epsilon,
        epsilon_high=None,  # = epsilon: a symmetric clip
        delta=None,  # no extra upper bound on the ratio
        importance_sampling_level="token",
        # no correction of vLLM's vs the trainer's log-probabilities: the paper's GRPO is plain on-policy
        vllm_importance_sampling_correction=rl.vllm_importance_sampling_correction,
        off_policy_mask_threshold=None,
        top_entropy_quantile=1.0,  # every completion token trains (no high-entropy mask)
        entropy_coef=0.0,  # no entropy bonus
        use_adaptive_entropy=False,
        mask_truncated_completions=False,  # an unclosed explanation is scored with its penalty, not dropped
        reward_weights=None,  # the one RLT reward, weight 1
        multi_objective_aggregation="sum_then_normalize",
        disable_dropout=False,  # the model's own dropout (0 in Qwen2.5), as the reference
        cast_lm_head_to_fp32=False,  # the head in the training precision, as the reference
        log_completions=False,  # rollouts.jsonl holds every rollout
        num_completions_to_print=None,
        model_init_kwargs={"dtype": torch.float32, "trust_remote_code": trust_remote_code},  # fp32 master weights
        trust_remote_code=trust_remote_code,
        # rollouts: vLLM (colocate on the training GPUs, or the server this stage started) or transformers
        use_vllm=use_vllm,
        vllm_mode=launch.vllm_mode if use_vllm else "colocate",
        vllm_tensor_parallel_size=launch.tensor_parallel_size,
        vllm_gpu_memory_utilization=launch.vllm_gpu_memory_utilization,
        vllm_max_model_length=rl.max_prompt_length + rl.max_completion_length,
        vllm_server_host=launch.main_process_ip or "127.0.0.1",
        vllm_server_port=VLLM_SERVER_PORT,
        vllm_server_timeout=1800.0,  # the server loads the teacher while the trainer starts
    )


class RolloutLog(TrainerCallback):
    """Every scored rollout of a step with its TRL advantage, as JSON lines (main process only).

    The advantages come from the trainer's own record of the last generation batch (gathered, in the
    same rank-major order as the gathered rewards), so the log shows what the policy was trained on.
    """

    def __init__(self, path: Path, is_main: bool):
        self.path, self.is_main = path, is_main
        self.pending: list[dict[str, Any]] = []
        self.trainer: GRPOTrainer | None = None

    def keep_until(self, step: int) -> None:
        """Forget rollouts after `step` (a resumed run trains those steps again)."""
        if not self.is_main:
            return
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        self.path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))

    def on_step_end(self, args, state, control, **kwargs):
        if not self.pending:
            return
        advantages = list(self.trainer._logs["advantages"])[-len(self.pending) :]
        with self.path.open("a") as handle:
            for record, advantage in zip(self.pending, advantages):
                handle.write(json.dumps({**record, "advantage": advantage}) + "\n")
        self.pending = []


class RewardFunction:
    """The recipe's reward (factory.rewards.build) as a TRL reward function: scores this rank's completions
    and logs, per step, means over the gathered generation batch (`reward_figures`): rlt/reward, each
    summary (the RLT reward's rlt/r_ss, mean + alpha min of the student's solution log-probs, and rlt/r_kl,
    mean + alpha max of the teacher-student log-ratio), each other component (rlt/kl_mean, ...; a sum's
    rlt/rlt.kl_mean, rlt/correct_generation.reward, ...), rlt/penalty_rate (unclosed explanations),
    rlt/explanation_tokens, rlt/truncated_rate (items the reward had to cut to reward.max_length).
    """

    __name__ = "rlt"

    def __init__(
        self,
        recipe: Recipe,
        tokenizer: Any,
        student_spec: Any,
        student_tokenizer: Any,
        student_format: StudentFormat,
        rollouts: RolloutLog,
    ):
        self.recipe, self.tokenizer, self.rollouts = recipe, tokenizer, rollouts
        self.student_spec, self.student_tokenizer, self.student_format = student_spec, student_tokenizer, student_format
        self.reward: Reward | None = None
        self.trainer: GRPOTrainer | None = None

    def attach(self, trainer: GRPOTrainer) -> None:
        """Bind the live policy and place the reward student; call once the trainer exists."""
        self.trainer = trainer
        self.reward = build_reward(
            self.recipe.reward,
            teacher_model=trainer.model,
            student_model=place_reward_student(self.student_spec, trainer.accelerator),
            tokenizer=self.tokenizer,
            student_tokenizer=self.student_tokenizer,
            teacher_system=self.recipe.formats.teacher_system,
            student_format=self.student_format,
            lockstep=most_over_ranks if sharded(trainer.accelerator) else None,
        )

    def __call__(
        self, prompts, completions, completion_ids, question, solution, row_id, trainer_state, log_metric, **_
    ):
        split = [split_completion_ids(self.tokenizer, ids) for ids in completion_ids]
        with policy_unsharded(self.trainer.model), self.trainer.accelerator.autocast():  # bf16 like training
            scored = self.reward.score([(q, s, e, c) for q, s, (e, c) in zip(question, solution, split)])
        step = trainer_state.global_step + 1
        rank = self.trainer.accelerator.process_index
        local = [
            {
                "step": step,
                "rank": rank,
                "id": identifier,
                **result,
                "closed": closed,
                "explanation": self.tokenizer.decode(explanation),
            }
            for identifier, result, (explanation, closed) in zip(row_id, scored, split)
        ]
        gathered = gather_object(local)
        for name in reward_figures(self.reward):
            log_metric(f"rlt/{name}", self.step_mean(gathered, name))  # the same on every rank: TRL's mean keeps it
        if self.rollouts.is_main:
            self.rollouts.pending.extend(gathered)
        return [result["reward"] for result in scored]

    def step_mean(self, gathered: list[dict[str, Any]], name: str) -> float:
        """The mean of one of `reward_figures` over a step's rollouts."""
        if name in self.reward.summaries:
            values = [self.reward.summarise(record)[name] for record in gathered]
        elif name == "penalty_rate":
            values = [not record["closed"] for record in gathered]
        elif name == "truncated_rate":
            values = [record["truncated"] for record in gathered]
        else:
            values = [record[name] for record in gathered]
        return sum(values) / len(values)


def sharded(accelerator: Any) -> bool:
    """ZeRO-3 or FSDP2: each forward of a sharded module gathers its weights from every rank, so the reward
    must call the models as many times, in the same order, on every rank (RLTReward's lockstep)."""
    backend = DistributedBackend(accelerator)
    return backend.is_zero3 or backend.is_fsdp


def most_over_ranks(counts: list[int]) -> list[int]:
    """The largest of each count over the ranks (one all-reduce): how many calls every rank makes in lockstep."""
    import torch.distributed as dist

    values = torch.tensor(counts, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.tolist()


def place_reward_student(spec: Any, accelerator: Any) -> Any:
    """The reward student, forward-only: sharded like the policy under ZeRO-3 (the reward calls it in lockstep,
    as the gathers need), otherwise a full copy on this rank's device."""
    if DistributedBackend(accelerator).is_zero3:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(load_causal_lm(spec), accelerator).module  # loaded partitioned by zero.Init
    model = load_causal_lm(spec, device=str(accelerator.device))
    return model.requires_grad_(False)


@contextmanager
def policy_unsharded(model: Any) -> Iterator[None]:
    """FSDP2 keeps the root's own parameters (embeddings, final norm, head) sharded outside its forward;
    the reward calls the decoder and the head directly, so unshard them for the scoring."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def share_prompt_prefill(model: Any) -> None:
    """Make `model.generate` (TRL's transformers rollouts) run each distinct prompt through the model once.

    GRPO repeats every prompt `generations_per_prompt` times and transformers' `generate` prefilled each
    copy. Here the distinct left-padded prompts, all but their last token, run once at the positions
    `generate` would give them; the KV cache is copied to every row and `generate` continues from it
    (the last prompt token, then sampling, with the same draws of the global generator). vLLM rollouts
    (`launch.vllm_mode`) never call it.
    """
    from transformers import DynamicCache

    generate = model.generate

    def generate_sharing_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        distinct, copy_of = torch.unique(input_ids, dim=0, return_inverse=True)
        if len(distinct) == len(input_ids) or input_ids.shape[1] < 2 or "past_key_values" in kwargs:
            return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        first = torch.stack([(copy_of == index).nonzero()[0, 0] for index in range(len(distinct))])
        mask = attention_mask[first, :-1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate numbers them
        cache = DynamicCache(config=model.config)
        model.get_decoder()(
            input_ids=input_ids[first, :-1],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        cache.batch_select_indices(copy_of)
        return generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)

    model.generate = generate_sharing_prompts


class RLTGRPOTrainer(ExactResume, GRPOTrainer):
    """GRPOTrainer for the prefilled teacher prompt; checkpoints carry the soft-synced reference.

    TRL 1.16 tokenizes a plain-text prompt with the tokenizer's special tokens added; the teacher prompt
    text is already templated, so its exact ids (formats.teacher_prompt_ids) are looked up instead.
    """

    def __init__(self, *args: Any, prompt_ids: dict[str, list[int]], **kwargs: Any):
        self.prompt_token_ids = prompt_ids
        super().__init__(*args, **kwargs)

    def _tokenize_prompts(self, prompts: list):
        return [self.prompt_token_ids[prompt] for prompt in prompts], None, {}

    def _reference_moved(self) -> bool:
        synced = self.args.sync_ref_model and self.state.global_step >= self.args.ref_model_sync_steps
        return self.ref_model is not None and synced

    def _save_checkpoint(self, model, trial):
        if self._reference_moved():  # written before the trainer state, which marks a checkpoint complete
            state = self.accelerator.get_state_dict(self.ref_model)
            if self.accelerator.is_main_process:
                folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(state, folder / REFERENCE_FILE)
        super()._save_checkpoint(model, trial)

    def restore_reference(self, checkpoint: Path) -> bool:
        """Load the reference saved with `checkpoint`, if any (every rank calls this)."""
        path = checkpoint / REFERENCE_FILE
        if self.ref_model is None or not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        reference = self.accelerator.unwrap_model(self.ref_model)
        backend = DistributedBackend(self.accelerator)
        if backend.is_zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(reference.parameters()), modifier_rank=0):
                if self.accelerator.is_main_process:
                    reference.load_state_dict(state)
        elif backend.is_fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.ref_model, state, options=StateDictOptions(full_state_dict=True))
        else:
            reference.load_state_dict(state)
        return True


def build_trainer(job: WorkerJob) -> tuple[RLTGRPOTrainer, Any, RolloutLog]:
    """The trainer of a job (reward attached), the teacher tokenizer and the rollout log."""
    head_on_labelled_positions()
    recipe, out_dir = job.recipe, job.out_dir
    teacher, student = job.models["teacher"], job.models["reward_student"]
    tokenizer = load_tokenizer(teacher)
    prompts = open_rows(job.rows_file)
    args = grpo_config(recipe, out_dir, job.run_name, teacher.trust_remote_code)
    rollouts = RolloutLog(out_dir / ROLLOUTS_FILE, args.process_index == 0)
    reward = RewardFunction(recipe, tokenizer, student, load_tokenizer(student), job.student_format, rollouts)
    trainer = RLTGRPOTrainer(
        model=str(resolve_model_path(teacher)),
        reward_funcs=reward,
        args=args,
        train_dataset=prompts.select_columns(["row_id", "question", "solution", "prompt"]),
        processing_class=tokenizer,
        callbacks=[rollouts],
        prompt_ids=dict(zip(prompts["prompt"], prompts["prompt_ids"])),
    )
    rollouts.trainer = trainer
    reward.attach(trainer)
    if not args.use_vllm:
        share_prompt_prefill(trainer.model)
    return trainer, tokenizer, rollouts


def thirds(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last third of a series (at least one value each)."""
    size = max(1, len(values) // 3)
    return sum(values[:size]) / size, sum(values[-size:]) / size


def start(job: WorkerJob) -> Session:
    trainer, tokenizer, rollouts = build_trainer(job)
    reward = trainer.reward_funcs[0].reward

    def before_training(checkpoint: Path | None) -> None:
        """Forget the rollouts of steps after the checkpoint; restore the reference model it holds."""
        rollouts.keep_until(checkpoint_step(checkpoint) if checkpoint else 0)
        if checkpoint and trainer.restore_reference(checkpoint) and trainer.accelerator.is_main_process:
            print(f"teacher_rl: reference model restored from {checkpoint.name}", flush=True)

    def metrics(trainer: RLTGRPOTrainer, rows: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {"rollouts_per_step": trainer.args.generation_batch_size}
        for name in ("reward", *reward.summaries, "penalty_rate"):  # e.g. reward_first_third, r_ss_last_third
            result[f"{name}_first_third"], result[f"{name}_last_third"] = thirds(
                [row[name] for row in rows if row[name] is not None]
            )
        return result

    return Session(
        trainer,
        tokenizer,
        curve="reward_curve",
        columns=curve_columns(reward),
        panels=[["reward"], list(reward.summaries or reward.components[:-1]), ["penalty_rate"], ["explanation_tokens"]],
        title=f"teacher RL: reward per step ({' + '.join(job.recipe.reward.terms)})",
        metrics=metrics,
        before_training=before_training,
    )
