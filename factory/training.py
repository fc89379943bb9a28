"""What the TRL training workers share: tracking, arguments, checkpoints, curves, the end of a run.

A training stage hands its job and tokenised rows to a worker through `factory.worker.run_training`
(factory.worker_job: the job file and the Arrow rows). The worker trains with checkpoints under
`checkpoints/`, resumes from the last complete one, and finishes by saving `model/`, the curve
(CSV + PNG) and `result.json`, written last: a stage that finds
`result.json` has nothing left to train (and drops checkpoints a kill left behind it). A resumed run
ends as an uninterrupted one does: same steps (`ExactResume`), weights and whole-run metrics
(`mean_loss` reads the log history the checkpoint carries).

torch, transformers and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.artifacts import write_json_atomic
from factory.errors import Problem

RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
TRACKIO = "trackio"  # the recipe's trackio folder, beside its artifacts/ (tracking_env)
# A backend of `report_to` and the module whose presence makes transformers' integration work.
TRACKING_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",)}


# ------------------------------------------------------------------------------------------- job


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The finished worker's metrics, or None when training has not completed in this folder.

    A finished folder's checkpoints are dropped here too: a worker killed between `result.json` and
    its clean-up (`finish`) leaves them, and no later run would otherwise remove them.
    """
    path = out_dir / RESULT_FILE
    if not path.is_file():
        return None
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return json.loads(path.read_text())


def check_sft_settings(settings: Any, key: str, world_size: int) -> list[Problem]:
    """Mistakes in an SFT-style section's settings (`key`: its recipe path), for the preflight."""
    problems = check_report_to(settings.report_to, f"{key}.report_to")
    micro = settings.per_device_batch_size * world_size
    if settings.global_batch_size % micro:
        problems.append(
            Problem(
                f"{key}.global_batch_size",
                f"{settings.global_batch_size} does not split into micro-batches of per_device_batch_size x "
                f"processes = {settings.per_device_batch_size} x {world_size} = {micro}; give a multiple of {micro}",
            )
        )
    return problems


# -------------------------------------------------------------------------------------- tracking


def check_report_to(report_to: list[str], key: str) -> list[Problem]:
    """A tracking backend whose package is not installed here, for the preflight."""
    return [
        Problem(key, f"{name} is not installed on this machine: pip install {TRACKING_MODULES[name][0]}", machine=True)
        for name in report_to
        if name != "none" and not any(importlib.util.find_spec(module) for module in TRACKING_MODULES[name])
    ]


@contextmanager
def tracking_env(out_dir: Path) -> Iterator[None]:
    """While training: tensorboard and wandb keep their local files in the artifact's `logs/` folder; trackio
    keeps one project for the whole recipe, `runs/<recipe>/trackio` (two levels above the artifact folder),
    holding every stage's runs. trackio fixes its folder when first imported, and a one-process `factory run`
    trains its stages in one process: a folder per artifact would catch only the first stage's curves."""
    logs = out_dir / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    wanted = {
        "TENSORBOARD_LOGGING_DIR": str(logs / "tensorboard"),
        "WANDB_DIR": str(logs),
        "TRACKIO_DIR": str(out_dir.resolve().parent.parent / TRACKIO),
    }
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def common_arguments(section: Any, out_dir: Path, run_name: str, project: str) -> dict[str, Any]:
    """TrainingArguments of all three trainers from a stage section, with every transformers default that
    changes results passed explicitly (docs/fidelity.md compares each with the reference)."""
    import torch

    return {
        "output_dir": str(out_dir / CHECKPOINTS),
        "learning_rate": section.learning_rate,
        "lr_scheduler_type": section.lr_scheduler,
        "lr_scheduler_kwargs": {},  # cosine: half a cycle, down to 0 at the last step, as the reference's
        "warmup_steps": section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        "optim": "adamw_torch_fused",  # torch's AdamW (the reference's adamw_torch, one fused kernel)
        "weight_decay": section.weight_decay,
        "adam_beta1": section.adam_beta1,
        "adam_beta2": section.adam_beta2,
        "adam_epsilon": section.adam_epsilon,
        "max_grad_norm": section.max_grad_norm,
        "label_smoothing_factor": 0.0,
        "neftune_noise_alpha": None,  # no noise on the embeddings
        "use_liger_kernel": False,
        "torch_compile": False,
        "gradient_checkpointing": section.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},  # as the reference's
        "bf16": section.bf16,
        "fp16": False,
        "seed": section.seed,
        "data_seed": section.seed,  # the sampler's order follows the recipe's seed too
        "dataloader_drop_last": False,  # the last, partial batch of an epoch trains, as in the reference
        # a token-level mean over the global batch; the reference's transformers 4.51 averaged per device
        "average_tokens_across_devices": True,
        "save_steps": section.save_steps,
        "report_to": [name for name in section.report_to if name != "none"] or "none",
        "run_name": run_name,
        "project": project,  # trackio's project
        "use_cpu": not torch.cuda.is_available(),
    }


def sft_arguments(section: Any, world_size: int) -> dict[str, Any]:
    """The SFTConfig keys both SFT stages (teacher warm-up, distillation) take alike from a TrainStage."""
    return {
        "per_device_train_batch_size": section.per_device_batch_size,
        "gradient_accumulation_steps": section.global_batch_size // (section.per_device_batch_size * world_size),
        "num_train_epochs": section.epochs,
        "max_steps": section.max_steps or -1,
        "save_strategy": section.save_strategy,
        "logging_steps": 1,
        "loss_type": "nll",  # plain cross-entropy (not TRL's dft)
        "assistant_only_loss": False,  # the rows say what is supervised
        "activation_offloading": False,
        "shuffle_dataset": False,  # the sampler reshuffles every epoch (data_seed); no extra shuffle first
        "eos_token": None,  # the tokenizer's own
    }


def tf32(on: bool) -> bool | None:
    """TrainingArguments.tf32: `on` where the GPU has TF32 matmuls, else None (transformers refuses True there).
    Passed either way, so a stage never inherits the setting of one run before it in the same process."""
    from transformers.utils import is_torch_tf32_available

    return on if is_torch_tf32_available() else None


def head_on_labelled_positions() -> None:
    """Make TRL's fused LM head skip the positions without a label on CPU too, as it does on CUDA and XPU.

    TRL 1.16 (`trl.trainer.utils.add_fused_lm_head`, used by the SFT and GRPO losses and GRPO's reference
    forward) runs the output head over every position off Triton devices, so that tile shapes stay fixed for
    compilers such as Neuron's, and zeroes the unlabelled ones after; eager CPU has nothing to recompile. The
    log-probabilities of the labelled positions, hence the loss and its gradients, are the same; the head's
    work on prompt tokens (four fifths of a teacher warm-up row, the whole prompt in GRPO) is not done.
    """
    import trl.trainer.utils as fused_head
    from trl.kernels.chunked_logprob import _use_triton

    fused_head._use_triton = lambda device: device.type == "cpu" or _use_triton(device)


# ----------------------------------------------------------------------------------- checkpoints


def last_checkpoint(out_dir: Path) -> Path | None:
    """The highest-step complete checkpoint (its trainer_state.json, written last, exists), or None."""
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            complete.append((int(match.group(1)), path))
    return max(complete)[1] if complete else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


class ExactResume:
    """Mixed into a transformers Trainer: a run resumed from its final checkpoint trains no further step
    (and that checkpoint skips the optimizer state it would never use).

    transformers 5.17 resumes `global_step % steps_per_epoch` batches into an epoch and runs that epoch
    before it compares the step with `max_steps`; from a checkpoint at `max_steps` that is not an epoch's
    end (a `max_steps` run, GRPO) it took one more optimizer step on the next batch. `_run_epoch` is the
    loop's per-epoch hook (tests/test_resume.py fails if a transformers upgrade renames it).
    """

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The final checkpoint holds no optimizer or scheduler state: nothing trains after it (above), and
        transformers resumes without them. Adam's state is twice the weights (1 GB for a 135M model in fp32);
        DeepSpeed's resume needs its files, so it keeps them."""
        if self.state.global_step >= self.state.max_steps and not self.is_deepspeed_enabled:
            return
        super()._save_optimizer_and_scheduler(output_dir)


def resumable(trainer_class: type) -> type:
    """`trainer_class` with `ExactResume` mixed in."""
    return type(trainer_class.__name__, (ExactResume, trainer_class), {})


def mean_loss(log_history: Iterable[dict[str, Any]]) -> float | None:
    """The whole run's mean training loss from its logged losses (each the mean since the previous log).

    TrainOutput.training_loss covers only the steps of the last `train()` call, divided by every step:
    after a resume it is not the run's loss. The log history a checkpoint carries holds the earlier part.
    """
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else None


def finish(trainer: Any, tokenizer: Any, out_dir: Path, result: dict[str, Any]) -> None:
    """Save the final model and tokenizer, then `result.json` (the completion mark), then drop checkpoints.

    Every rank calls this (saving a sharded model is collective); only the main process writes the model
    and the result, each process its own record under `logs/ranks/` (`record_rank`).
    """
    record_rank(trainer, out_dir)
    trainer.save_model(str(out_dir / "model"))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(out_dir / "model"))
        # Trainer.save_model adds the pickled TrainingArguments: no pickle goes into published repos.
        (out_dir / "model" / "training_args.bin").unlink(missing_ok=True)
        write_json_atomic(out_dir / RESULT_FILE, result)
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def record_rank(trainer: Any, out_dir: Path) -> None:
    """`logs/ranks/<process>.json`: the machine, host and steps of one process of the world, so a run over
    several machines shows that each took part (torchrun's GROUP_RANK is the machine's rank)."""
    state = trainer.accelerator.state
    record = {
        "process_index": state.process_index,
        "local_process_index": state.local_process_index,
        "machine_rank": int(os.environ.get("GROUP_RANK", "0")),
        "host": socket.gethostname(),
        "steps": trainer.state.global_step,
    }
    write_json_atomic(out_dir / LOGS / "ranks" / f"{state.process_index}.json", record)


# ---------------------------------------------------------------------------------------- curves


# The SFT trainers' logged columns -> the loss curve's CSV columns.
LOSS_COLUMNS = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}


def history_rows(log_history: Iterable[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """One row per logged training step: `columns` maps a CSV column to its key in the trainer's logs."""
    rows = []
    for entry in log_history:
        if "step" not in entry or not any(key in entry for key in columns.values()):
            continue
        rows.append({"step": entry["step"], **{name: entry.get(key) for name, key in columns.items()}})
    return rows


def write_curve(
    rows: list[dict[str, Any]], out_dir: Path, stem: str, panels: list[list[str]], title: str
) -> dict[str, str]:
    """`<stem>.csv` with every column and `<stem>.png` with one panel per list of columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["step"] + [name for name in rows[0] if name != "step"] if rows else ["step"]
    with (out_dir / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for name in panel:
            points = [(row["step"], row[name]) for row in rows if row.get(name) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=2, label=name)
        axis.legend(loc="best", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(out_dir / f"{stem}.png", dpi=110)
    plt.close(figure)
    return {f"{stem}_csv": f"{stem}.csv", f"{stem}_png": f"{stem}.png"}
