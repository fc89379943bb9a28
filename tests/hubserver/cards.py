"""Card metadata checked with the Hub's rules, on validate-yaml and on every commit of a README.md.

The keys factory writes, with the rules the Hub documents (https://huggingface.co/docs/hub/model-cards,
datasets-cards, spaces-config-reference): license ids, string lists (tags, datasets, models), base_model
as Hub repo ids with base_model_relation one of the four relations, the model-index structure, dataset
configs and size categories, a Space's sdk and colors. A card the real Hub would refuse fails here too,
before a release meets it; keys the Hub does not know are allowed, as on the Hub.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .storage import Hub, HubError

# the Hub's license ids (docs/hub/repositories-licenses.md), kept as data beside this module
LICENSES = {
    line for line in (Path(__file__).parent / "licenses.txt").read_text().split("\n") if line and line[0] != "#"
}
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B"}
SPACE_SDKS = {"gradio", "streamlit", "docker", "static"}
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


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
    for key in ("base_model", "datasets", "models"):
        for value in str_list(key, data.get(key, [])):
            if not REPO_ID.match(value):
                errors.append(f'"{key}" must be Hub repo ids, got "{value}"')
    if "base_model_relation" in data:
        if data["base_model_relation"] not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of {sorted(BASE_MODEL_RELATIONS)}')
        if not data.get("base_model"):
            errors.append('"base_model_relation" needs a "base_model"')
    if repo_type == "model" and "model-index" in data:
        errors += _model_index_errors(data["model-index"])
    if repo_type == "dataset":
        errors += _configs_errors(data.get("configs", []))
        for size in str_list("size_categories", data.get("size_categories", [])):
            if size not in SIZE_CATEGORIES:
                errors.append(f'"size_categories" must be one of the Hub size categories, got "{size}"')
        str_list("task_categories", data.get("task_categories", []))
    if repo_type == "space":
        errors += _space_errors(data)
    return errors


def _space_errors(data: dict[str, Any]) -> list[str]:
    errors = []
    if data.get("sdk") not in SPACE_SDKS:
        errors.append(f'"sdk" must be one of {sorted(SPACE_SDKS)}')
    for key in ("colorFrom", "colorTo"):
        if key in data and data[key] not in SPACE_COLORS:
            errors.append(f'"{key}" must be one of {sorted(SPACE_COLORS)}')
    for key in ("title", "emoji", "app_file", "sdk_version", "python_version"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
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
