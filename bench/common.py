"""What the benches share: the random model the GPU benches build (no download; Qwen2.5-0.5B-Instruct's shape,
as factory's memory plan knows it, factory.memory.KNOWN_CONFIGS), and the run over the models a bench compares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from factory.memory import KNOWN_CONFIGS

QWEN_05B = KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]


def qwen05b_config(**overrides: Any):
    """A transformers Qwen2Config of that shape; `overrides` set token ids and the like."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**QWEN_05B, "max_position_embeddings": 32768, **overrides})


def ratios_by_model(args: Any, bench_model: Callable[[str, Any], float]) -> tuple[str, float]:
    """Run `bench_model` on each of `args.models` (comma-separated) with `args.threads` CPU threads when given;
    returns the last model and its ratio, the bench's headline."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",")
    ratios = {name: bench_model(name, args) for name in models}
    return models[-1], ratios[models[-1]]
