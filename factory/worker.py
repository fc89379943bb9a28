"""The one worker protocol: `run_training` on the stage side, `python -m factory.worker JOB` on the ranks.

A training stage calls `run_training(out_dir, launch, prepare)`: a folder whose `result.json` exists has
nothing left to train; otherwise `prepare()` gives the WorkerJob and the tokenised rows, which are written
(factory.worker_job) before `launch.run_worker` runs this module's `main(job.json)`, in process for one
process or once per rank under `accelerate launch`. `main` imports the job's worker module, whose
`start(job)` builds the trainer and says how to report on it (a `Session`); the rest is the same for every
trainer and lives here once: trackers' folders, resume from the last complete checkpoint, the result
(the stage's counts, steps, the worker's own figures), the curve on the main process, then
`training.finish` (model, tokenizer, `result.json` last).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.launch import run_worker
from factory.recipe import Launch
from factory.training import (
    checkpoint_step,
    finish,
    history_rows,
    last_checkpoint,
    mean_loss,
    read_result,
    tracking_env,
    write_curve,
)
from factory.worker_job import WorkerJob, read_job, write_job, write_rows

ENTRY = "factory.worker"  # what launch.run_worker runs: this module's main(job_file)


def run_training(
    out_dir: Path,
    launch: Launch,
    prepare: Callable[[], tuple[WorkerJob, Iterable[dict[str, Any]]]],
    around: Callable[[WorkerJob], AbstractContextManager[Any]] = lambda job: nullcontext(),
) -> dict[str, Any]:
    """The worker's result in `out_dir`, training first unless a finished `result.json` is there.

    `prepare` runs only when there is training to do (it loads data and tokenises); `around(job)` wraps the
    worker's run (teacher RL's vLLM server).
    """
    result = read_result(out_dir)
    if result is not None:
        return result
    job, rows = prepare()
    write_rows(job.out_dir, rows)
    job_file = write_job(job)
    with around(job):
        run_worker(launch, ENTRY, job_file)
    result = read_result(out_dir)
    if result is None:
        raise RuntimeError(f"the {job.worker} worker ended without writing {out_dir / 'result.json'}")
    return result


def _no_hook(checkpoint: Path | None) -> None:
    return None


@dataclass
class Session:
    """What a worker module's `start(job)` returns: its trainer and how the common tail reports on it."""

    trainer: Any
    tokenizer: Any
    curve: str  # the curve's file stem (loss_curve, reward_curve)
    columns: dict[str, str]  # the curve's CSV columns -> the logged names they read
    panels: list[list[str]]  # the PNG's panels, each a list of columns
    title: str
    metrics: Callable[[Any, list[dict[str, Any]]], dict[str, Any]]  # (trainer, curve rows) -> result entries
    before_training: Callable[[Path | None], None] = _no_hook  # given the checkpoint it resumes from, if any


def loss_metrics(trainer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The SFT workers' loss figures: first and last logged loss, the whole run's mean (`training.mean_loss`)."""
    losses = [row["loss"] for row in rows if row["loss"] is not None]
    return {
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": mean_loss(trainer.state.log_history),
    }


def main(job_file: str | Path) -> None:
    job = read_job(job_file)
    worker = importlib.import_module(job.worker)
    with tracking_env(job.out_dir):
        session: Session = worker.start(job)
        trainer = session.trainer
        resume = last_checkpoint(job.out_dir)
        session.before_training(resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    rows = history_rows(trainer.state.log_history, session.columns)
    result = {
        **job.counts,
        "steps": trainer.state.global_step,
        **session.metrics(trainer, rows),
        "resumed_from_step": checkpoint_step(resume) if resume else 0,
    }
    if trainer.accelerator.is_main_process:
        write_curve(rows, job.out_dir, session.curve, session.panels, session.title)
    if trainer.is_fsdp_enabled:  # the presets shard the state dict; save_pretrained needs it whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    finish(trainer, session.tokenizer, job.out_dir, result)


if __name__ == "__main__":
    main(sys.argv[1])
