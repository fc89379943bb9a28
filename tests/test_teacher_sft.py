"""Teacher warm-up SFT: the loss covers exactly the explanation tokens; the stage trains and writes its artifact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tiny import recipe_head

from factory.artifacts import is_complete, read_meta
from factory.errors import UserError
from factory.formats import EXPLANATION_CLOSE, EXPLANATION_OPEN, teacher_prompt_ids
from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages

ROWS = [
    {
        "question": "What is 12 + 7?",
        "solution": "12 + 7 = \\boxed{19}",
        "thought": "Add the units: 2 + 7 = 9, keep the ten: 19.",
    },
    {
        "question": "A train travels 60 km in 1.5 hours; what is its speed?",
        "solution": "\\boxed{40} km/h",
        "thought": "Speed is distance over time: 60 / 1.5 = 40.",
    },
    {"question": "Solve 2x = 10.", "solution": "x = \\boxed{5}", "thought": "Divide both sides by two: x = 5."},
    {"question": "What is 9 - 4?", "solution": "\\boxed{5}", "thought": "Take four from nine, which leaves 5."},
]

RECIPE = """\
data:
  train: {{source: {data}, format: jsonl, thought_column: {thought_column}}}
stages:
  teacher_sft:
    learning_rate: 1.0e-3
    max_steps: 3
    global_batch_size: 2
    per_device_batch_size: 2
    max_length: {max_length}
    bf16: false
    save_steps: 2
  teacher_rl: {{enabled: false}}
  generate: {{enabled: false}}
  distill: {{enabled: false}}
  evaluate: {{enabled: false}}
"""


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: threads only oversubscribe a shared CPU


def write_recipe(tmp_path: Path, teacher: Path, student: Path, thought_column: str | None = "thought") -> Path:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    path = tmp_path / "sft.yaml"
    column = thought_column or "null"
    path.write_text(
        recipe_head("sft", teacher, student) + RECIPE.format(data=data, max_length=1024, thought_column=column)
    )
    return path


def run_sft(recipe_path: Path, run_dir: Path):
    recipe = load_recipe(recipe_path)
    plan = make_plan(recipe, run_dir, load_stages())
    execute(plan, str(recipe_path), log=lambda line: None)
    return plan.stage("teacher_sft").artifact_dir


@pytest.fixture(scope="module")
def sft_artifact(tmp_path_factory, tiny_model_dir, tiny_student_dir) -> Path:
    tmp = tmp_path_factory.mktemp("sft")
    return run_sft(write_recipe(tmp, tiny_model_dir, tiny_student_dir), tmp / "runs")


def test_sft_supervises_exactly_the_explanation_tokens(sft_artifact, tiny_model_dir):
    """Token by token, over the batches the trainer really draws: prompt and prefilled solution masked,
    explanation + closing tag + end of turn supervised, padding masked."""
    from factory.stages.teacher_sft_worker import build_trainer
    from factory.worker_job import read_job

    trainer, tokenizer = build_trainer(read_job(sft_artifact / "job.json"))
    by_question = {row["question"]: row for row in ROWS}
    seen = set()
    for batch in trainer.get_train_dataloader():
        columns = (batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist())
        for ids, labels, mask in zip(*columns):
            length = sum(mask)
            text = tokenizer.decode(ids[:length])
            row = next(r for q, r in by_question.items() if q in text)
            prompt = teacher_prompt_ids(tokenizer, row["question"], row["solution"])
            target = tokenizer(row["thought"] + "\n\n" + EXPLANATION_CLOSE, add_special_tokens=False)["input_ids"]
            target.append(tokenizer.eos_token_id)
            assert ids[: len(prompt)] == prompt  # exactly the prompt teacher RL generates from
            assert tokenizer.decode(prompt).endswith(EXPLANATION_OPEN + "\n\n")
            assert row["solution"] in tokenizer.decode(prompt)
            for position in range(len(ids)):
                if position < len(prompt) or position >= length:
                    assert labels[position] == -100, position
                else:
                    assert labels[position] == ids[position] == target[position - len(prompt)], position
            assert length == len(prompt) + len(target)
            assert tokenizer.decode([label for label in labels if label != -100]) == (
                row["thought"] + "\n\n" + EXPLANATION_CLOSE + tokenizer.eos_token
            )
            seen.add(row["question"])
    assert seen == set(by_question)


def test_sft_stage_writes_model_loss_curve_and_counts(sft_artifact):
    assert is_complete(sft_artifact)
    meta = read_meta(sft_artifact)
    assert meta.metrics["rows"] == meta.metrics["examples"] == 4
    assert meta.metrics["skipped_no_thought"] == meta.metrics["skipped_prompt_too_long"] == 0
    assert meta.metrics["steps"] == 3
    assert not list(sft_artifact.glob("checkpoints/checkpoint-*"))  # checkpoint-2 dropped once the model is saved
    with (sft_artifact / "loss_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    assert all(float(row["loss"]) > 0 for row in rows)
    assert (sft_artifact / "loss_curve.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sft_artifact / "model")
    assert model.num_parameters() > 0
    assert (sft_artifact / "model" / "tokenizer.json").is_file()


def test_guard_refuses_a_batch_without_supervised_token():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from factory.stages.teacher_sft_worker import SupervisedTokenGuard

    guard = SupervisedTokenGuard(DataCollatorForLanguageModeling(pad_token_id=0))
    masked = [{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}, {"input_ids": [8, 9], "labels": [-100, -100]}]
    with pytest.raises(RuntimeError, match="every label is masked"):
        guard(masked)
    batch = guard([masked[0], {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert int((batch["labels"] != -100).sum()) == 1


def test_rows_without_thought_or_room_are_skipped_and_none_left_is_a_user_error(
    tmp_path, tiny_model_dir, tiny_student_dir
):
    from factory.models import load_tokenizer
    from factory.stages.teacher_sft import sft_examples

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = [{"id": str(i), **row} for i, row in enumerate(ROWS)] + [{"id": "x", "question": "3 * 4?", "solution": "12"}]
    prompt_lengths = sorted(len(teacher_prompt_ids(tokenizer, r["question"], r["solution"])) for r in ROWS)
    limit = prompt_lengths[-1]  # the longest prompt leaves no room for its explanation
    examples, counts = sft_examples(rows, tokenizer, None, max_length=limit)
    assert counts["skipped_no_thought"] == 1
    assert counts["skipped_prompt_too_long"] == sum(length >= limit for length in prompt_lengths) >= 1
    assert len(examples) == 4 - counts["skipped_prompt_too_long"]
    assert all(len(e["input_ids"]) == limit and e["truncated"] for e in examples)
    assert all(label != -100 for e in examples for label in e["labels"][-1:])
    with pytest.raises(UserError, match=r"data\.train\.thought_column .*stages\.teacher_sft trains on"):
        run_sft(write_recipe(tmp_path, tiny_model_dir, tiny_student_dir, thought_column=None), tmp_path / "runs")
