"""Nested settings as dotted keys (`stages.generate.n`): how plan, the manifest's changed keys and
the cards name one setting. Its own module, below pipeline and hub, so neither imports the other for it."""

from __future__ import annotations

from typing import Any


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two config slices (added and removed keys too)."""
    flat_old, flat_new = flatten(old), flatten(new)
    return sorted(
        k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k, "<unset>") != flat_new.get(k, "<unset>")
    )
