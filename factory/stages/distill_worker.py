"""Distillation worker: TRL SFTTrainer on the student-format prompt/completion rows a stage wrote.

Run by `factory.launch.run_worker` in-process or once per rank under `accelerate launch` (ZeRO-3,
FSDP2, multi-node): `python -m factory.stages.distill_worker JOB`. The rows are conversational
prompt/completion pairs, so TRL supervises the completion tokens only (the prompt's tokenisation
is the mask); packing is best-fit decreasing, padding-free. Resumes from the last complete
checkpoint; ends with `factory.training.finish` (model, tokenizer, then `result.json`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


def sft_config(job: dict[str, Any]):
    """SFTConfig of the job's `stages.distill` section (fp32 master weights, bf16 autocast if asked)."""
    import torch
    from trl import SFTConfig

    from factory.recipe import Recipe

    recipe = Recipe.model_validate(job["recipe"])
    distill = recipe.stages.distill
    model_init: dict[str, Any] = {
        "dtype": torch.float32,
        "trust_remote_code": job["base"].get("trust_remote_code", False),
    }
    if job.get("attn_implementation"):  # e.g. flash_attention_2: varlen kernels for packed rows on GPU
        model_init["attn_implementation"] = job["attn_implementation"]
    return SFTConfig(
        **common_arguments(distill, Path(job["out_dir"]), job["run_name"], f"factory-{recipe.name}"),
        **sft_arguments(distill, recipe.launch.world_size),
        tf32=tf32(False),  # torch's default, which SkyThought's training recipe keeps
        max_length=distill.max_length,
        truncation_mode="keep_start",  # a longer sequence is cut at its end, as SkyThought's cutoff_len
        packing=distill.packing,
        packing_strategy="bfd",
        padding_free=distill.packing,  # bfd packing is padding-free; unpacked rows are padded
        completion_only_loss=True,  # the loss covers the assistant turn (thought and solution), not the prompt
        dataloader_pin_memory=torch.cuda.is_available(),
        model_init_kwargs=model_init,
        trust_remote_code=model_init["trust_remote_code"],
    )


def build_trainer(job: dict[str, Any]):
    """The SFTTrainer of a job, its dataset tokenised (and packed) but not yet trained."""
    from datasets import Dataset
    from trl import SFTTrainer

    from factory.models import load_tokenizer, resolve_model_path

    head_on_labelled_positions()
    spec = model_spec(job["base"])
    tokenizer = load_tokenizer(spec)
    dataset = Dataset.from_list(read_rows(Path(job["out_dir"]) / job["rows"]))
    return resumable(SFTTrainer)(
        model=str(resolve_model_path(spec)), args=sft_config(job), train_dataset=dataset, processing_class=tokenizer
    )


def token_counts(dataset) -> dict[str, int]:
    """Tokens and supervised tokens (labels != IGNORE) of a prepared dataset, counted in Arrow."""
    import pyarrow.compute as pc

    labels = pc.list_flatten(dataset.data.column("labels"))
    return {"tokens": len(labels), "supervised_tokens": pc.sum(pc.not_equal(labels, IGNORE)).as_py() or 0}


def main(job_file: str | Path) -> None:
    job = read_job(job_file)
    out_dir = Path(job["out_dir"])
    with tracking_env(out_dir):
        trainer = build_trainer(job)
        resume = last_checkpoint(out_dir)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    rows = history_rows(trainer.state.log_history, LOSS_COLUMNS)
    losses = [row["loss"] for row in rows if row["loss"] is not None]
    result = {
        **job["counts"],
        **token_counts(trainer.train_dataset),
        "sequences": len(trainer.train_dataset),
        "packing": trainer.args.packing,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": mean_loss(trainer.state.log_history),
        "resumed_from_step": checkpoint_step(resume) if resume else 0,
    }
    if trainer.accelerator.is_main_process:
        write_curve(rows, out_dir, "loss_curve", [["loss"], ["learning_rate"]], job["title"])
    if trainer.is_fsdp_enabled:  # the presets shard the state dict; save_pretrained needs it whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    finish(trainer, trainer.processing_class, out_dir, result)


if __name__ == "__main__":
    main(sys.argv[1])
