"""What the generate tests share (test_generate, test_shards, test_rewards): a small arithmetic train set
whose first question leaks into its eval set, a tiny teacher trained to close some explanations, the
recipe, planning and reading the traces."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages

TEACHER_SYSTEM = "Teach."
SHORT = "We add the units."
LONG = "We add the units, then the tens, and we check the sum twice to be sure of it."


def question(i: int) -> dict[str, str]:
    a, b = i + 2, 3 * i + 1
    return {"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}


def write_data(folder: Path) -> Path:
    """train.jsonl (40 questions) and eval.jsonl, whose first question is the first training question."""
    with open(folder / "train.jsonl", "w") as handle:
        for i in range(40):
            handle.write(json.dumps(question(i)) + "\n")
    with open(folder / "eval.jsonl", "w") as handle:  # the first training question leaks into the eval set
        handle.write(json.dumps({"question": "What is 2 + 1?", "answer": "3"}) + "\n")
        handle.write(json.dumps({"question": "What is 100 + 1?", "answer": "101"}) + "\n")
    return folder


def train_closing_teacher(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny teacher after 60 steps on teacher-format rows whose explanations are short or long
    and end with the closing tag: it then closes some explanations and runs out of tokens on others,
    like a real teacher with a tight max_new_tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.formats import EXPLANATION_CLOSE, teacher_prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = []
    for i in range(12):
        prompt = teacher_prompt_ids(tokenizer, **question(i), system=TEACHER_SYSTEM)
        target = tokenizer((SHORT if i % 2 else LONG) + EXPLANATION_CLOSE, add_special_tokens=False)["input_ids"]
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt, target) in enumerate(rows):
        ids[row, : len(prompt) + len(target)] = torch.tensor(prompt + target)
        labels[row, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        mask[row, : len(prompt) + len(target)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_recipe(folder: Path, teacher: Path, student: Path, data: Path, limit: int, **generate) -> Path:
    settings = {
        "engine": "hf",
        "n": 3,
        "temperature": 0.9,
        "max_new_tokens": 16,
        "batch_size": 4,
        "seed": 7,
        "limit": limit,
        "decontaminate_ngram": 4,
        **generate,
    }
    recipe = {
        "name": "gen-test",
        "models": {
            "teacher": {"source": str(teacher)},
            "student": {"source": str(student)},
            "distill_base": {"source": str(teacher)},
        },
        "data": {
            "train": {"source": str(data / "train.jsonl"), "format": "jsonl"},
            "eval": [{"name": "held", "source": str(data / "eval.jsonl"), "format": "jsonl"}],
        },
        "formats": {"teacher_system": TEACHER_SYSTEM, "student_system": "Think."},
        "reward": {"max_length": 512, "batch_size": 8},
        "stages": {
            "teacher_sft": {"enabled": False},
            "generate": settings,
            "teacher_rl": {"enabled": False, "max_prompt_length": 256, "max_completion_length": 16},
            "distill": {"enabled": False},
            "evaluate": {"enabled": False},
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def plan_for(path: Path, run_dir: Path, overrides: list[str] | None = None):
    return make_plan(load_recipe(path, overrides), run_dir, load_stages())


def run(path: Path, run_dir: Path):
    plan = plan_for(path, run_dir)
    report = execute(plan, str(path), log=lambda message: None)
    return plan.stage("generate").artifact_dir, report


def read(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("train-*.parquet")) for row in pq.read_table(part).to_pylist()]


def kept_ids(path: Path) -> list[str]:
    from factory.stages.generate_worker import load_questions

    return [row["id"] for row in load_questions(load_recipe(path), log=lambda m: None).kept]
