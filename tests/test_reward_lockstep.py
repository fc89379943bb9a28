"""The RLT reward in lockstep: under ZeRO-3 or FSDP2 every forward of a sharded module gathers its weights from
all ranks, so every rank must call the models as many times and in the same order, whatever its own rollouts.

Two threads stand in for two ranks (their `agree` is the all-reduce of the largest count, through a barrier),
each scoring different items with its own copies of the models; hooks record the order of module calls.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from factory.recipe import Reward
from factory.rewards.rlt import RewardItem, RLTReward

QUESTIONS = [("What is 12 + 7?", "\\boxed{19}"), ("A train travels 60 km in 1.5 hours; its speed?", "\\boxed{40}")]


class Ranks:
    """`size` threads that agree like ranks: each passes its count, all get the largest."""

    def __init__(self, size: int):
        self.barrier = threading.Barrier(size, timeout=120)  # a rank that stops calling breaks it, not hangs
        self.counts = [0] * size
        self.agreements = 0

    def agree(self, rank: int):
        def most(count: int) -> int:
            self.counts[rank] = count
            self.barrier.wait()
            largest = max(self.counts)
            self.agreements += rank == 0
            self.barrier.wait()
            return largest

        return most


def rank_items(tokenizer, seed: int, count: int, group: int) -> list[RewardItem]:
    """`count` items of random lengths, `group` consecutive ones explaining one question (a GRPO group)."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        question, solution = QUESTIONS[(index // group) % len(QUESTIONS)]
        length = int(torch.randint(0, 60, (1,), generator=generator))
        explanation = torch.randint(3, len(tokenizer), (length,), generator=generator).tolist()
        items.append(RewardItem(question, solution, explanation, index % 3 != 2))
    return items


def module_calls(teacher, student) -> tuple[list[str], list]:
    """The order in which the decoders and heads of both models are called, and the hooks recording it."""
    calls: list[str] = []
    modules = {
        "teacher decoder": teacher.get_decoder(),
        "student decoder": student.get_decoder(),
        "teacher head": teacher.get_output_embeddings(),
        "student head": student.get_output_embeddings(),
    }
    hooks = [module.register_forward_hook(lambda *_, n=name: calls.append(n)) for name, module in modules.items()]
    return calls, hooks


@pytest.mark.parametrize("estimator", ["k1", "full"])
def test_every_rank_calls_the_models_alike_and_scores_as_alone(reward_models, estimator):
    teacher, student, tokenizer = reward_models
    settings = Reward(kl_estimator=estimator, batch_size=3, chunk_size=16, max_padding=1.0)
    per_rank = [rank_items(tokenizer, 0, 2, group=1), rank_items(tokenizer, 1, 9, group=4)]  # 1 vs 3 batches
    ranks, results, calls, errors = Ranks(2), [None, None], [None, None], []

    def run(rank: int) -> None:
        try:
            own_teacher, own_student = copy.deepcopy(teacher), copy.deepcopy(student)
            reward = RLTReward(own_teacher, own_student, tokenizer, settings, lockstep=ranks.agree(rank))
            calls[rank], hooks = module_calls(own_teacher, own_student)
            results[rank] = reward.score(per_rank[rank])
            for hook in hooks:
                hook.remove()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            ranks.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert calls[0] == calls[1] and ranks.agreements == 1 + 3 * 4  # the batch count, then 4 per batch
    assert calls[1].count("teacher decoder") > 3  # rank 1 shares its groups' prompts: more than one call a batch
    for rank in range(2):
        alone = RLTReward(teacher, student, tokenizer, settings).score(per_rank[rank])
        assert results[rank] == alone  # the idle calls change nothing


def test_one_process_makes_no_idle_call(reward_models):
    teacher, student, tokenizer = reward_models
    items = rank_items(tokenizer, 1, 5, group=5)
    calls, hooks = module_calls(teacher, student)
    counted = []
    RLTReward(
        teacher, student, tokenizer, Reward(batch_size=5, max_padding=1.0), lockstep=lambda n: counted.append(n) or n
    ).score(items)
    for hook in hooks:
        hook.remove()
    plain, hooks = module_calls(teacher, student)
    RLTReward(teacher, student, tokenizer, Reward(batch_size=5, max_padding=1.0)).score(items)
    for hook in hooks:
        hook.remove()
    assert calls == plain and counted[0] == 1 and len(counted) == 5


def test_the_all_reduce_gives_the_largest_count():
    import torch.distributed as dist

    from factory.stages.teacher_rl_worker import most_over_ranks

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert most_over_ranks(7) == 7
    finally:
        dist.destroy_process_group()
