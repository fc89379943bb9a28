"""Publishing artifacts: versioned repos with lineage cards, on the Hub or in a local folder store.

`open_store(recipe, run_dir, push)` returns the store a run publishes to: the Hub (`HF_ENDPOINT`,
token from HF_TOKEN or the login cache, checked before any upload) when pushing, else the local
store under `run_dir/<recipe>/store/`, which holds the same repos, files and cards for offline runs.
`store.publish(artifact_dir)` returns a `PublishedRef` (repo, tag, commit, url, created).
`factory push RUN_DIR` (factory.hub.push) publishes a finished run to the Hub later.

See factory.hub.store for the versioning rules (one repo per role, `vN` tags, the same fingerprint
never published twice, interrupted publishes completed on the next run) and factory.hub.content
for what goes into each repo. `open_store` lives here, the one module that knows both stores, so
store.py (the versioning rules) never imports hub_store.py (the Hub client built on them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from factory.hub.content import Target, target_for
from factory.hub.store import LocalStore, PublishedRef, Store

if TYPE_CHECKING:
    from factory.recipe import Recipe


__all__ = ["LocalStore", "PublishedRef", "Store", "Target", "open_store", "target_for"]


def open_store(recipe: Recipe, run_dir: Path, push: bool, log: Callable[[str], None] = print) -> Store:
    """The Hub store (token checked now, before any upload) when pushing, else the local store of the run."""
    if push:
        from factory.hub.hub_store import HubStore

        return HubStore(recipe, log=log)
    return LocalStore(recipe, Path(run_dir) / recipe.name / "store", log=log)
