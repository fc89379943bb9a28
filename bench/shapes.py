"""The random model the GPU benches build (no download): Qwen2.5-0.5B-Instruct's shape, as factory's memory
plan knows it (factory.memory.KNOWN_CONFIGS), so every bench measures the same model."""

from __future__ import annotations

from typing import Any

from factory.memory import KNOWN_CONFIGS

QWEN_05B = KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]


def qwen05b_config(**overrides: Any):
    """A transformers Qwen2Config of that shape; `overrides` set token ids and the like."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**QWEN_05B, "max_position_embeddings": 32768, **overrides})
