"""Artifacts: a folder plus `artifact.json`, written last and atomically.

An artifact folder is complete exactly when its `artifact.json` exists: stages write their payload
first (a model under `model/`, a dataset under `data/`, a report as `report.json`, plots as PNG and
CSV beside them) and the pipeline writes the metadata file last with an atomic rename. A folder
without it is an interrupted stage, which the next run resumes in place.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

METADATA_FILE = "artifact.json"
MANIFEST = "manifest.json"  # runs/<recipe>/: every stage's artifact and publication (pipeline, push)
KINDS = ("model", "dataset", "report")
LIBRARIES = ("factory-rlt", "torch", "transformers", "trl", "datasets", "huggingface_hub", "accelerate", "vllm")


@dataclass
class InputRef:
    """Where an input came from: another artifact (fingerprint + folder) or a base model/dataset."""

    role: str
    fingerprint: str
    path: str | None = None
    source: str | None = None  # hub id, local path or packaged model name of a base input
    revision: str | None = None  # resolved revision of a hub base input
    hub_repo: str | None = None  # where the upstream artifact was published, if it was
    hub_revision: str | None = None  # its tag there (v1, v2, ...)


@dataclass
class ArtifactMeta:
    """The metadata file of one artifact; what the manifest, the stores and the cards read."""

    kind: str
    stage: str
    role: str
    fingerprint: str
    recipe_name: str
    config: dict[str, Any]
    inputs: list[InputRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # logical name -> relative path (model, data, plots)
    columns: dict[str, str] = field(default_factory=dict)  # a dataset's column -> what it means (card, Space)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArtifactMeta:
        data = dict(data)
        data["inputs"] = [InputRef(**ref) for ref in data.get("inputs", [])]
        return cls(**data)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide numerics, for reproducibility records."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_complete(folder: Path) -> bool:
    return (folder / METADATA_FILE).is_file()


def read_meta(folder: Path) -> ArtifactMeta:
    return ArtifactMeta.from_json(json.loads((folder / METADATA_FILE).read_text()))


def mark_complete(folder: Path, meta: ArtifactMeta) -> None:
    """The last step of a stage: record the metadata, which also marks the folder complete."""
    if meta.kind not in KINDS:
        raise ValueError(f"artifact kind must be one of {KINDS}, got {meta.kind!r}")
    meta.versions = meta.versions or library_versions()
    meta.created = meta.created or datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(folder / METADATA_FILE, meta.to_json())
