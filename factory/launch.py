"""Run a training worker in one process or under `accelerate launch`, from the recipe's `launch:`.

Training stages write their job file and rows into the artifact folder and call
`run_worker(launch, "factory.worker", job_file)` (through `factory.worker.run_training`; the job names
the worker module). With one process (the CPU path) `factory.worker.main(job_file)` runs in this
process; otherwise `accelerate launch` starts the world with
the named preset of the package's `recipes/accelerate/` (DeepSpeed ZeRO-3, FSDP2, DDP), on one or many
machines.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from factory import machines
from factory.bundled import bundled
from factory.errors import UserError
from factory.recipe import Launch

PRESETS_DIR = bundled("recipes", "accelerate")
PRESET_FILES = {"ddp": "ddp.yaml", "zero3": "zero3.yaml", "fsdp2": "fsdp2.yaml"}


def preset_file(launch: Launch) -> Path:
    path = PRESETS_DIR / PRESET_FILES[launch.preset]
    if not path.is_file():
        raise UserError(f"launch.preset {launch.preset!r}: preset file {path} is missing from this install")
    return path


def accelerate_command(launch: Launch, module: str, args: list[str], *, cpu: bool = False) -> list[str]:
    """The `accelerate launch` command line for `python -m module args` under the recipe's launch."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.preset != "single":
        command += ["--config_file", str(preset_file(launch))]
    command += [
        "--num_processes",
        str(launch.world_size),
        "--num_machines",
        str(launch.num_machines),
        "--machine_rank",
        str(launch.machine_rank),
        "--main_process_port",
        str(launch.main_process_port),
    ]
    if launch.main_process_ip:
        command += ["--main_process_ip", launch.main_process_ip]
    if cpu:
        # not `--cpu`: without MPI, accelerate's CPU launcher starts one process whatever --num_processes says;
        # the preset's torchrun launcher starts them all, and ACCELERATE_USE_CPU (run_worker) makes them gloo ranks
        command += ["--mixed_precision", "no"]
    return command + ["-m", module, *args]


def run_worker(launch: Launch, module: str, job_file: Path, *, cpu: bool | None = None) -> None:
    """Run `module.main(job_file)` here (one process) or as a world of processes (accelerate)."""
    if launch.world_size == 1:
        importlib.import_module(module).main(job_file)
        return
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    if launch.machine_rank == 0:
        machines.announce(launch, module, job_file)  # the other machines start their part of this world
    command = accelerate_command(launch, module, [str(job_file)], cpu=cpu)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{module} failed under accelerate (exit {completed.returncode}): {' '.join(command)}")
