"""Teacher SFT worker: TRL SFTTrainer on the pre-tokenized teacher rows written by the teacher_sft stage.

Run by `factory.launch.run_worker` in-process or once per rank under `accelerate launch`
(`python -m factory.stages.teacher_sft_worker JOB`). Resumes from the last complete checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from factory.models import load_tokenizer, resolve_model_path
from factory.recipe import Recipe
from factory.stages.handoff import IGNORE
from factory.training import (
    LOSS_COLUMNS,
    checkpoint_step,
    common_arguments,
    finish,
    head_on_labelled_positions,
    history_rows,
    last_checkpoint,
    mean_loss,
    model_spec,
    read_job,
    read_rows,
    resumable,
    sft_arguments,
    tf32,
    tracking_env,
    write_curve,
)


class SupervisedTokenGuard:
    """Wraps a collator and refuses a batch in which no label is supervised.

    Such a batch trains on nothing while the loss still looks fine (TRL clamps the token count to
    1, so the loss is a silent 0): the classic all-masked bug of reasoning SFT.
    """

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if not bool((batch["labels"] != IGNORE).any()):
            lengths = [len(example["input_ids"]) for example in examples]
            raise RuntimeError(
                f"refusing to train on a batch of {len(examples)} sequences (lengths {lengths}) in which every label "
                "is masked: no explanation token is supervised"
            )
        return batch


def sft_config(recipe: Recipe, out_dir: Path, run_name: str, trust_remote_code: bool) -> SFTConfig:
    sft = recipe.stages.teacher_sft
    return SFTConfig(
        **common_arguments(sft, out_dir, run_name, f"factory-{recipe.name}"),
        **sft_arguments(sft, recipe.launch.world_size),
        tf32=tf32(True),  # the reference's tf32: true (cfgs/run_cfg/teacher_sft.yaml)
        max_length=None,  # rows arrive truncated by the stage, which counts what it cut
        packing=False,  # as the reference's warm-up
        padding_free=False,
        completion_only_loss=False,  # the rows' labels mask the prompt: only the explanation is supervised
        model_init_kwargs={"dtype": torch.float32, "trust_remote_code": trust_remote_code},  # fp32 master weights
        trust_remote_code=trust_remote_code,
    )


def build_trainer(job: dict[str, Any]) -> tuple[SFTTrainer, Any]:
    """The SFTTrainer of a job, and the teacher tokenizer."""
    head_on_labelled_positions()
    recipe = Recipe.model_validate(job["recipe"])
    out_dir = Path(job["out_dir"])
    spec = model_spec(job["teacher"])
    tokenizer = load_tokenizer(spec)
    rows = read_rows(out_dir / job["data"])
    dataset = Dataset.from_list([{"input_ids": row["input_ids"], "labels": row["labels"]} for row in rows])
    args = sft_config(recipe, out_dir, job["run_name"], spec.trust_remote_code)
    trainer = resumable(SFTTrainer)(
        model=str(resolve_model_path(spec)),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=SupervisedTokenGuard(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)),
    )
    return trainer, tokenizer


def main(job_file: str | Path) -> None:
    job = read_job(job_file)
    out_dir = Path(job["out_dir"])
    with tracking_env(out_dir):
        trainer, tokenizer = build_trainer(job)
        resume = last_checkpoint(out_dir)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    rows = history_rows(trainer.state.log_history, LOSS_COLUMNS)
    losses = [row["loss"] for row in rows if row["loss"] is not None]
    result = {
        **job["counts"],
        "steps": trainer.state.global_step,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "train_loss": mean_loss(trainer.state.log_history),
        "resumed_from_step": checkpoint_step(resume) if resume else 0,
    }
    if trainer.accelerator.is_main_process:
        write_curve(rows, out_dir, "loss_curve", [["loss"], ["learning_rate"]], "teacher SFT loss (explanation tokens)")
    finish(trainer, tokenizer, out_dir, result)


if __name__ == "__main__":
    main(sys.argv[1])
