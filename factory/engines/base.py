"""One small generation interface over vLLM and transformers, used by the generate and evaluate stages.

    engine = open_engine("auto", model_source, launch, dtype="auto")
    outs = engine.generate(prompt_ids, Sampling(n=4, temperature=0.7, max_new_tokens=512, stop=(TAG,)))
    outs[i][j]  # Completion(token_ids, text, finish_reason) of candidate j of prompt i

Prompts are token ids (the stages build them with factory.formats), so both engines see exactly the
same tokens. Sampling is greedy when temperature == 0 (n > 1 then repeats the one greedy completion). Randomness is per prompt: `seeds[i]` (default
derived from `Sampling.seed` and i) fixes prompt i's candidates whatever else is in the batch, so a
resumed or re-sharded run samples the same explanations (up to floating-point noise of batching).
A completion's `token_ids` end with the token that stopped it (a stop/eos id, or the last token of a
stop string, which is kept in `text` too); `finish_reason` is "stop", or "length" when it ran out of
`max_new_tokens`.

`open_engine("auto", ...)` picks vLLM when it is installed and a GPU is visible, else transformers;
open_engine and load_engine live in factory.engines, which knows the engine modules, so this
interface module imports none of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from factory.errors import UserError

EngineKind = Literal["auto", "hf", "vllm"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by both engines (vLLM's SamplingParams names in brackets)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256  # [max_tokens]
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's eos
    stop: tuple[str, ...] = ()  # stop strings, kept at the end of the output

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling settings: {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def of(cls, settings: Any, n: int, stop: str | None = None) -> Sampling:
        """The sampling a recipe section states (temperature, top_p, max_new_tokens, seed), `n` outputs, ending
        at `stop` (besides the end of turn) when given."""
        return cls(
            n=n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
            stop=(stop,) if stop else (),
        )


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: FinishReason


def prompt_seed(seed: int, key: str | int) -> int:
    """A stable 63-bit seed for one prompt (e.g. key = question id): independent of batch and order."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Engine:
    """Base class of the engines; `tokenizer` is the model's (factory.models.load_tokenizer)."""

    kind: str
    tokenizer: Any

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """`sampling.n` completions for each prompt, in prompt order."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model and its device memory (a later engine in this process needs it)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def seeds_for(prompts: Sequence[Sequence[int]], sampling: Sampling, seeds: Sequence[int] | None) -> list[int]:
        if seeds is None:
            return [prompt_seed(sampling.seed, index) for index in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return list(seeds)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_kind(kind: EngineKind, key: str = "engine") -> Literal["hf", "vllm"]:
    """'auto' -> vLLM when installed and a GPU is visible, else transformers; 'vllm' must be usable."""
    if kind == "hf":
        return "hf"
    usable = vllm_installed() and gpu_count() > 0
    if kind == "vllm" and not usable:
        why = "vllm is not installed (pip install 'factory-rlt[gpu]')" if not vllm_installed() else "no GPU is visible"
        raise UserError(f"{key}: vllm was asked for but {why}; set {key}: hf (or auto) to use transformers")
    return "vllm" if usable else "hf"


def gpu_groups(tensor_parallel_size: int, devices: int | None = None) -> list[list[int]]:
    """Device indices of the data-parallel groups: one vLLM engine per group of `tensor_parallel_size` GPUs."""
    devices = gpu_count() if devices is None else devices
    if devices < tensor_parallel_size:
        raise UserError(
            f"launch.tensor_parallel_size: {tensor_parallel_size} GPUs per engine but only {devices} visible"
        )
    groups = devices // tensor_parallel_size
    return [list(range(g * tensor_parallel_size, (g + 1) * tensor_parallel_size)) for g in range(groups)]
