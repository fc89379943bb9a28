"""Stage modules register themselves on import. The module of a stage is named after its recipe
section (`stages.<name>`); one whose module is absent is not registered."""

from __future__ import annotations

import importlib

from factory.recipe import Stages
from factory.stages.base import REGISTRY, Stage


def load_stages() -> dict[str, Stage]:
    """Import every stage module that exists (cheap: stage modules import torch lazily)."""
    for name in Stages.model_fields:
        module = f"factory.stages.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return REGISTRY
