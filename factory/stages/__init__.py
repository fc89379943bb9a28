"""Stage modules register themselves on import; a stage whose module is absent is not registered."""

from __future__ import annotations

import importlib

from factory.recipe import STAGE_ORDER
from factory.stages.base import REGISTRY, Stage


def load_stages() -> dict[str, Stage]:
    """Import every stage module that exists (cheap: stage modules import torch lazily)."""
    for name in STAGE_ORDER:
        module = f"factory.stages.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return REGISTRY
