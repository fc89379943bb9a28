"""The recipe's reward, built in one place: the RL worker, the generate worker and `factory score`
call `build_reward` and use only the `Reward` interface, so a term added here reaches all three.

`reward.terms` lists the terms; `rlt` weighs 1 and `correct_generation` weighs
`reward.correct_generation_coeff`. A lone term of weight 1 is the reward itself (components unprefixed,
so the RLT-only default keeps its names and numbers); anything else is their `CompositeReward`.
"""

from __future__ import annotations

from typing import Any

from factory.recipe import Reward as RewardSettings
from factory.rewards.base import Reward
from factory.rewards.composite import CompositeReward, prefixed_notes


def weights(settings: RewardSettings) -> list[tuple[str, float]]:
    """(term, weight) in the recipe's order."""
    return [(name, 1.0 if name == "rlt" else settings.correct_generation_coeff) for name in settings.terms]


def _alone(terms: list[tuple[str, float]]) -> bool:
    return len(terms) == 1 and terms[0][1] == 1.0


def _term_class(name: str) -> type[Reward]:
    if name == "rlt":
        from factory.rewards.rlt import RLTReward

        return RLTReward
    from factory.rewards.correct_generation import CorrectGenerationReward

    return CorrectGenerationReward


def notes_of(settings: RewardSettings) -> dict[str, str]:
    """The components `build_reward(settings, ...)` returns, in order, with what each measures; known without
    models (the traces schema and card)."""
    terms = weights(settings)
    if _alone(terms):
        return dict(_term_class(terms[0][0]).notes)
    return prefixed_notes([(name, _term_class(name).notes) for name, _ in terms])


def components_of(settings: RewardSettings) -> tuple[str, ...]:
    """The components `build_reward(settings, ...)` returns."""
    return tuple(notes_of(settings))


def build_reward(
    settings: RewardSettings,
    *,
    teacher_model: Any,
    student_model: Any,
    tokenizer: Any,
    student_tokenizer: Any = None,
    teacher_system: str | None = None,
    student_format: Any = None,
    lockstep: Any = None,
) -> Reward:
    """The reward `settings` describe, on models already loaded. `tokenizer` is the teacher's (the
    explanation ids'); `student_tokenizer` (default: the same) renders the student format; `lockstep` (the
    largest of each count over the ranks) makes every rank call sharded models as often (RLTReward)."""
    from factory.rewards.correct_generation import CorrectGenerationReward
    from factory.rewards.rlt import RLTReward

    terms: list[tuple[Reward, float]] = []
    for name, weight in weights(settings):
        if name == "rlt":
            term: Reward = RLTReward(
                teacher_model,
                student_model,
                tokenizer,
                settings,
                teacher_system,
                student_format,
                student_tokenizer=student_tokenizer,
                lockstep=lockstep,
            )
        else:
            term = CorrectGenerationReward(
                student_model,
                student_tokenizer or tokenizer,
                settings.correct_generation,
                student_format,
                tokenizer=tokenizer,
                batch_size=settings.batch_size,
            )
        terms.append((term, weight))
    return terms[0][0] if _alone(weights(settings)) else CompositeReward(terms)


def find_term(reward: Reward, name: str) -> Reward | None:
    """The term `name` of `reward` (itself, or one term of a sum); None when it has none."""
    if isinstance(reward, CompositeReward):
        return next((term for term, _ in reward.terms if term.name == name), None)
    return reward if reward.name == name else None
