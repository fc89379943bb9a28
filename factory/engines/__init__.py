"""Generation backends with one interface (see factory.engines.base): transformers (hf.py) and vLLM (vllm.py)."""

from factory.engines.base import Completion, Engine, Sampling, load_engine, open_engine, prompt_seed, resolve_kind

__all__ = ["Completion", "Engine", "Sampling", "load_engine", "open_engine", "prompt_seed", "resolve_kind"]
