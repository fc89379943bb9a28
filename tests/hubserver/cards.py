"""Card metadata checked with the Hub's rules, on validate-yaml and on every commit of a README.md.

Only the keys factory writes (license, tags, base_model, datasets, model-index, configs): a card the
real Hub would refuse fails here too, before a release meets it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .storage import Hub, HubError

LICENSES = {
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc0-1.0",
    "gpl-3.0",
    "lgpl-3.0",
    "agpl-3.0",
    "openrail",
    "llama3",
    "llama3.1",
    "gemma",
    "other",
    "unknown",
}
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def card_metadata(content: str) -> dict[str, Any] | None:
    """The YAML front matter of a README.md, or None when it has none. Raises HubError on bad YAML."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise HubError(400, f"Invalid YAML in metadata: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HubError(400, "Metadata must be a YAML mapping")
    return data


def validate_metadata(data: dict[str, Any], repo_type: str) -> list[str]:
    """The Hub's checks for the metadata keys factory writes; returns error messages."""
    errors: list[str] = []

    def str_list(key: str, value: Any) -> list[str]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            errors.append(f'"{key}" must be a string or an array of strings')
            return []
        return values

    for lic in str_list("license", data.get("license", [])):
        if lic not in LICENSES:
            errors.append(f'"license" must be one of the Hub licenses, got "{lic}"')
    str_list("tags", data.get("tags", []))
    for key in ("base_model", "datasets"):
        for value in str_list(key, data.get(key, [])):
            if not REPO_ID.match(value):
                errors.append(f'"{key}" must be Hub repo ids, got "{value}"')
    if repo_type == "model" and "model-index" in data:
        errors += _model_index_errors(data["model-index"])
    if repo_type == "dataset":
        errors += _configs_errors(data.get("configs", []))
    return errors


def _model_index_errors(model_index: Any) -> list[str]:
    if not isinstance(model_index, list):
        return ['"model-index" must be an array']
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in model.get("results") or []:
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append('"model-index[].results[].task.type" is required')
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append('"model-index[].results[].dataset" needs "type" and "name" strings')
            if not isinstance(metrics, list) or not metrics:
                errors.append('"model-index[].results[].metrics" must be a non-empty array')
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    errors.append('"model-index[].results[].metrics[]" needs a "type" string and a "value"')
    return errors


def _configs_errors(configs: Any) -> list[str]:
    if not isinstance(configs, list):
        return ['"configs" must be an array']
    errors, names = [], []
    for config in configs:
        name = config.get("config_name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            errors.append('"configs[].config_name" must be a string')
            continue
        names.append(name)
        files = config.get("data_files")
        items = [files] if isinstance(files, str) else files
        ok = isinstance(items, list) and all(
            isinstance(i, str) or (isinstance(i, dict) and isinstance(i.get("split"), str) and "path" in i)
            for i in items
        )
        if not ok:
            errors.append(f'"configs[{name}].data_files" must be paths or {{split, path}} items')
    if len(names) != len(set(names)):
        errors.append('"configs[].config_name" must be unique')
    return errors


def check_card(content: str, repo_type: str) -> None:
    metadata = card_metadata(content)
    errors = validate_metadata(metadata, repo_type) if metadata else []
    if errors:
        raise HubError(
            400,
            "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors),
            errors=[{"message": e} for e in errors],
        )


def validate_yaml(hub: Hub, body, **_):
    request = json.loads(body)
    check_card(request["content"], request.get("repoType", "model"))
    return 200, {}, {"errors": [], "warnings": []}
