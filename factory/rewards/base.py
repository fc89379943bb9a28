"""The reward interface: what the RL worker, the generate worker and `factory score` ask of a reward.

A reward scores teacher explanations given as token ids (never re-tokenised text), many at a time,
and says which numbers it returns. Callers name columns, metrics and plots after `components` and explain them with `notes`, so a
new reward reaches the traces schema and card, the RL logs and the compare Space without a change to them.
Pure Python: no torch import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol


class RewardItem(NamedTuple):
    """One explanation to score; generated ids go through `formats.split_completion_ids` first."""

    question: str
    solution: str
    explanation_ids: Sequence[int]
    closed: bool = True


class Reward(Protocol):
    """A batched reward on token ids.

    `name`: the recipe's term name (`reward.terms`), the prefix of its components inside a sum.
    `components`: ordered names of the numbers `score` returns per item, the last being "reward".
    `notes`: one line per component saying what it measures (the traces card and the compare Space show them).
    `summaries`: names of `summarise`'s figures, per item, that the RL worker averages and logs
    besides the components (the RLT reward's r_ss and r_kl).
    `tokenizer`: the tokenizer of the explanation ids (the teacher's), to decode them.
    `score(items)`: one dict per item, in order, holding every component (float), `truncated` (bool:
    the reward cut the item to fit), `explanation_tokens` (explanation ids it used), and possibly
    more of its own (the RLT reward's `solution_tokens`).
    """

    name: str
    components: tuple[str, ...]
    notes: dict[str, str]
    summaries: tuple[str, ...]
    tokenizer: Any

    def score(self, items: Sequence[RewardItem | tuple]) -> list[dict[str, Any]]: ...

    def summarise(self, result: dict[str, Any]) -> dict[str, float]: ...
