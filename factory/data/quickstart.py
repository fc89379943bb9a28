"""The bundled quick-start task: short multi-step arithmetic word problems, generated on the fly.

Small enough for a 135M model to learn on a CPU in minutes, and checkable: every row has an
integer `answer`, a one-line `solution` ending in `\\boxed{answer}` and a step-by-step `thought`
(the teacher's warm-up SFT target, well under 96 tokens). One seeded stream of problems is split by
a hash of the question text, so train and eval never share a question and a split's first N rows
do not depend on how many are asked for.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from factory.errors import UserError

# Bump when the generated rows change: it is part of the data's revision in fingerprints.
GENERATOR_VERSION = 1
SEED = 1729
SPLIT_SIZES = {"train": 2000, "eval": 200}
SPLIT_ALIASES = {"test": "eval"}  # EvalSet's default split name
EVAL_BUCKETS = 8  # one question in eight goes to eval

NAMES = [
    "Ana",
    "Ben",
    "Cara",
    "Dan",
    "Eva",
    "Finn",
    "Gia",
    "Hugo",
    "Ivy",
    "Jack",
    "Kim",
    "Leo",
    "Mia",
    "Noah",
    "Omar",
    "Pia",
    "Ravi",
    "Sara",
    "Tom",
    "Uma",
]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "coins", "shells", "cards", "eggs"]

Problem = tuple[str, str, str, int]  # question, thought, expression, answer


@dataclass(frozen=True)
class Template:
    """One kind of word problem: `draw` takes its names and numbers from the stream, always in the same order,
    with the intermediate result its thought states and the `answer`; the three texts are filled from them."""

    draw: Callable[[random.Random], dict[str, Any]]
    question: str
    thought: str
    expression: str

    def __call__(self, rng: random.Random) -> Problem:
        values = self.draw(rng)
        texts = (text.format(**values) for text in (self.question, self.thought, self.expression))
        return (*texts, values["answer"])


def _gain_then_loss(rng: random.Random) -> dict[str, Any]:
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    return {"name": name, "items": items, "a": a, "b": b, "c": c, "total": a + b, "answer": a + b - c}


def _groups_minus(rng: random.Random) -> dict[str, Any]:
    items = rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    c = rng.randint(1, a * b - 1)
    return {"items": items, "a": a, "b": b, "c": c, "product": a * b, "answer": a * b - c}


def _rate_plus(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(NAMES)
    a, b, c = rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 30)
    return {"name": name, "a": a, "b": b, "c": c, "product": a * b, "answer": a * b + c}


def _two_sales(rng: random.Random) -> dict[str, Any]:
    items, a = rng.choice(ITEMS), rng.randint(20, 99)
    b = rng.randint(1, a - 2)
    c = rng.randint(1, a - b - 1)
    return {"items": items, "a": a, "b": b, "c": c, "sold": b + c, "answer": a - b - c}


def _times_as_many(rng: random.Random) -> dict[str, Any]:
    (first, second), items = rng.sample(NAMES, 2), rng.choice(ITEMS)
    a, b = rng.randint(2, 15), rng.randint(2, 5)
    return {"first": first, "second": second, "items": items, "a": a, "b": b, "product": a * b, "answer": a + a * b}


def _share_then_more(rng: random.Random) -> dict[str, Any]:
    items = rng.choice(ITEMS)
    b, each, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 10)
    return {"items": items, "a": b * each, "b": b, "c": c, "each": each, "answer": each + c}


TEMPLATES: list[Template] = [
    Template(
        _gain_then_loss,
        "{name} has {a} {items}. {name} buys {b} more and then gives away {c}. How many {items} does {name} have now?",
        "{name} starts with {a} {items}. Buying {b} more gives {a} + {b} = {total}. "
        "Giving away {c} leaves {total} - {c} = {answer}.",
        "{a} + {b} - {c}",
    ),
    Template(
        _groups_minus,
        "There are {a} boxes with {b} {items} in each box. {c} {items} are lost. How many {items} are left?",
        "The boxes hold {a} * {b} = {product} {items}. Losing {c} leaves {product} - {c} = {answer}.",
        "{a} * {b} - {c}",
    ),
    Template(
        _rate_plus,
        "{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does {name} read in total?",
        "In {b} days {name} reads {a} * {b} = {product} pages. Adding {c} more gives {product} + {c} = {answer}.",
        "{a} * {b} + {c}",
    ),
    Template(
        _two_sales,
        "A shop has {a} {items}. It sells {b} in the morning and {c} in the afternoon. How many {items} are left?",
        "The shop sells {b} + {c} = {sold} {items} in all. So {a} - {sold} = {answer} are left.",
        "{a} - {b} - {c}",
    ),
    Template(
        _times_as_many,
        "{first} has {a} {items} and {second} has {b} times as many. How many {items} do they have together?",
        "{second} has {a} * {b} = {product} {items}. Together they have {a} + {product} = {answer}.",
        "{a} + {a} * {b}",
    ),
    Template(
        _share_then_more,
        "{a} {items} are shared equally among {b} friends. Then each friend gets {c} more. "
        "How many {items} does each friend have?",
        "Each friend first gets {a} / {b} = {each} {items}. With {c} more, each has {each} + {c} = {answer}.",
        "{a} / {b} + {c}",
    ),
]


def split_of(question: str) -> str:
    """The split a question belongs to, by hash: the same question can never land in both."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % EVAL_BUCKETS
    return "eval" if bucket == 0 else "train"


def generate(split: str) -> Iterator[dict[str, str]]:
    """The rows of one split, in a fixed order: question, thought, solution, answer."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLIT_SIZES:
        names = ", ".join([*SPLIT_SIZES, *SPLIT_ALIASES])
        raise UserError(f"the quickstart task has no split {split!r}; splits: {names}")
    rng = random.Random(SEED)
    seen: set[str] = set()
    produced = 0
    while produced < SPLIT_SIZES[split]:
        question, thought, expression, answer = rng.choice(TEMPLATES)(rng)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        produced += 1
        yield {
            "question": question,
            "thought": thought,
            "solution": f"{expression} = {answer}. The answer is \\boxed{{{answer}}}.",
            "answer": str(answer),
        }
