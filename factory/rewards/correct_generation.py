"""The correct-generation term: does the student, having read the explanation, answer correctly?

The reference code declares it (`correct_generation_coeff`, `correct_generation_rollouts: 8`,
`generation_check_stategy: ground_truth`, trainers/teacher_rewards.py) and raises
NotImplementedError unless its coefficient is 0, which every paper run keeps. Here: the reward
student reads the question and the explanation in its own format, thought closed and solution tag
opened (the very prefix the RLT term scores the solution after), and writes its solution
`rollouts` times; each answer's last `\\boxed{}` is checked against the reference solution's with
math-verify (factory.data.answers, "ground truth"). The term is the fraction correct; `answered` is
the fraction that gave a boxed answer at all.

Work unlike the RLT term's: decoding, not one forward. It runs on the reward student already loaded
(factory.engines.hf.HFEngine's decode loop, rows sampled from generators seeded per item, so an
item's answers do not depend on its batch or rank). Nothing is cut to `reward.max_length`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from factory.data.answers import check_answer
from factory.engines.base import Sampling, prompt_seed
from factory.formats import SOLUTION_CLOSE, StudentFormat, build_student_sequence
from factory.recipe import CorrectGeneration
from factory.rewards.base import RewardItem


class CorrectGenerationReward:
    """The fraction of the student's answers, after the explanation, equal to the reference answer (a `Reward`).

    `tokenizer` is the explanation ids' (the teacher's; default `student_tokenizer`), sharing the
    student's vocabulary; `batch_size` rows decode at a time.
    """

    name = "correct_generation"
    notes = {
        "answered": "fraction of the student's sampled answers, after the explanation, that give a boxed answer",
        "reward": "fraction of the student's sampled answers, after the explanation, equal to the reference answer",
    }
    components = tuple(notes)
    summaries: tuple[str, ...] = ()

    def __init__(
        self,
        student_model: Any,
        student_tokenizer: Any,
        settings: CorrectGeneration | None = None,
        student_format: StudentFormat | None = None,
        *,
        tokenizer: Any = None,
        batch_size: int = 8,
    ):
        self.student_model, self.student_tokenizer = student_model, student_tokenizer
        self.tokenizer = tokenizer or student_tokenizer
        self.settings = settings or CorrectGeneration()
        self.student_format = student_format or StudentFormat()
        self.batch_size = batch_size

    def prompt_ids(self, item: RewardItem | tuple) -> list[int]:
        """The student's sequence up to its solution: question, explanation, closed thought, opened solution."""
        question, solution, explanation_ids, _ = RewardItem(*item)
        ids = [int(i) for i in explanation_ids]
        sequence = build_student_sequence(self.student_tokenizer, question, ids, solution, self.student_format)
        return sequence.input_ids[: sequence.solution_span[0]]

    def sampling(self) -> Sampling:
        return Sampling.of(self.settings, self.settings.rollouts, SOLUTION_CLOSE)

    def answers(self, items: Sequence[RewardItem | tuple]) -> list[list[str]]:
        """Each item's `rollouts` answers, as text."""
        from factory.engines.hf import HFEngine
        from factory.rewards.rlt import frozen

        items = [RewardItem(*item) for item in items]
        engine = HFEngine(self.student_model, self.student_tokenizer, batch_size=self.batch_size, progress=False)
        seeds = [prompt_seed(self.settings.seed, item_key(item)) for item in items]
        with frozen(self.student_model):
            outputs = engine.generate([self.prompt_ids(item) for item in items], self.sampling(), seeds=seeds)
        return [[completion.text for completion in completions] for completions in outputs]

    def score(self, items: Sequence[RewardItem | tuple]) -> list[dict[str, Any]]:
        """Per item: `answered` and `reward` (fractions of the rollouts), in the order given."""
        items = [RewardItem(*item) for item in items]
        results = []
        for item, answers in zip(items, self.answers(items)):
            checks = [check_answer(answer, item.solution, "math") for answer in answers]
            results.append(
                {
                    "answered": sum(bool(check.extracted) for check in checks) / len(checks),
                    "reward": sum(check.correct for check in checks) / len(checks),
                    "explanation_tokens": len(item.explanation_ids),
                    "truncated": False,
                }
            )
        return results

    def summarise(self, result: dict[str, Any]) -> dict[str, float]:
        return {}


def item_key(item: RewardItem) -> str:
    """What an item's answers are seeded by: its question and explanation ids (not its batch or rank)."""
    return hashlib.sha256(f"{item.question}\0{list(map(int, item.explanation_ids))}".encode()).hexdigest()
