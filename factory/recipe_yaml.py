"""Reading a recipe's YAML: the size, node and depth limits, duplicate keys, `extends:` with deep merge, the
line of every key (`Located`), `--set` overrides checked against the schema, and validation errors worded
with keys and lines. Split from factory.recipe (which keeps the schema's checks and the entry points) so that
the reading knows nothing of the Recipe but the schema class it is given."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from factory.bundled import bundled_recipe
from factory.errors import UserError


class CombinationError(ValueError):
    """A check across sections failed: names the dotted key the error message is placed at."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# ------------------------------------------------------------------------------ YAML with lines


class Located:
    """Line numbers of every key path in the loaded YAML, across `extends` files."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, ...], str] = {}

    def record(self, node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
        self.lines[path] = f"{filename}:{node.start_mark.line + 1}"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                self.lines[path + (key,)] = f"{filename}:{key_node.start_mark.line + 1}"
                self.record_children(value_node, path + (key,), filename)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[path + (str(index),)] = f"{filename}:{item.start_mark.line + 1}"
                self.record_children(item, path + (str(index),), filename)

    def record_children(self, node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            saved = self.lines.get(path)
            self.record(node, path, filename)
            if saved:
                self.lines[path] = saved

    def where(self, path: tuple[str, ...]) -> str | None:
        """The line of `path`, or of its nearest ancestor present in the YAML."""
        for cut in range(len(path), 0, -1):
            found = self.lines.get(tuple(path[:cut]))
            if found:
                return found
        return None


MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # keys, values and items, aliases expanded; a real recipe has a few hundred
MAX_YAML_DEPTH = 50
MAX_ERRORS_SHOWN = 20


class _Refused(Exception):
    """Something the recipe loader will not build, at a YAML position."""

    def __init__(self, message: str, mark: yaml.Mark):
        super().__init__(message)
        self.mark = mark


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with a recipe's limits, checked while composing, before any object is built: an
    alias inside its own anchor, more than MAX_YAML_NODES nodes once aliases are expanded (a
    billion-laughs document stops at the first alias over the cap), nesting past MAX_YAML_DEPTH."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.expanded, self.depth = 0, 0
        self.sizes: dict[int, int] = {}  # id(node) -> its node count with aliases expanded, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self.sizes:
                    raise _Refused(f"alias *{event.anchor} is inside its own anchor &{event.anchor}", event.start_mark)
                size = self.sizes[id(target)]
                self._count(size, event.start_mark, f" (alias *{event.anchor} expands to {size})")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep; a recipe has a few", event.start_mark)
        before = self.expanded
        self._count(1, event.start_mark, "")
        node = super().compose_node(parent, index)
        self.sizes[id(node)] = self.expanded - before
        self.depth -= 1
        return node

    def _count(self, nodes: int, mark: yaml.Mark, why: str) -> None:
        self.expanded += nodes
        if self.expanded > MAX_YAML_NODES:
            raise _Refused(
                f"more than {MAX_YAML_NODES} YAML nodes{why}; a recipe has a few hundred, so reading stops here", mark
            )


def _check_duplicates(node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
    """PyYAML keeps the last of two equal keys without a word; a recipe must not."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, (*path, str(index)), filename)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in first:
                    raise UserError(
                        f"{filename}:{key_node.start_mark.line + 1}: duplicate key {'.'.join((*path, key_node.value))} "
                        f"(first at {filename}:{first[key].line + 1}); YAML would keep only the last: delete one"
                    )
                first[key] = key_node.start_mark
            _check_duplicates(value_node, (*path, str(key_node.value)), filename)


def _recipe_text(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; give the recipe's YAML file") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UserError(
            f"{path}: larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a few KB: is this the right file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the recipe as UTF-8"
        ) from None


def _parse_yaml(text: str, origin: str) -> tuple[yaml.Node | None, Any]:
    """(node, value) of one YAML document within the recipe's limits; UserErrors name `origin`."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_duplicates(node, (), origin)
        return node, loader.construct_document(node)
    except _Refused as exc:
        raise UserError(f"{origin}:{exc.mark.line + 1}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{origin}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _read_yaml(path: Path, located: Located) -> dict[str, Any]:
    node, data = _parse_yaml(_recipe_text(path), str(path))
    if node is None:
        raise UserError(
            f"{path}: the recipe is empty (only comments or blank lines); a recipe needs at least name, "
            "models and data: see recipes/quickstart.yaml"
        )
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    located.record(node, (), str(path))
    return data


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_tree(path: Path, located: Located, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve() if path.is_absolute() else path
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"recipe extends itself in a loop: {chain}")
    parent_located = Located()
    data = _read_yaml(path, parent_located)
    parent = data.pop("extends", None)
    if parent is None:
        located.lines.update(parent_located.lines)
        return data
    if not isinstance(parent, str):
        raise UserError(f"extends ({parent_located.where(('extends',))}): give the path of one recipe file")
    base_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    if not base_path.is_file():
        base_path = bundled_recipe(parent) or base_path  # `extends: quickstart`, the bundled recipe
    base = load_tree(base_path, located, (*seen, path.resolve()))
    located.lines.update(parent_located.lines)  # the child's lines win where it sets a key
    return _deep_merge(base, data)


# ---------------------------------------------------------------------------------- --set values


def _schema_field(model: type[BaseModel], path: list[str], full_key: str) -> None:
    """Check that `path` names a field of the schema (not just of the YAML); raise UserError if not."""
    current: Any = model
    for depth, part in enumerate(path):
        annotation = _unwrap(current)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                known = ", ".join(sorted(annotation.model_fields))
                where = ".".join(path[:depth]) or "the recipe"
                raise UserError(f"--set {full_key}: {where} has no key {part!r} (known: {known})")
            current = annotation.model_fields[part].annotation
        elif _is_list(annotation) and part.isdigit():
            current = annotation.__args__[0]
        else:
            raise UserError(f"--set {full_key}: {'.'.join(path[:depth])} is a value, it has no key {part!r}")


def _unwrap(annotation: Any) -> Any:
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is None and len(args) == 1 and type(annotation).__name__ == "UnionType":
        return args[0]
    if str(getattr(annotation, "__origin__", "")) == "typing.Union" and len(args) == 1:
        return args[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def apply_overrides(
    data: dict[str, Any], overrides: list[str], located: Located, schema: type[BaseModel]
) -> dict[str, Any]:
    """Apply `a.b.c=VALUE` overrides; the key must exist in `schema`, VALUE is parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, for example stages.teacher_rl.steps=10")
        path = key.split(".")
        _schema_field(schema, path, key)
        value = _parse_yaml(raw, f"--set {key}: value {raw!r}")[1] if raw.strip() else ""
        target: Any = data
        for depth, part in enumerate(path[:-1]):
            if isinstance(target, list):
                index = int(part)
                if index >= len(target):
                    raise UserError(f"--set {key}: list index {index} out of range (length {len(target)})")
                child = target[index]
            else:
                if target.get(part) is None:  # a section written empty (`reward:`) takes keys like a missing one
                    target[part] = {}
                child = target[part]
            if not isinstance(child, (dict, list)):
                at = tuple(path[: depth + 1])
                raise UserError(
                    f"--set {key}: {'.'.join(at)} is {child!r} in the recipe ({located.where(at) or 'recipe'}), "
                    "not a section with keys"
                )
            target = child
        if isinstance(target, list):
            index = int(path[-1])
            if index >= len(target):
                raise UserError(f"--set {key}: list index {index} out of range (length {len(target)})")
            target[index] = value
        else:
            target[path[-1]] = value
        located.lines[tuple(path)] = f"--set {key}"
    return data


# ----------------------------------------------------------------------------- validation errors


def format_errors(exc: ValidationError, located: Located, origin: str, schema: type[BaseModel]) -> str:
    errors = exc.errors()
    lines = [f"{origin}: recipe is not valid" + (f" ({len(errors)} errors)" if len(errors) > 1 else "")]
    for error in errors[:MAX_ERRORS_SHOWN]:
        path = tuple(str(p) for p in error["loc"])
        combination = (error.get("ctx") or {}).get("error")
        if isinstance(combination, CombinationError):
            path = tuple(combination.key.split("."))
            message = str(combination)
        elif error["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(path, schema)
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error.get("input", ...) is None and error["type"] in ("model_type", "dict_type", "list_type"):
            message = "written with no value: list its keys under it, or delete the line for its defaults"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        where = located.where(path) or origin
        lines.append(f"  {'.'.join(path) or '<recipe>'} ({where}): {message}")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return "\n".join(lines)


def _suggest(path: tuple[str, ...], schema: type[BaseModel]) -> str:
    import difflib

    model: Any = schema
    for part in path[:-1]:
        annotation = (
            _unwrap(model.model_fields[part].annotation) if part in getattr(model, "model_fields", {}) else None
        )
        if _is_list(annotation):
            annotation = annotation.__args__[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            if part.isdigit():
                continue
            return ""
        model = annotation
    close = difflib.get_close_matches(path[-1], list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(model.model_fields)}"
