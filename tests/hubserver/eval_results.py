"""A model's `.eval_results/*.yaml`, read as the Hub reads them for the model page (`expand=evalResults`).

Each file is a YAML list of entries checked with the documented format
(https://huggingface.co/docs/hub/eval-results): `dataset.id` (a Hub dataset id) and `dataset.task_id`
required, `value` a number, `date` ISO-8601, `source.url` required when `source` is given, only the
documented keys. As on the Hub, a file that fails is reported in place of its entries
(`{"filename", "error"}`, which huggingface_hub skips with a warning), never refused at commit time.
This Hub knows no Benchmark allow-list: any dataset id of the right form is taken.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import yaml

from .cards import REPO_ID
from .storage import Commit, Hub

FOLDER = ".eval_results/"
ENTRY_KEYS = {"dataset", "value", "verifyToken", "date", "source", "notes", "evaluation_framework"}
DATASET_KEYS = {"id", "task_id", "revision"}
SOURCE_KEYS = {"url", "name", "user", "org"}


def entry_errors(entry: Any) -> list[str]:
    """What the documented format refuses in one entry."""
    if not isinstance(entry, dict):
        return ["an entry must be a mapping"]
    errors = [f'unknown key "{k}"' for k in sorted(set(entry) - ENTRY_KEYS)]
    dataset = entry.get("dataset")
    if not isinstance(dataset, dict):
        return [*errors, '"dataset" is required and must be a mapping']
    errors += [f'unknown key "dataset.{k}"' for k in sorted(set(dataset) - DATASET_KEYS)]
    if not isinstance(dataset.get("id"), str) or "/" not in dataset["id"] or not REPO_ID.match(dataset["id"]):
        errors.append('"dataset.id" must be a Hub dataset id (namespace/name)')
    if not isinstance(dataset.get("task_id"), str) or not dataset["task_id"]:
        errors.append('"dataset.task_id" is required')
    value = entry.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        errors.append('"value" must be a number')
    if "date" in entry and not _iso_date(entry["date"]):
        errors.append('"date" must be an ISO-8601 date or datetime')
    source = entry.get("source")
    if source is not None:
        if not isinstance(source, dict) or not re.match(r"https?://", str(source.get("url", ""))):
            errors.append('"source.url" (an http(s) link) is required when "source" is given')
        else:
            errors += [f'unknown key "source.{k}"' for k in sorted(set(source) - SOURCE_KEYS)]
    for key in ("notes", "verifyToken", "evaluation_framework"):
        if key in entry and not isinstance(entry[key], str):
            errors.append(f'"{key}" must be a string')
    return errors


def _iso_date(value: Any) -> bool:
    if isinstance(value, (date, datetime)):  # YAML reads an unquoted date as one
        return True
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def read_eval_results(hub: Hub, commit: Commit) -> list[dict[str, Any]]:
    """Every entry of the commit's `.eval_results/*.yaml` as `{filename, data}`, or `{filename, error}` per bad file."""
    found: list[dict[str, Any]] = []
    for path, entry in sorted(commit.files.items()):
        if not (path.startswith(FOLDER) and path.endswith((".yaml", ".yml"))):
            continue
        try:
            items = yaml.safe_load(hub.read_blob(entry.sha256))
        except yaml.YAMLError as exc:
            found.append({"filename": path, "error": f"invalid YAML: {exc}"})
            continue
        if not isinstance(items, list) or not items:
            found.append({"filename": path, "error": "the file must be a non-empty list of results"})
            continue
        errors = [e for item in items for e in entry_errors(item)]
        if errors:
            found.append({"filename": path, "error": "; ".join(errors)})
            continue
        found += [{"filename": path, "data": _json_safe(item)} for item in items]
    return found


def _json_safe(item: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, (date, datetime)) else v) for k, v in item.items()}
