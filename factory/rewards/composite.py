"""A sum of rewards: each term scores the same items, the reward is the weighted sum of their rewards.

Components are every term's, prefixed with the term's name (`rlt.kl_mean`, `correct_generation.reward`),
then the sum as `reward`. Summaries are each term's reward (`rlt.reward`), then the terms' own
summaries under their own names (r_ss, r_kl: one term holds them). The other keys of a result come
from the first term that has them; `truncated` is true when any term cut the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factory.rewards.base import Reward, RewardItem

SUM_NOTE = "the weighted sum of the terms' rewards (higher is better)"


def prefixed_notes(terms: Sequence[tuple[str, dict[str, str]]]) -> dict[str, str]:
    """The components of a sum of (name, notes) terms, in order, with what each measures."""
    prefixed = {f"{name}.{component}": note for name, notes in terms for component, note in notes.items()}
    return {**prefixed, "reward": SUM_NOTE}


class CompositeReward:
    """`terms`: (reward, weight) pairs, summed as sum(weight x reward)."""

    name = "composite"

    def __init__(self, terms: Sequence[tuple[Reward, float]]):
        self.terms = list(terms)
        names = [reward.name for reward, _ in self.terms]
        own = [summary for reward, _ in self.terms for summary in reward.summaries]
        if len(set(names)) < len(names) or len(set(own)) < len(own):
            raise ValueError(f"terms {names} repeat a name or a summary ({own})")
        self.notes = prefixed_notes([(reward.name, reward.notes) for reward, _ in self.terms])
        self.components = tuple(self.notes)
        self.summaries = (*(f"{name}.reward" for name in names), *own)
        self.tokenizer = self.terms[0][0].tokenizer

    def score(self, items: Sequence[RewardItem | tuple]) -> list[dict[str, Any]]:
        items = [RewardItem(*item) for item in items]
        scored = [reward.score(items) for reward, _ in self.terms]
        results = []
        for parts in zip(*scored):
            result: dict[str, Any] = {}
            for (reward, _), part in zip(self.terms, parts):
                result.update({f"{reward.name}.{name}": part[name] for name in reward.components})
            for (reward, _), part in zip(self.terms, parts):
                for key, value in part.items():
                    if key not in reward.components:
                        result.setdefault(key, value)
            result["truncated"] = any(part["truncated"] for part in parts)
            result["reward"] = sum(weight * part["reward"] for (_, weight), part in zip(self.terms, parts))
            results.append(result)
        return results

    def part(self, result: dict[str, Any], reward: Reward) -> dict[str, Any]:
        """One term's own result within a sum's result."""
        return {name: result[f"{reward.name}.{name}"] for name in reward.components}

    def summarise(self, result: dict[str, Any]) -> dict[str, float]:
        figures = {f"{reward.name}.reward": result[f"{reward.name}.reward"] for reward, _ in self.terms}
        for reward, _ in self.terms:
            figures.update(reward.summarise(self.part(result, reward)))
        return figures
