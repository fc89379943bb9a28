"""Publishing artifacts: versioned repos with lineage cards, on the Hub or in a local folder store.

`open_store(recipe, run_dir, push)` returns the store a run publishes to: the Hub (`HF_ENDPOINT`,
token from HF_TOKEN or the login cache, checked before any upload) when pushing, else the local
store under `run_dir/<recipe>/store/`, which holds the same repos, files and cards for offline runs.
`store.publish(artifact_dir)` returns a `PublishedRef` (repo, tag, commit, url, created).
`factory push RUN_DIR` (factory.hub.push) publishes a finished run to the Hub later.

See factory.hub.store for the versioning rules (one repo per role, `vN` tags, the same fingerprint
never published twice, interrupted publishes completed on the next run) and factory.hub.content
for what goes into each repo.
"""

from factory.hub.content import Target, target_for
from factory.hub.store import LocalStore, PublishedRef, Store, open_store

__all__ = ["LocalStore", "PublishedRef", "Store", "Target", "open_store", "target_for"]
