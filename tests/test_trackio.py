"""`report_to: [trackio]` end to end: a real transformers Trainer with the real trackio package logs its curves
into the recipe's `trackio/` folder beside its artifacts (factory.training.tracking_env), where `trackio show`
reads them (TRACKIO_DIR=runs/<recipe>/trackio). trackio is in the test extra; without it these tests skip."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not importorskip: importing trackio here would fix its folder before factory sets it
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trackio") is None, reason="trackio is not installed (pip install trackio, the test extra)"
)

PROJECT = "factory-tiny"


def train_with_trackio(model_dir: Path, out_dir: Path, run_name: str) -> None:
    """Two logged steps of a real Trainer inside the tracking folders factory's workers set."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from factory.training import tracking_env

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            ids = torch.tensor([1, 2, 3, 4, 5 + index])
            return {"input_ids": ids, "labels": ids}

    with tracking_env(out_dir):
        args = TrainingArguments(
            output_dir=str(out_dir / "checkpoints"),
            report_to=["trackio"],
            project=PROJECT,
            run_name=run_name,
            max_steps=2,
            logging_steps=1,
            per_device_train_batch_size=2,
            save_strategy="no",
            use_cpu=True,
        )
        Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=Rows()).train()


def logged_losses(recipe_dir: Path, run_name: str) -> list[float]:
    """train/loss per step of `run_name`, read from the recipe's trackio database."""
    database = recipe_dir / "trackio" / f"{PROJECT}.db"
    if not database.is_file():
        return []
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT metrics FROM metrics WHERE run_name = ? ORDER BY step", (run_name,))
        return [m["train/loss"] for (blob,) in rows if "train/loss" in (m := json.loads(blob))]


@pytest.fixture(scope="module")
def two_trainings(tiny_model_dir, tmp_path_factory) -> Path:
    """Two trainings one after the other in one fresh process, as a one-process `factory run` trains its
    stages (factory.launch.run_worker runs the worker in process); a fresh process so that no earlier test's
    import of trackio decides where it writes."""
    root = tmp_path_factory.mktemp("trackio")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import test_trackio as t\n"
        "t.train_with_trackio(Path(sys.argv[2]), Path(sys.argv[3]) / 'artifacts' / 'first', 'tiny-first')\n"
        "t.train_with_trackio(Path(sys.argv[2]), Path(sys.argv[3]) / 'artifacts' / 'second', 'tiny-second')\n"
    )
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", script, here, str(tiny_model_dir), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_trackio_curves_land_in_the_recipes_trackio_folder(two_trainings):
    losses = logged_losses(two_trainings, "tiny-first")
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_every_training_of_a_one_process_run_logs_its_own_run_in_the_recipes_project(two_trainings):
    """trackio fixes its folder at its first import: one folder per recipe keeps the second stage's curves."""
    second = logged_losses(two_trainings, "tiny-second")
    assert len(second) == 2 and len(logged_losses(two_trainings, "tiny-first")) == 2
