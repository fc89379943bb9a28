"""recipes/aime.yaml -> GRPOConfig / SFTConfig: the reference's values field by field, and an audit that every
TRL field a worker leaves at TRL's default is one that cannot change what is trained (docs/fidelity.md)."""

from __future__ import annotations

import dataclasses

import pytest
from commands import factory
from transformers import TrainingArguments
from transformers.utils import is_torch_tf32_available

from factory.recipe import load_recipe
from factory.worker_job import WorkerJob

# What AdamW, the schedule, the seeds and the batches do: each is passed by every worker, whatever its default.
RESULT_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "label_smoothing_factor",
    "neftune_noise_alpha",
    "use_liger_kernel",
    "torch_compile",
    "bf16",
    "fp16",
    "tf32",
    "seed",
    "data_seed",
    "dataloader_drop_last",
    "average_tokens_across_devices",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "gradient_checkpointing",
    "save_strategy",
    "save_steps",
)
# GRPOConfig's own fields left at TRL's default, and why that cannot change the run.
GRPO_INERT = {
    "num_generations_eval": "no evaluation during RL",
    "ds3_gather_for_generation": "how ZeRO-3 gathers weights for generation, not what is generated",
    "pad_to_multiple_of": "padding only",
    "chat_template_kwargs": "prompts are given as token ids",
    "vllm_model_impl": "vLLM's own model code",
    "vllm_enable_sleep_mode": "memory only",
    "vllm_structured_outputs_regex": "None: unconstrained sampling",
    "vllm_server_base_url": "host and port are set",
    "vllm_group_port": "a port",
    "vllm_importance_sampling_mode": "the correction is off",
    "vllm_importance_sampling_clip_max": "the correction is off",
    "vllm_importance_sampling_clip_min": "the correction is off",
    "vllm_importance_sampling_cap": "the correction is off",
    "sapo_temperature_neg": "loss_type grpo",
    "sapo_temperature_pos": "loss_type grpo",
    "vespo_k_pos": "loss_type grpo",
    "vespo_lambda_pos": "loss_type grpo",
    "vespo_k_neg": "loss_type grpo",
    "vespo_lambda_neg": "loss_type grpo",
    "entropy_coef_min": "adaptive entropy is off",
    "entropy_coef_max": "adaptive entropy is off",
    "entropy_coef_delta": "adaptive entropy is off",
    "entropy_target": "adaptive entropy is off",
    "router_aux_loss_coef": "dense models",
    "max_tool_calling_iterations": "no tools",
    "use_transformers_continuous_batching": "transformers' own generate, sampled alike",
    "transformers_continuous_batching_config": "continuous batching is off",
    "log_multimodal": "logging",
    "log_unique_prompts": "logging",
    "log_completions_hub_repo": "logging",
}
SFT_INERT = {
    "chat_template_path": "the tokenizer's own template",
    "dataset_text_field": "rows are token ids (teacher) or prompt/completion pairs (distill)",
    "dataset_kwargs": "no extra dataset preparation",
    "dataset_num_proc": "processes of the tokenisation",
    "pad_to_multiple_of": "padding only",
    "eval_packing": "no evaluation",
    "router_aux_loss_coef": "dense models",
    "pad_token": "the tokenizer's; padding is masked",
    "packing_strategy": "used only with packing",
    "truncation_mode": "keep_start, the only mode (teacher rows arrive cut)",
}


def captured(monkeypatch, module, name: str) -> dict:
    """The keyword arguments a worker passes to `module.name` (a TRL config class), kept while it still builds."""
    real = getattr(module, name)
    seen: dict = {}

    def build(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(module, name, build)
    return seen


def own_fields(config_class) -> set[str]:
    ours = {f.name for f in dataclasses.fields(config_class)}
    return ours - {f.name for f in dataclasses.fields(TrainingArguments)}


@pytest.fixture(scope="module")
def aime(repo_root):
    return load_recipe(repo_root / "recipes" / "aime.yaml")


def check(config, expected: dict) -> None:
    wrong = {key: (getattr(config, key), value) for key, value in expected.items() if getattr(config, key) != value}
    assert wrong == {}, wrong  # key: (ours, the reference's)


def test_grpo_config_is_the_papers_and_leaves_only_inert_defaults(aime, monkeypatch, tmp_path):
    import trl

    from factory.stages import teacher_rl_worker

    passed = captured(monkeypatch, teacher_rl_worker, "GRPOConfig")
    config = teacher_rl_worker.grpo_config(aime, tmp_path, "aime", False)
    check(
        config,
        {
            # cfgs/run_cfg/teacher_rlt.yaml
            "max_steps": 125,
            "num_generations": 64,
            "temperature": 0.7,
            "learning_rate": 1e-6,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0.0,
            "beta": 0.04,
            "sync_ref_model": True,
            "ref_model_mixup_alpha": 0.9,
            "ref_model_sync_steps": 32,
            "max_completion_length": 16384,
            "vllm_max_model_length": 32768,
            "seed": 42,
            "bf16": True,
            "use_vllm": True,
            "vllm_mode": "colocate",
            # 1024 rollouts a step, one update per generation round (1024 / (8 per device x 8 GPUs) = 16)
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 16,
            "steps_per_generation": 16,
            "num_iterations": 1,
            # trainers/grpo.py: k3 KL unweighted, per-sequence mean then mean, (r - mean) / (std + 1e-4), no correction
            "loss_type": "grpo",
            "scale_rewards": "group",
            "use_bias_correction_kl": False,
            "vllm_importance_sampling_correction": False,
            "importance_sampling_level": "token",
            "epsilon": 0.2,
            "epsilon_high": None,
            "delta": None,
            "off_policy_mask_threshold": None,
            "top_entropy_quantile": 1.0,
            "entropy_coef": 0.0,
            "use_adaptive_entropy": False,
            "mask_truncated_completions": False,
            "reward_weights": None,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": None,
            "repetition_penalty": 1.0,
            "generation_kwargs": None,
            "disable_dropout": False,
            "cast_lm_head_to_fp32": False,
            "shuffle_dataset": True,
            # cfgs/trainer_cfg/base.yaml
            "optim": "adamw_torch_fused",
            "weight_decay": 0.0,
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_epsilon": 1e-8,
            "max_grad_norm": 1.0,
            "tf32": True if is_torch_tf32_available() else None,
            "label_smoothing_factor": 0.0,
            "neftune_noise_alpha": None,
            "use_liger_kernel": False,
            "data_seed": 42,
            "dataloader_drop_last": False,
        },
    )
    assert 8 * aime.launch.world_size * config.steps_per_generation == aime.stages.teacher_rl.rollouts_per_step == 1024
    # TRL's generation batch: this machine's processes x per-device batch x steps per generation (1024 on 8 GPUs)
    assert config.generation_batch_size == config.world_size * 8 * config.steps_per_generation
    assert trl.GRPOConfig.__dataclass_fields__["vllm_importance_sampling_correction"].default is True  # TRL's
    assert config.vllm_importance_sampling_correction is False
    unset = own_fields(trl.GRPOConfig) - set(passed)
    assert unset == set(GRPO_INERT), f"audit these GRPOConfig fields: {sorted(unset ^ set(GRPO_INERT))}"
    assert [name for name in RESULT_ARGUMENTS if name not in passed] == []


def test_teacher_sft_config_is_the_reference_warm_up(aime, monkeypatch, tmp_path):
    """cfgs/run_cfg/teacher_sft.yaml of SakanaAI/RLT@86a3f5c, on 8 GPUs."""
    import trl

    from factory.stages import teacher_sft_worker

    passed = captured(monkeypatch, teacher_sft_worker, "SFTConfig")
    config = teacher_sft_worker.sft_config(aime, tmp_path, "aime", False)
    check(
        config,
        {
            "num_train_epochs": 10,
            "save_strategy": "epoch",
            "learning_rate": 1e-5,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.05,
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 2,  # 16 = 1 x 8 x 2
            "weight_decay": 1e-4,
            "adam_beta1": 0.9,
            "adam_beta2": 0.95,
            "adam_epsilon": 1e-8,
            "max_grad_norm": 1.0,
            "packing": False,
            "padding_free": False,
            "gradient_checkpointing": True,
            "bf16": True,
            "seed": 42,
            "tf32": True if is_torch_tf32_available() else None,
            "optim": "adamw_torch_fused",
            "loss_type": "nll",
            "completion_only_loss": False,
            "assistant_only_loss": False,
            "neftune_noise_alpha": None,
            "label_smoothing_factor": 0.0,
            "use_liger_kernel": False,
            "dataloader_drop_last": False,
            "max_steps": -1,
        },
    )
    assert config.max_length is None  # the stage cuts rows at stages.teacher_sft.max_length = 16384, with a count
    assert aime.stages.teacher_sft.max_length == 16384
    unset = own_fields(trl.SFTConfig) - set(passed)
    assert unset == set(SFT_INERT), f"audit these SFTConfig fields: {sorted(unset ^ set(SFT_INERT))}"
    assert [name for name in RESULT_ARGUMENTS if name not in passed] == []


def distill_job(recipe, out_dir, base: str) -> WorkerJob:
    """The distill worker's job for `recipe`, as far as its trainer config reads it."""
    worker = "factory.stages.distill_worker"
    return WorkerJob(
        worker=worker, out_dir=out_dir, run_name="x", recipe=recipe, models={"base": {"source": base}}, counts={}
    )


def test_distill_config_is_the_released_students_recipe(aime, monkeypatch, tmp_path):
    """SkyThought@4bb8f3e LLaMA-Factory/examples/train_full/qwen2_full_sft.yaml: 96 sequences per optimizer step."""
    import trl

    from factory.stages import distill_worker

    fields = own_fields(trl.SFTConfig)
    passed = captured(monkeypatch, trl, "SFTConfig")
    config = distill_worker.sft_config(distill_job(aime, tmp_path, "Qwen/Qwen2.5-7B-Instruct"))
    world = aime.launch.world_size
    assert world == 8
    check(
        config,
        {
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 12,  # 1 x 12 x 8 GPUs = 96 sequences
            "packing": False,
            "padding_free": False,
            "max_length": 16384,
            "truncation_mode": "keep_start",
            "learning_rate": 1e-5,
            "num_train_epochs": 3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.1,
            "weight_decay": 0.0,
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_epsilon": 1e-8,
            "max_grad_norm": 1.0,
            "save_strategy": "steps",
            "save_steps": 100,
            "bf16": True,
            "seed": 42,
            "loss_type": "nll",
            "completion_only_loss": True,
            "assistant_only_loss": False,
            "neftune_noise_alpha": None,
            "tf32": False if is_torch_tf32_available() else None,
            "optim": "adamw_torch_fused",
        },
    )
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * world == 96
    unset = fields - set(passed)
    assert unset == set(SFT_INERT) - {"packing_strategy", "truncation_mode", "dataset_kwargs"}, sorted(unset)
    assert config.dataset_kwargs == {"skip_prepare_dataset": True}  # the stage cut the unpacked rows
    assert [name for name in RESULT_ARGUMENTS if name not in passed] == []


def test_a_packed_distillation_step_counts_rows(repo_root, monkeypatch, tmp_path):
    """With packing on, a row holds several sequences: the recipe key says so, and TRL packs padding-free."""
    from factory.recipe import Distill
    from factory.stages import distill_worker

    assert "global_batch_size counts rows" in Distill.model_fields["packing"].description
    recipe = load_recipe(repo_root / "recipes" / "aime.yaml", ["stages.distill.packing=true"])
    config = distill_worker.sft_config(distill_job(recipe, tmp_path, "b"))
    assert (config.packing, config.packing_strategy, config.padding_free) == (True, "bfd", True)


def test_plan_shows_the_reference_values(repo_root):
    """`factory plan recipes/aime.yaml` prints each stage's settings, the reference's values among them."""
    result = factory(
        "plan", "recipes/aime.yaml", "--run-dir", "/nonexistent-plan-dir", cwd=repo_root, columns=400, timeout=300
    )
    assert result.returncode == 0, result.stderr
    settings, compute, stage = {}, {}, None
    for line in result.stdout.splitlines():
        if line[:1].isdigit():  # "1. teacher_sft  run: ..."
            stage = line.split()[1]
        elif line.strip().startswith("settings "):
            settings[stage] = line.strip().removeprefix("settings ").split(", ")
        elif line.strip().startswith("compute "):
            compute[stage] = line
    expected = {
        "teacher_sft": (
            "learning_rate=1e-05",
            "lr_scheduler=cosine",
            "global_batch_size=16",
            "max_length=16384",
            "epochs=10.0",
            "save_strategy=epoch",
            "weight_decay=0.0001",
            "adam_beta1=0.9",
            "adam_beta2=0.95",
            "adam_epsilon=1e-08",
            "max_grad_norm=1.0",
            "warmup_ratio=0.05",
        ),
        "teacher_rl": (
            "steps=125",
            "prompts_per_step=16",
            "generations_per_prompt=64",
            "iterations_per_generation=1",
            "temperature=0.7",
            "learning_rate=1e-06",
            "lr_scheduler=constant",
            "beta=0.04",
            "ref_sync_steps=32",
            "ref_sync_mix=0.9",
            "loss_type=grpo",
            "scale_rewards=group",
            "max_completion_length=16384",
            "vllm_importance_sampling_correction=False",
            "kl_bias_correction=False",
            "max_prompt_length=16384",
            "adam_beta2=0.999",
        ),
        "distill": (
            "global_batch_size=96",
            "per_device_batch_size=1",
            "packing=False",
            "epochs=3.0",
            "warmup_ratio=0.1",
            "max_length=16384",
        ),
    }
    missing = {name: [item for item in wanted if item not in settings[name]] for name, wanted in expected.items()}
    assert missing == {name: [] for name in expected}, missing
    assert "H100-hours" in compute["teacher_rl"]
