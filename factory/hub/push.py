"""`factory push RUN_DIR`: publish a finished run to the Hub later (air-gapped clusters, offline runs).

Reads the run manifest (`RUN_DIR/<recipe>/manifest.json`), rebuilds the recipe it recorded (with
`--set` overrides, e.g. `hub.namespace=NAME`), and publishes every complete artifact in stage order
through the Hub store, so each card links the upstream versions just published. Pushing is
idempotent: what the Hub already holds is found by fingerprint and not uploaded again. The manifest's
`published` entries are updated as each stage lands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from factory.artifacts import MANIFEST, is_complete, write_json_atomic
from factory.errors import UserError
from factory.hub.store import PublishedRef
from factory.recipe import recipe_from_dict


def find_manifest(run_dir: Path, recipe_name: str | None) -> Path:
    """The manifest of `recipe_name` in a run folder, of its only recipe, or `run_dir` is a recipe's own folder."""
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).is_file() and recipe_name in (None, run_dir.name):
        return run_dir / MANIFEST
    if recipe_name is not None:
        path = run_dir / recipe_name / MANIFEST
        if not path.is_file():
            raise UserError(f"{path}: no manifest; has recipe {recipe_name!r} run with --run-dir {run_dir}?")
        return path
    found = sorted(run_dir.glob(f"*/{MANIFEST}"))
    if len(found) != 1:
        names = ", ".join(p.parent.name for p in found) or "none"
        raise UserError(f"{run_dir}: expected one recipe's run, found: {names}; name one with --recipe")
    return found[0]


def push_run(
    run_dir: Path,
    recipe_name: str | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, PublishedRef | None]:
    """Publish a run's complete artifacts to the Hub in stage order; returns stage -> published ref."""
    from factory.hub.hub_store import HubStore

    manifest_path = find_manifest(run_dir, recipe_name)
    manifest = json.loads(manifest_path.read_text())
    recipe = recipe_from_dict(manifest["recipe"], overrides, origin=f"{manifest_path} (recipe)")
    store = HubStore(recipe, log=log)
    results: dict[str, PublishedRef | None] = {}
    for stage, entry in manifest.get("stages", {}).items():  # in plan order (factory.pipeline.execute)
        if entry.get("status") != "complete":
            continue
        artifact_dir = manifest_path.parent / entry["artifact_dir"]
        if not is_complete(artifact_dir):
            raise UserError(f"{artifact_dir}: the manifest lists {stage} as complete but its artifact is missing")
        ref = store.publish(artifact_dir)
        results[stage] = ref
        entry["published"] = ref.to_manifest() if ref else None
        write_json_atomic(manifest_path, manifest)
    if not results:
        raise UserError(f"{manifest_path}: no complete stage to publish")
    return results
