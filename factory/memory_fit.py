"""What would make a stage fit a GPU: the recipe settings to try, the figure each gives, and run's verdict.

factory.memory estimates; this module asks "and if not?": for each knob that changes a stage's memory
(gradient checkpointing, ZeRO-3 over more processes, a smaller micro-batch, shorter sequences, a smaller vLLM
share) it recomputes the stage's estimate on a changed copy of the recipe and keeps the mildest setting that
fits. `oversized` sorts the stages `run` would start into refused (no sequence length fits) and at risk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any

from factory.memory import RESERVE, MemoryEstimate, gib
from factory.recipe import Recipe


def with_setting(recipe: Recipe, changes: dict[str, Any]) -> Recipe:
    """A copy of `recipe` with dotted keys set, validated whole as `--set` would be (fields, then the recipe's
    checks across sections): a ValueError for a value or a combination the recipe refuses."""
    data = recipe.model_dump()
    for key, value in changes.items():
        *path, last = key.split(".")
        reduce(dict.__getitem__, path, data)[last] = value
    return type(recipe).model_validate(data)


def suggestions(
    recipe: Recipe, estimate: MemoryEstimate, estimate_of: Callable[[Recipe], MemoryEstimate | None], gpu: float
) -> list[str]:
    """The recipe settings that would bring the stage under `gpu`, each with the figure it would give: for
    each knob the mildest change that fits, or the strongest tried when none does."""
    found = []
    for label, variants in _knobs(recipe, estimate, gpu):
        tried = None
        for changes in variants:
            try:
                result = estimate_of(with_setting(recipe, changes))
            except ValueError:  # a value the schema refuses for this recipe
                continue
            if result is None:
                continue
            tried = (changes, result.total(gpu))
            if result.fits(gpu):
                break
        if tried is not None:
            changes, total = tried
            setting = ", ".join(f"{key}={value}" for key, value in changes.items())
            verdict = "fits" if total <= gpu - RESERVE else "still too large"
            found.append(f"{label}: {setting} -> {gib(total)} GiB ({verdict})")
    return found


def _knobs(recipe: Recipe, estimate: MemoryEstimate, gpu: float) -> list[tuple[str, list[dict[str, Any]]]]:
    """The settings to try, each a list of ever stronger changes: training knobs where the stage trains."""
    launch, knobs, prefix = recipe.launch, [], estimate.section
    section = _section(recipe, prefix)
    if section is not None:
        if not section.gradient_checkpointing:
            knobs.append(("gradient checkpointing", [{f"{prefix}.gradient_checkpointing": True}]))
        first = launch.num_processes + (launch.preset == "zero3")
        processes = [n for n in (2, 4, 8) if n >= first]
        if processes:
            variants = [{"launch.preset": "zero3", "launch.num_processes": n} for n in processes]
            knobs.append(("ZeRO-3 over more GPUs", variants))
        if section.per_device_batch_size > 1:
            sizes = _halvings(section.per_device_batch_size, 1)
            knobs.append(("a smaller micro-batch", [{f"{prefix}.per_device_batch_size": n} for n in sizes]))
        keys = [key for key in ("max_length", "max_prompt_length", "max_completion_length") if hasattr(section, key)]
        steps = [[(key, n) for n in _halvings(getattr(section, key), 256)] for key in keys]
        variants = [{f"{prefix}.{key}": n for key, n in step} for step in zip(*steps)]  # halved together
        knobs.append(("shorter sequences", variants))
    peak = estimate.peak(gpu)
    if peak.vllm_share:
        rest = peak.total(gpu) - peak.vllm_share * gpu
        share = math.floor(20 * (gpu - RESERVE - rest) / gpu) / 20
        if 0 < share < peak.vllm_share:
            knobs.append(("a smaller vLLM share", [{"launch.vllm_gpu_memory_utilization": share}]))
    return knobs


def _section(recipe: Recipe, dotted: str | None) -> Any:
    return reduce(getattr, dotted.split("."), recipe) if dotted else None


def _halvings(value: int, floor: int) -> list[int]:
    out = []
    while value > floor:
        value = max(floor, value // 2)
        out.append(value)
    return out


def oversized(
    recipe: Recipe, stages: list[tuple[str, Callable[[Recipe], MemoryEstimate | None]]], gpu: float
) -> tuple[list[str], list[str]]:
    """(refused, at risk): one message per stage whose model states alone exceed `gpu` (less RESERVE), which no
    sequence length can fit, and one per stage that fits only with sequences shorter than its settings allow
    (activations and logits are upper bounds at the longest ones; real explanations are mostly shorter). Each
    names its peak phase and the recipe settings that would make it fit, with the figure each would give."""
    refused, at_risk = [], []
    for name, estimate_of in stages:
        estimate = estimate_of(recipe)
        if estimate is None or estimate.fits(gpu):
            continue
        peak = estimate.peak(gpu)
        parts = ", ".join(f"{key} {gib(value)}" for key, value in peak.columns(gpu).items() if value)
        knobs = suggestions(recipe, estimate, estimate_of, gpu)
        fixes = "".join(f"\n      {line}" for line in knobs) or " none found among the memory settings"
        room = f"the {gib(gpu)} GiB GPU less {gib(RESERVE)} GiB for the CUDA context"
        if estimate.cannot_fit(gpu):
            refused.append(
                f"{name}: needs ~{gib(estimate.floor(gpu))} GiB per GPU before any activation, "
                f"~{gib(estimate.total(gpu))} GiB at its {peak.name} peak ({parts}), more than {room}; "
                f"settings that change it:{fixes}"
            )
        else:
            at_risk.append(
                f"{name}: may run out of memory on its longest sequences: ~{gib(estimate.total(gpu))} GiB per GPU "
                f"at its {peak.name} peak at the longest lengths its settings allow ({parts}), more than {room}; "
                f"settings that change it:{fixes}"
            )
    return refused, at_risk
