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


def _gain_then_loss(rng: random.Random) -> Problem:
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(2, 20)
    total = a + b
    c = rng.randint(1, total - 1)
    return (
        f"{name} has {a} {items}. {name} buys {b} more and then gives away {c}. How many {items} does {name} have now?",
        f"{name} starts with {a} {items}. Buying {b} more gives {a} + {b} = {total}. "
        f"Giving away {c} leaves {total} - {c} = {total - c}.",
        f"{a} + {b} - {c}",
        total - c,
    )


def _groups_minus(rng: random.Random) -> Problem:
    items = rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    product = a * b
    c = rng.randint(1, product - 1)
    return (
        f"There are {a} boxes with {b} {items} in each box. {c} {items} are lost. How many {items} are left?",
        f"The boxes hold {a} * {b} = {product} {items}. Losing {c} leaves {product} - {c} = {product - c}.",
        f"{a} * {b} - {c}",
        product - c,
    )


def _rate_plus(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    a, b, c = rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 30)
    product = a * b
    return (
        f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does {name} read in total?",
        f"In {b} days {name} reads {a} * {b} = {product} pages. Adding {c} more gives {product} + {c} = {product + c}.",
        f"{a} * {b} + {c}",
        product + c,
    )


def _two_sales(rng: random.Random) -> Problem:
    items = rng.choice(ITEMS)
    a = rng.randint(20, 99)
    b = rng.randint(1, a - 2)
    c = rng.randint(1, a - b - 1)
    sold = b + c
    return (
        f"A shop has {a} {items}. It sells {b} in the morning and {c} in the afternoon. How many {items} are left?",
        f"The shop sells {b} + {c} = {sold} {items} in all. So {a} - {sold} = {a - sold} are left.",
        f"{a} - {b} - {c}",
        a - sold,
    )


def _times_as_many(rng: random.Random) -> Problem:
    first, second = rng.sample(NAMES, 2)
    items = rng.choice(ITEMS)
    a, b = rng.randint(2, 15), rng.randint(2, 5)
    product = a * b
    return (
        f"{first} has {a} {items} and {second} has {b} times as many. How many {items} do they have together?",
        f"{second} has {a} * {b} = {product} {items}. Together they have {a} + {product} = {a + product}.",
        f"{a} + {a} * {b}",
        a + product,
    )


def _share_then_more(rng: random.Random) -> Problem:
    items = rng.choice(ITEMS)
    b, each, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 10)
    a = b * each
    return (
        f"{a} {items} are shared equally among {b} friends. Then each friend gets {c} more. "
        f"How many {items} does each friend have?",
        f"Each friend first gets {a} / {b} = {each} {items}. With {c} more, each has {each} + {c} = {each + c}.",
        f"{a} / {b} + {c}",
        each + c,
    )


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    _gain_then_loss,
    _groups_minus,
    _rate_plus,
    _two_sales,
    _times_as_many,
    _share_then_more,
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
