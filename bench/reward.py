"""Batched RLT reward vs the one-at-a-time reference (tests/rlt_reference.py), in one run.

For each model: the same items (mixed lengths around --prompt/--explanation/--solution tokens)
are scored by the reference (batch 1, full-vocabulary log-softmax over whole sequences) and by
`factory.rewards.rlt.RLTReward` at each --batches size; prints explanations/s, tokens/s (teacher +
student sequence tokens), peak memory above the starting point (CPU: resident set sampled every
millisecond; CUDA: the allocator's peak), the largest component difference to the reference, and
the arithmetic bound of the speed-up: reference / batched matmul FLOPs (RLTReward.work counts the
positions each ran). With --group-size G, G consecutive items explain one question (a GRPO group, best-of-n candidates),
whose prompt the batched reward runs once per batch; by default every item has its own question.
The headline, last, is the last model's largest batch against the reference.

    python bench/reward.py                                   # CPU: tiny and SmolLM2-135M
    python bench/reward.py --group-size 16                   # GRPO-shaped: 16 explanations per question
    python bench/reward.py --device cuda --dtype bfloat16 --models qwen0.5b-random \\
        --prompt 256 --explanation 512 --solution 64
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import load_models, models_parser, run_over_models  # noqa: E402
from rlt_reference import reference_for  # noqa: E402

from factory.recipe import Reward  # noqa: E402
from factory.rewards.rlt import COMPONENTS, ForwardWork, RewardItem, RLTReward  # noqa: E402

WORDS = "add the units then tens carry one so total is nine seven twelve speed distance time equals hence".split()


def load(name: str, device: str, dtype: torch.dtype):
    """(teacher, student, tokenizer): common.load_models; explanation ids span the model's whole vocabulary."""
    (teacher, student), tokenizer = load_models(name, device, dtype, count=2)
    return teacher, student, tokenizer


def vocabulary_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def matmul_flops(model) -> tuple[int, int]:
    """(decoder, output head) multiply-add FLOPs per position: 2 x the decoder's weights without the
    embedding table, 2 x hidden x vocabulary; attention's own FLOPs are left aside."""
    decoder = model.get_decoder()
    weights = sum(p.numel() for p in decoder.parameters()) - decoder.get_input_embeddings().weight.numel()
    return 2 * weights, 2 * model.get_output_embeddings().weight.numel()


def bound(reference: ForwardWork, batched: ForwardWork, flops: tuple[int, int]) -> float:
    """How much less matmul work the batched reward did than the reference: the most its speed-up
    can be when both run their matmuls at the same rate (a compute-bound CPU)."""
    cost = lambda work: work.decoder_positions * flops[0] + work.head_positions * flops[1]  # noqa: E731
    return cost(reference) / cost(batched)


def make_items(
    tokenizer, vocab: int, count: int, prompt: int, explanation: int, solution: int, group: int = 1, seed: int = 0
):
    """Items whose question, explanation and solution lengths vary from half to 1.5x the targets;
    `group` consecutive items share one question and solution (GRPO's group, best-of-n)."""
    rng = random.Random(seed)

    def text(tokens: int) -> str:
        words = " ".join(rng.choice(WORDS) for _ in range(tokens * 2))
        return tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][:tokens])

    def length(target: int) -> int:
        return max(1, round(target * rng.uniform(0.5, 1.5)))

    special = set(tokenizer.all_special_ids)
    items = []
    for index in range(count):
        if index % group == 0:
            question, answer = text(length(prompt)), text(length(solution))
        explanation_ids = [rng.randrange(vocab) for _ in range(length(explanation))]
        explanation_ids = [i if i not in special else i + 1 for i in explanation_ids]
        items.append(RewardItem(question, answer, explanation_ids, index % 5 != 4))
    return items


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or sampled resident set size."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back freed heap so RSS starts low
            self.start = self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(device: str, function):
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        result = function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return result, elapsed, memory.mib


def bench_model(name: str, args) -> float:
    dtype = getattr(torch, args.dtype)
    teacher, student, tokenizer = load(name, args.device, dtype)
    items = make_items(
        tokenizer, vocabulary_size(teacher), args.items, args.prompt, args.explanation, args.solution, args.group_size
    )
    settings = Reward(max_length=args.max_length, chunk_size=args.chunk_size)
    reward = RLTReward(teacher, student, tokenizer, settings)
    tokens = sum(len(b.teacher.input_ids) + len(b.student.input_ids) for b in map(reward.sequences, items))
    reference_work = ForwardWork(decoder_positions=tokens, head_positions=tokens)  # full forward, every position
    flops = matmul_flops(teacher)  # teacher and student share the architecture in every model here
    reward.score(items[:2])  # warm-up (allocator, kernels)
    reference_for(reward, items[0])

    expected, reference_s, reference_mib = timed(args.device, lambda: [reference_for(reward, item) for item in items])
    print(
        f"\n{name} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads): {len(items)} explanations "
        f"({args.group_size} per question), {tokens / len(items):.0f} tokens per item (teacher + student)"
    )
    header = f"{'method':<14}{'batch':>6}{'expl/s':>10}{'tokens/s':>11}{'peak MiB':>10}{'max |diff|':>12}{'ratio':>8}{'bound':>8}"
    print(header)
    print(
        f"{'reference':<14}{1:>6}{len(items) / reference_s:>10.2f}{tokens / reference_s:>11.0f}{reference_mib:>10.0f}"
        f"{0.0:>12.1e}{1.0:>8.2f}{1.0:>8.2f}"
    )
    ratio = 0.0
    for batch in args.batches:
        reward.settings = Reward(max_length=args.max_length, chunk_size=args.chunk_size, batch_size=batch)
        reward.work = ForwardWork()
        results, seconds, mib = timed(args.device, lambda: reward.score(items))
        diff = max(abs(r[k] - e[k]) for r, e in zip(results, expected) for k in COMPONENTS)
        ratio = reference_s / seconds
        print(
            f"{'batched':<14}{batch:>6}{len(items) / seconds:>10.2f}{tokens / seconds:>11.0f}{mib:>10.0f}"
            f"{diff:>12.1e}{ratio:>8.2f}{bound(reference_work, reward.work, flops):>8.2f}"
        )
    print(
        "bound: reference / batched matmul FLOPs (decoder positions incl. padding, head positions); the most the "
        "ratio can reach where both run matmuls at one rate, as a compute-bound CPU does"
    )
    return ratio


def main() -> None:
    parser = models_parser(__doc__)
    parser.add_argument("--batches", default="1,8,32", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64, help="question tokens (the chat around it adds more)")
    parser.add_argument("--explanation", type=int, default=128)
    parser.add_argument("--solution", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=1, help="explanations per question (GRPO group, best-of-n)")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=512)
    run_over_models(
        parser,
        bench_model,
        lambda args: f" batch {args.batches[-1]} vs one-at-a-time reference on {args.device}, explanations/s",
    )


if __name__ == "__main__":
    main()
