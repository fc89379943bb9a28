"""The RLT reward in lockstep: under ZeRO-3 or FSDP2 every forward of a sharded module gathers its weights from
all ranks, so every rank must call the models as many times and in the same order, whatever its own rollouts,
and agree on those counts (itself a collective) before making the calls.

Two ways to show it: two threads standing in for two ranks record every module call and every agreement in
one sequence, which must be the same on both; and two real processes (gloo) whose decoders and heads each
all-gather before running, as a sharded module does, finish instead of waiting on each other.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import threading

import pytest
import torch

from factory.recipe import Reward
from factory.rewards.rlt import RewardItem, RLTReward

QUESTIONS = [("What is 12 + 7?", "\\boxed{19}"), ("A train travels 60 km in 1.5 hours; its speed?", "\\boxed{40}")]
SETTINGS = {"batch_size": 3, "chunk_size": 16, "max_padding": 1.0}
RANK_ITEMS = [(0, 2, 1), (1, 9, 4)]  # (seed, items, group) of each rank: 1 batch against 3, prompts shared


class Ranks:
    """`size` threads that agree like ranks: each passes its counts, all get the largest of each; every
    agreement is recorded in the rank's sequence of events."""

    def __init__(self, size: int):
        self.barrier = threading.Barrier(size, timeout=120)  # a rank that stops calling breaks it, not hangs
        self.counts: list[list[int]] = [[] for _ in range(size)]

    def agree(self, rank: int, events: list[str]):
        def most(counts: list[int]) -> list[int]:
            events.append(f"agree {len(counts)}")
            self.counts[rank] = counts
            self.barrier.wait()
            largest = [max(column) for column in zip(*self.counts)]
            self.barrier.wait()
            return largest

        return most


def rank_items(tokenizer, seed: int, count: int, group: int) -> list[RewardItem]:
    """`count` items of random lengths (some empty), `group` consecutive ones explaining one question."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        question, solution = QUESTIONS[(index // group) % len(QUESTIONS)]
        length = int(torch.randint(0, 60, (1,), generator=generator))
        explanation = torch.randint(3, len(tokenizer), (length,), generator=generator).tolist()
        items.append(RewardItem(question, solution, explanation, index % 3 != 2))
    return items


def on_every_call(teacher, student, do) -> list:
    """`do(name)` before each call of either model's decoder or head; returns the hooks."""
    modules = {
        "teacher decoder": teacher.get_decoder(),
        "student decoder": student.get_decoder(),
        "teacher head": teacher.get_output_embeddings(),
        "student head": student.get_output_embeddings(),
    }
    return [module.register_forward_pre_hook(lambda *_, n=name: do(n)) for name, module in modules.items()]


@pytest.mark.parametrize("estimator", ["k1", "k3", "full"])
def test_every_rank_calls_and_agrees_alike_and_scores_as_alone(reward_models, estimator):
    teacher, student, tokenizer = reward_models
    settings = Reward(kl_estimator=estimator, **SETTINGS)
    per_rank = [rank_items(tokenizer, *spec) for spec in RANK_ITEMS]
    ranks, results, events, errors = Ranks(2), [None, None], [[], []], []

    def run(rank: int) -> None:
        try:
            own_teacher, own_student = copy.deepcopy(teacher), copy.deepcopy(student)
            lockstep = ranks.agree(rank, events[rank])
            reward = RLTReward(own_teacher, own_student, tokenizer, settings, lockstep=lockstep)
            hooks = on_every_call(own_teacher, own_student, events[rank].append)
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
    assert events[0] == events[1]  # the same calls and agreements, in the same order
    assert [e for e in events[0] if e.startswith("agree")] == ["agree 1"] + ["agree 4"] * 3  # before each batch
    assert events[0].count("teacher decoder") > 3  # rank 1 shares its groups' prompts: more than one call a batch
    for rank in range(2):
        alone = RLTReward(teacher, student, tokenizer, settings).score(per_rank[rank])
        assert results[rank] == alone  # the idle calls change nothing


def test_one_process_makes_no_idle_call(reward_models):
    teacher, student, tokenizer = reward_models
    items = rank_items(tokenizer, 1, 5, group=5)
    settings = Reward(batch_size=5, max_padding=1.0)
    calls, plain, agreed = [], [], []
    hooks = on_every_call(teacher, student, calls.append)
    RLTReward(teacher, student, tokenizer, settings, lockstep=lambda n: agreed.append(n) or n).score(items)
    for hook in hooks:
        hook.remove()
    hooks = on_every_call(teacher, student, plain.append)
    RLTReward(teacher, student, tokenizer, settings).score(items)
    for hook in hooks:
        hook.remove()
    assert calls == plain and agreed[0] == [1] and len(agreed) == 2


def _rank(rank: int, port: int, folder: str, estimator: str, models: tuple[str, str]) -> None:
    """One rank of the two-process test: a gloo world, every model call all-gathers first."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.stages.teacher_rl_worker import most_over_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    teacher, student = (AutoModelForCausalLM.from_pretrained(path).eval() for path in models)
    tokenizer = AutoTokenizer.from_pretrained(models[0])

    def gather(_name: str) -> None:  # what a sharded module does before it runs
        dist.all_gather([torch.zeros(4) for _ in range(2)], torch.full((4,), float(rank)))

    on_every_call(teacher, student, gather)
    reward = RLTReward(
        teacher, student, tokenizer, Reward(kl_estimator=estimator, **SETTINGS), lockstep=most_over_ranks
    )
    scored = reward.score(rank_items(tokenizer, *RANK_ITEMS[rank]))
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump([result["reward"] for result in scored], handle)
    dist.destroy_process_group()


@pytest.mark.parametrize("estimator", ["k1", "full"])
def test_two_processes_with_gathering_modules_finish_and_score_as_alone(
    tmp_path, reward_models, tiny_model_dir, tiny_student_dir, estimator
):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    models = (str(tiny_model_dir), str(tiny_student_dir))
    mp.spawn(_rank, args=(port, str(tmp_path), estimator, models), nprocs=2, join=True)  # a hang ends in gloo's timeout
    teacher, student, tokenizer = reward_models
    for rank, spec in enumerate(RANK_ITEMS):
        alone = RLTReward(teacher, student, tokenizer, Reward(kl_estimator=estimator, **SETTINGS))
        expected = [result["reward"] for result in alone.score(rank_items(tokenizer, *spec))]
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected, abs=1e-6)
