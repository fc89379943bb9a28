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
    if not out and not failures:
        raise UserError(f"{_describe(source)}: no rows (the data is empty)")
    if failures and not out:
        raise UserError(f"{_describe(source)}: no row is in the Stratos layout ({failures[0]})")
    if failures:
        log(
            f"{_describe(source)}: skipped {len(failures)} of {len(failures) + len(out)} rows read, "
            f"not in the Stratos layout (first: {failures[0]})"
        )
    return out


def resolve_revision(source: DataSource | EvalSet) -> str:
    """What pins the data, for fingerprints: the generator version, a local file's content hash,
    or a Hub dataset's commit sha (`unresolved:<rev>` when the Hub cannot be asked)."""
    if source.format == "quickstart":
        return f"quickstart-v{quickstart.GENERATOR_VERSION}"
    path = local_data_path(source.source)
    if path is not None and path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()
    if path is not None and path.is_dir():
        return "local:" + folder_digest(path, recursive=True)
    if path is not None or source.format == "jsonl":
        raise UserError(f"data file not found: {source.source} (format {source.format})")
    return resolve_hub_revision(source.source, source.revision, "dataset")


def check_data_source(source: DataSource | EvalSet) -> None:
    """What can be checked before any work without reading the data through: the quickstart split;
    a local file's first row, by the loader's own rules (readable, the needed columns, non-empty).
    A Hub dataset or a local dataset folder is read only when loaded."""
    if source.format == "quickstart":
        next(iter(quickstart.generate(source.split)), None)
        return
    path = local_data_path(source.source)
    if (path is None and source.format != "jsonl") or (path is not None and path.is_dir()):
        return
    first = next(iter(_records(source)), None)  # a local file's first row; a missing file raises there
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
    """(1-based row number, record): a local file by `file_records`; a Hub id or a local dataset
    folder through `datasets.load_dataset`. A local path that does not exist is an error whatever
    the format: it must not be mistaken for a Hub id."""
    path = local_data_path(source.source)
    if path is not None and path.is_file():
        yield from file_records(path, source.source)
    elif path is not None and not path.exists() or source.format == "jsonl" and path is None:
        raise UserError(
            f"data file not found: {source.source} (format {source.format}; a local file is JSON Lines, .json "
            "or .parquet, a Hub dataset is named org/name with format: hub)"
        )
    else:
        yield from enumerate(_hub_dataset(source), start=1)


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow")


def local_data_path(text: str) -> Path | None:
    """The local file or folder `text` names, or None for a Hub dataset id: a path that exists, or
    one written as a path (./, /, ~, a data file's suffix, more than one '/')."""
    path = Path(text).expanduser()
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1 or path.suffix in DATA_SUFFIXES:
        return path
    return None


def file_records(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """(1-based row number, record) of a local file: parquet by its suffix; a .json file holding one
    array; anything else JSON Lines (blank lines skipped, numbered by line)."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path, label)
        return
    with path.open("rb") as handle:
        if path.suffix == ".json" and handle.read(64).lstrip().startswith(b"["):
            handle.seek(0)
            records = _json_value(handle.read(), label, None)
            if not isinstance(records, list):
                raise UserError(f"{label}: a .json data file holds one array of row objects")
            yield from enumerate(records, start=1)
            return
        handle.seek(0)
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, _json_value(line, label, number)


def _json_value(raw: bytes, label: str, line: int | None) -> Any:
    """One JSON value: a JSON Lines line (`line` its number) or a whole file (line None)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = line or 1 + raw.count(b"\n", 0, exc.start)
        byte = raw[exc.start]
        raise UserError(f"{label} line {at}: not UTF-8 text (byte 0x{byte:02x}); save the data as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label} line {line or exc.lineno}: not valid JSON ({exc.msg})") from None


def _parquet_records(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield number, record
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{label}: not a readable parquet file ({exc})") from None


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
        (
            "solution",
            source.solution_column,
            not is_eval or "solution_column" in source.model_fields_set,
            "solution_column",
        ),
        ("thought", source.thought_column, True, "thought_column"),
    ]
    if is_eval:
        columns.append(("answer", source.answer_column, True, "answer_column"))
        columns += [
            (f"distractor_{n}", c, True, "distractor_columns") for n, c in enumerate(source.distractor_columns, 1)
        ]
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
    return text_cell(value, f"{_describe(source)} row {number}", column)


def text_cell(value: Any, where: str, column: str) -> str:
    """A cell that must hold text, stripped; `where` names the data and the row in the error."""
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if isinstance(value, str) else f"{type(value).__name__} {value!r}"[:80]
        raise UserError(f"{where}: column {column!r} must be non-empty text, got {shown}")
    return value.strip()
