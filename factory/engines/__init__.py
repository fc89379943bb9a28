"""Generation backends with one interface (factory.engines.base): transformers (hf.py) and vLLM (vllm.py).

This package is the one place that knows the engine modules: `load_engine` imports the one asked
for, so base.py (the interface the engines subclass) never imports an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from factory.engines.base import Completion, Engine, EngineKind, Sampling, prompt_seed, resolve_kind

if TYPE_CHECKING:
    from factory.models import Source
    from factory.recipe import Launch

__all__ = ["Completion", "Engine", "Sampling", "load_engine", "open_engine", "prompt_seed", "resolve_kind"]


def open_engine(
    kind: EngineKind,
    model_source: Source,
    launch: Launch | None = None,
    dtype: str = "auto",
    *,
    key: str = "engine",
    **options: Any,
) -> Engine:
    """Load `model_source` into the engine `kind` resolves to (`key` names the recipe key in errors);
    `options` as for `load_engine`."""
    return load_engine(resolve_kind(kind, key), model_source, launch, dtype, **options)


def load_engine(
    kind: Literal["hf", "vllm"],
    model_source: Source,
    launch: Launch | None = None,
    dtype: str = "auto",
    *,
    batch_size: int = 16,
    device: str | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
) -> Engine:
    """Load an engine of an already resolved kind (a worker process told which one to use).

    transformers: `batch_size` rows per forward, `device` (default: cuda when visible, else cpu).
    vLLM: tensor parallel size from `launch`, its GPU memory share from `gpu_memory_utilization`
    (default `launch.vllm_gpu_memory_utilization`); `max_model_len` caps the sequence length.
    """
    if kind == "vllm":
        from factory.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_source,
            launch=launch,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
    from factory.engines.hf import HFEngine

    return HFEngine.load(model_source, dtype=dtype, device=device, batch_size=batch_size)
