"""Rows from a recipe's `DataSource` / `EvalSet`, whatever the format.

Every row has `id`, `question`, `solution` (may be absent for eval sets), optional `thought`, and
`answer` for eval sets. The id is a hash of the question text, so the same question gets the same
id in every teacher's traces and every run; a repeated question gets `-2`, `-3`... in file order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from factory.data import quickstart
from factory.data.stratos import StratosParseError, parse_record
from factory.errors import UserError
from factory.models import folder_digest, resolve_hub_revision
from factory.recipe import DataSource, EvalSet

Row = dict[str, str]
Log = Callable[[str], None]

logger = logging.getLogger("factory.data")


def row_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode()).hexdigest()[:16]


def load_rows(source: DataSource | EvalSet, log: Log = logger.warning) -> list[Row]:
    """The first `source.limit` rows (all when unset). Stratos rows that do not parse are skipped
    and reported through `log`; a bad row of any other format is a UserError."""
    failures: list[str] = []
    if source.format == "quickstart":
        rows: Iterable[Row] = quickstart.generate(source.split)
    elif source.format == "stratos":
        rows = _stratos_rows(source, failures)
    else:
        rows = (_mapped_row(source, number, record) for number, record in _records(source))
    out = _with_ids(rows, source.limit)
    if failures and not out:
        raise UserError(f"{_describe(source)}: no row is in the Stratos layout ({failures[0]})")
    if failures:
        log(f"{_describe(source)}: skipped {len(failures)} of {len(failures) + len(out)} rows read, "
            f"not in the Stratos layout (first: {failures[0]})")
    return out


def resolve_revision(source: DataSource | EvalSet) -> str:
    """What pins the data, for fingerprints: the generator version, a local file's content hash,
    or a Hub dataset's commit sha (`unresolved:<rev>` when the Hub cannot be asked)."""
    if source.format == "quickstart":
        return f"quickstart-v{quickstart.GENERATOR_VERSION}"
    path = Path(source.source).expanduser()
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()
    if path.is_dir():
        return "local:" + folder_digest(path, recursive=True)
    if source.format == "jsonl":
        raise UserError(f"data file not found: {source.source}")
    return resolve_hub_revision(source.source, source.revision, "dataset")


def check_data_source(source: DataSource | EvalSet) -> None:
    """What can be checked before any work without reading the data through: the quickstart split;
    a local file's first row, by the loader's own rules (readable, the needed columns, non-empty).
    A Hub dataset or a local dataset folder is read only when loaded."""
    if source.format == "quickstart":
        next(iter(quickstart.generate(source.split)), None)
        return
    path = Path(source.source).expanduser()
    if path.is_dir():
        return
    if not path.is_file():
        if source.format == "jsonl" or source.source.startswith(("/", ".", "~")):
            raise UserError(f"data file not found: {source.source}")
        return  # a Hub dataset id
    first = next(iter(_records(source)), None)  # a local file's first row
    if first is None:
        raise UserError(f"{_describe(source)}: no rows (the data is empty)")
    if source.format != "stratos":  # a Stratos row that does not parse is skipped, not an error
        _mapped_row(source, *first)


def _describe(source: DataSource) -> str:
    return f"{source.source} [{source.format}, split {source.split}]"


def _with_ids(rows: Iterable[Row], limit: int | None) -> list[Row]:
    out: list[Row] = []
    seen: dict[str, int] = {}
    for row in itertools.islice(rows, limit):  # never reads a row past the limit
        base = row_id(row["question"])
        seen[base] = seen.get(base, 0) + 1
        out.append({"id": base if seen[base] == 1 else f"{base}-{seen[base]}", **row})
    return out


# -------------------------------------------------------------------------------- raw records


def _records(source: DataSource) -> Iterator[tuple[int, Any]]:
    """(1-based row number, record): a local file is JSON Lines; anything else (a Hub id, a local
    dataset folder) goes through `datasets.load_dataset`."""
    path = Path(source.source).expanduser()
    if source.format == "jsonl" or path.is_file():
        yield from _jsonl_records(path, source)
    else:
        yield from enumerate(_hub_dataset(source), start=1)


def _jsonl_records(path: Path, source: DataSource) -> Iterator[tuple[int, Any]]:
    if not path.is_file():
        raise UserError(
            f"data file not found: {source.source} (format {source.format} reads a local JSON Lines file; "
            "for a Hub dataset use format: hub)"
        )
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{source.source} line {number}: not valid JSON ({exc.msg})") from None


def _hub_dataset(source: DataSource):
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        config = source.config if isinstance(source, EvalSet) else None
        return datasets.load_dataset(source.source, config, split=source.split, revision=source.revision)
    except DatasetGenerationError as exc:  # e.g. a column whose rows mix types
        raise UserError(f"dataset {_describe(source)} cannot be read: {exc.__cause__ or exc}") from None
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise
        raise UserError(f"dataset {_describe(source)}: {exc}") from None
    except OSError as exc:  # not found, not cached while offline, unreachable
        raise UserError(f"dataset {_describe(source)} cannot be loaded: {exc}") from None


# -------------------------------------------------------------------------------- formats


def _stratos_rows(source: DataSource, failures: list[str]) -> Iterator[Row]:
    for number, record in _records(source):
        try:
            yield parse_record(record)
        except StratosParseError as exc:
            failures.append(f"row {number}: {exc}")


def _mapped_row(source: DataSource | EvalSet, number: int, record: Any) -> Row:
    """A jsonl/hub record with the source's column names mapped onto the row keys."""
    if not isinstance(record, dict):
        raise UserError(f"{_describe(source)} row {number}: a row must be an object, got {type(record).__name__}")
    is_eval = isinstance(source, EvalSet)
    # (row key, column, required, recipe key naming it): eval sets need no solution, so theirs is read
    # only when present or when solution_column was set explicitly
    columns = [
        ("question", source.question_column, True, "question_column"),
        ("solution", source.solution_column, not is_eval or "solution_column" in source.model_fields_set,
         "solution_column"),
        ("thought", source.thought_column, True, "thought_column"),
    ]
    if is_eval:
        columns.append(("answer", source.answer_column, True, "answer_column"))
        columns += [(f"distractor_{n}", c, True, "distractor_columns") for n, c in enumerate(source.distractor_columns, 1)]
    row: Row = {}
    for key, column, required, setting in columns:
        if column is None or (not required and record.get(column) in (None, "")):
            continue
        if column not in record:
            raise UserError(
                f"{_describe(source)} row {number}: no column {column!r} (the {key} column); "
                f"columns: {', '.join(map(str, record))}; set {setting} to one of them"
            )
        row[key] = _text(record[column], source, number, column, allow_number=key == "answer")
    return row


def _text(value: Any, source: DataSource, number: int, column: str, allow_number: bool) -> str:
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if isinstance(value, str) else f"{type(value).__name__} {value!r}"[:80]
        raise UserError(f"{_describe(source)} row {number}: column {column!r} must be non-empty text, got {shown}")
    return value.strip()
