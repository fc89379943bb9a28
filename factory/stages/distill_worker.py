"""Distillation worker: TRL SFTTrainer on the student-format rows a stage tokenised.

`start(job)` is called by the worker entry (`python -m factory.worker JOB`, factory.worker), in process
or once per rank under `accelerate launch` (ZeRO-3, FSDP2, multi-node). The rows are the stage's
memory-mapped Arrow file: the token ids of each conversation in the student format and its labels,
-100 over the prompt, exactly as TRL would prepare the conversational prompt/completion pairs
(factory.stages.distill.tokenised_rows), so the loss covers the completion only. Unpacked rows arrive
cut at `max_length` and are used as they are (TRL's preparation skipped: no rank maps over them); with
packing, TRL packs them best-fit decreasing, padding-free, writing the packed rows beside the file.
"""

from __future__ import annotations

from typing import Any

from factory.stages.handoff import IGNORE
from factory.training import LOSS_COLUMNS, common_arguments, head_on_labelled_positions, resumable, sft_arguments, tf32
from factory.worker import Session, loss_metrics
from factory.worker_job import WorkerJob, open_rows


def sft_config(job: WorkerJob):
    """SFTConfig of the job's `stages.distill` section (fp32 master weights, bf16 autocast if asked)."""
    import torch
    from trl import SFTConfig

    recipe = job.recipe
    distill = recipe.stages.distill
    model_init: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": job.models["base"].trust_remote_code}
    if job.attn_implementation:  # e.g. flash_attention_2: varlen kernels for packed rows on GPU
        model_init["attn_implementation"] = job.attn_implementation
    return SFTConfig(
        **common_arguments(distill, job.out_dir, job.run_name, f"factory-{recipe.name}"),
        **sft_arguments(distill, recipe.launch.world_size),
        tf32=tf32(False),  # torch's default, which SkyThought's training recipe keeps
        max_length=distill.max_length,
        truncation_mode="keep_start",  # a longer sequence is cut at its end, as SkyThought's cutoff_len
        packing=distill.packing,
        packing_strategy="bfd",
        padding_free=distill.packing,  # bfd packing is padding-free; unpacked rows are padded
        completion_only_loss=True,  # the loss covers the assistant turn (thought and solution), not the prompt
        # unpacked rows arrive cut and filtered (distill.tokenised_rows): no rank maps over them; TRL packs the others
        dataset_kwargs={"skip_prepare_dataset": not distill.packing},
        dataloader_pin_memory=torch.cuda.is_available(),
        model_init_kwargs=model_init,
        trust_remote_code=model_init["trust_remote_code"],
    )


def build_trainer(job: WorkerJob):
    """The SFTTrainer of a job, its rows truncated (or packed) but not yet trained."""
    from trl import SFTTrainer

    from factory.models import load_tokenizer, resolve_model_path

    head_on_labelled_positions()
    spec = job.models["base"]
    return resumable(SFTTrainer)(
        model=str(resolve_model_path(spec)),
        args=sft_config(job),
        train_dataset=open_rows(job.rows_file),
        processing_class=load_tokenizer(spec),
    )


COUNT_BATCH_ROWS = 1024  # rows of labels counted at a time


def token_counts(dataset) -> dict[str, int]:
    """Tokens and supervised tokens (labels != IGNORE) of a prepared dataset, counted in Arrow batch by batch
    (a rank's memory holds one batch's labels, beside the mapped pages it reads). Batches follow the dataset's
    rows, so a filtered one (TRL drops the rows its cut leaves without a label) counts only its own."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens = supervised = 0
    for batch in dataset.select_columns(["labels"]).with_format("arrow").iter(batch_size=COUNT_BATCH_ROWS):
        values = batch.column("labels").combine_chunks().flatten()
        tokens += len(values)
        supervised += pc.sum(pc.not_equal(values, pa.scalar(IGNORE, values.type))).as_py() or 0
    return {"tokens": tokens, "supervised_tokens": supervised}


def metrics(trainer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        **token_counts(trainer.train_dataset),
        "sequences": len(trainer.train_dataset),
        "packing": trainer.args.packing,
        "epochs": trainer.state.epoch,
        **loss_metrics(trainer, rows),
    }


def start(job: WorkerJob) -> Session:
    trainer = build_trainer(job)
    return Session(
        trainer,
        trainer.processing_class,
        curve="loss_curve",
        columns=LOSS_COLUMNS,
        panels=[["loss"], ["learning_rate"]],
        title=job.title,
        metrics=metrics,
    )
