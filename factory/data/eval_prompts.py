"""How an eval question is asked: the user turn around it, and the options of a multiple-choice set.

Evaluation scores depend on these words (RLT.md, "Evaluation"), so they follow the library the paper
evaluated with, SkyThought at commit 4bb8f3e, whose task templates are reproduced below as data:
math sets (AIME, MATH-500) put one instruction before the question; GPQA-Diamond shows the question,
a newline and the four options on one line (`A) ..., B) ..., C) ..., D) ...`) after an instruction
to box the letter only. `plain` asks the question alone (the bundled task's students never saw an
instruction).

SkyThought shuffles GPQA's options with Python's global `random` stream (seeded once per run, then
consumed row after row), so its order depends on the row order and on whatever else drew from that
stream. Here each question's order is fixed by its own id and `shuffle_seed` alone: options are
sorted by sha256(f"{seed}:{question id}:{option index}"), the correct option being index 0, so
anyone can recompute it and a `limit` or a reordered dataset does not change it.
"""

from __future__ import annotations

import hashlib
import string

from factory.recipe import EvalSet

SKYTHOUGHT = "NovaSky-AI/SkyThought@4bb8f3e"
# Verbatim from SkyThought@4bb8f3e (their `{{}}` is str.format's escaped `{}`):
#   skythought/evals/tasks/aime/aime24.yaml and tasks/math/math500.yaml (the same text),
#   skythought/evals/tasks/gpqa_diamond/gpqa_diamond.yaml.
TEMPLATES = {
    "skythought_math": "Return your final response within \\boxed{{}}. {question}",
    "skythought_gpqa": "Return your final response within \\boxed{{}} and only include the letter choice "
    "(A, B, C, or D) as your final response. {question}",
    "plain": "{question}",
}
DEFAULT_TEMPLATE = {"math": "skythought_math", "multiple_choice": "skythought_gpqa"}
# skythought/evals/tasks/gpqa_diamond/gpqa_diamond_handler.py@4bb8f3e: question, newline, options joined by ", "
OPTIONS_LAYOUT = "{question}\n{options}"
OPTION_LAYOUT = "{letter}) {text}"
LETTERS = string.ascii_uppercase


def template_id(eval_set: EvalSet) -> str:
    return eval_set.template or DEFAULT_TEMPLATE[eval_set.kind]


def template_text(eval_set: EvalSet) -> str:
    """The template as the model sees it, with `{question}` where the question goes."""
    return TEMPLATES[template_id(eval_set)].format(question="{question}")


def option_order(row_id: str, count: int, seed: int) -> list[int]:
    """The fixed shuffle: option indices in the order shown (index 0 is the correct option)."""
    key = lambda index: hashlib.sha256(f"{seed}:{row_id}:{index}".encode()).hexdigest()  # noqa: E731
    return sorted(range(count), key=key)


def with_options(row: dict[str, str], eval_set: EvalSet) -> tuple[str, str]:
    """(question with its options shown, letter of the correct option) for a set with distractor_columns."""
    options = [row["answer"], *(row[f"distractor_{n}"] for n in range(1, len(eval_set.distractor_columns) + 1))]
    order = option_order(row["id"], len(options), eval_set.shuffle_seed)
    shown = ", ".join(OPTION_LAYOUT.format(letter=LETTERS[i], text=options[o]) for i, o in enumerate(order))
    return OPTIONS_LAYOUT.format(question=row["question"], options=shown), LETTERS[order.index(0)]


def prepare(rows: list[dict[str, str]], eval_set: EvalSet) -> list[dict[str, str]]:
    """Each row with `prompt` (the user turn) and `answer` as graded: with distractor_columns the letter
    the correct option got (its text kept as `correct_option`), else the set's answer column."""
    template = TEMPLATES[template_id(eval_set)]
    prepared = []
    for row in rows:
        item = {"id": row["id"], "question": row["question"], "answer": row["answer"]}
        question = row["question"]
        if eval_set.distractor_columns:
            question, item["answer"] = with_options(row, eval_set)
            item["correct_option"] = row["answer"]
        prepared.append({**item, "prompt": template.format(question=question)})
    return prepared


def describe(eval_set: EvalSet) -> dict[str, object]:
    """The set's prompt protocol, for the report and the card."""
    template = template_id(eval_set)
    protocol: dict[str, object] = {"template": template, "template_text": template_text(eval_set)}
    if template.startswith("skythought_"):
        protocol["follows"] = SKYTHOUGHT
    if eval_set.distractor_columns:
        protocol["options"] = {
            "columns": [eval_set.answer_column, *eval_set.distractor_columns],
            "shown": OPTIONS_LAYOUT.format(question="{question}", options="A) ..., B) ..., ..."),
            "shuffle": "sorted by sha256(f'{seed}:{question id}:{option index}'), the correct option is index 0",
            "shuffle_seed": eval_set.shuffle_seed,
        }
    elif eval_set.kind == "multiple_choice":
        protocol["options"] = f"in the question text; the reference letter is column {eval_set.answer_column!r}"
    return protocol
