"""Teacher SFT worker: TRL SFTTrainer on the tokenised teacher rows the teacher_sft stage wrote.

`start(job)` is called by the worker entry (`python -m factory.worker JOB`, factory.worker), which
resumes, trains and finishes; the rows are the stage's memory-mapped Arrow file (input_ids, labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from factory.models import load_tokenizer, resolve_model_path
from factory.recipe import Recipe
from factory.stages.handoff import IGNORE
from factory.training import LOSS_COLUMNS, common_arguments, head_on_labelled_positions, resumable, sft_arguments, tf32
from factory.worker import Session, loss_metrics
from factory.worker_job import WorkerJob, open_rows


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


def build_trainer(job: WorkerJob) -> tuple[SFTTrainer, Any]:
    """The SFTTrainer of a job, and the teacher tokenizer."""
    head_on_labelled_positions()
    spec = job.models["teacher"]
    tokenizer = load_tokenizer(spec)
    args = sft_config(job.recipe, job.out_dir, job.run_name, spec.trust_remote_code)
    trainer = resumable(SFTTrainer)(
        model=str(resolve_model_path(spec)),
        args=args,
        train_dataset=open_rows(job.rows_file),
        processing_class=tokenizer,
        data_collator=SupervisedTokenGuard(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)),
    )
    return trainer, tokenizer


def start(job: WorkerJob) -> Session:
    trainer, tokenizer = build_trainer(job)
    return Session(
        trainer,
        tokenizer,
        curve="loss_curve",
        columns=LOSS_COLUMNS,
        panels=[["loss"], ["learning_rate"]],
        title="teacher SFT loss (explanation tokens)",
        metrics=loss_metrics,
    )
