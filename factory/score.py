"""`factory score`: the reward of every row of an explanation dataset (the recipe's `reward.terms`,
factory.rewards.build; the RLT reward without a recipe).

Writes one JSON line per row (the reward components, and with `dump_tokens` the RLT term's exact
token ids, spans and temperatures, enough to recompute it without factory) and prints a summary
table. A dataset's explanations count as closed unless a boolean `closed` column says otherwise;
an explanation that still contains its closing tag (a raw completion) is cut there.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from factory.data.loaders import file_records, local_data_path, text_cell
from factory.errors import UserError
from factory.paths import refuse_input_as_output
from factory.recipe import Formats, Reward

COLUMNS = ("question", "solution", "explanation")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_TYPES = ("cpu", "cuda", "mps")


def load_rows(data: str, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of a local JSONL/JSON/parquet file or a Hub dataset. A row without a
    question or a solution is bad data, as in the recipe's loader (never scored 0 and averaged in);
    an empty explanation is a teacher's legitimate output and is scored."""
    rows = []
    for number, record in itertools.islice(_records(data, split), limit):
        if not isinstance(record, dict):
            raise UserError(f"{data} row {number}: a row must be an object, got {type(record).__name__}")
        for column in COLUMNS:
            if column not in record:
                columns = ", ".join(map(str, record))
                raise UserError(f"{data}: no column {column!r} in row {number} (columns: {columns})")
        for column in ("question", "solution"):
            text_cell(record[column], f"{data} row {number}", column)
        if not isinstance(record["explanation"], str):
            shown = f"{type(record['explanation']).__name__} {record['explanation']!r}"[:80]
            raise UserError(f"{data} row {number}: column 'explanation' must be text (it may be empty), got {shown}")
        rows.append(record)
    if not rows:
        raise UserError(f"{data}: no rows to score (the data is empty)")
    return rows


def _records(data: str, split: str) -> Iterator[tuple[int, Any]]:
    path = local_data_path(data)
    if path is None:
        yield from enumerate(_hub_rows(data, split), start=1)
    elif path.is_file():
        yield from file_records(path, data)
    elif path.is_dir():
        raise UserError(f"--data {data} is a folder; give a .jsonl, .json or .parquet file or a Hub dataset id")
    else:
        raise UserError(f"data file not found: {data}")


def _hub_rows(data: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(data, split=split)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:  # unknown id or split, offline
        raise UserError(f"cannot read data {data!r}: {exc}") from None


def check_options(data: str, out: Path, device: str | None, dtype: str | None) -> tuple[str, str | None]:
    """(device, dtype) to use, after refusing what would fail late or destroy the input: an unknown
    or absent device, an unknown dtype, an --out that is the data file or cannot be written."""
    import torch

    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise UserError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: {torch.cuda.device_count()} CUDA device(s) visible here; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")
    source = local_data_path(data)
    refuse_input_as_output(out, "--out", [("the data file", source)] if source is not None else [])
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the path of the JSONL file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create its folder {out.parent} ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"--out {out}: not writable")
    return device, dtype or ("float32" if parsed.type == "cpu" else None)


def settings_from(
    recipe: str | Path | None = None, overrides: list[str] | None = None, **changes: Any
) -> tuple[Reward, Formats]:
    """(reward settings, formats): a recipe's `reward` and `formats` sections
    (factory's defaults without a recipe), then `changes` to reward keys (None leaves a key as is)."""
    from pydantic import ValidationError

    from factory.recipe import load_recipe

    if recipe is not None:
        loaded = load_recipe(recipe, overrides or [])
        reward, formats = loaded.reward, loaded.formats
    elif overrides:
        raise UserError("--set needs --recipe: it overrides keys of a recipe")
    else:
        reward, formats = Reward(), Formats()
    try:
        reward = Reward.model_validate({**reward.model_dump(), **{k: v for k, v in changes.items() if v is not None}})
    except ValidationError as exc:
        problems = [
            f"--{str(e['loc'][0]).replace('_', '-')} {e['input']!r} (reward.{e['loc'][0]}): {e['msg']}"
            for e in exc.errors()
        ]
        raise UserError("; ".join(problems)) from None
    return reward, formats


def _item(tokenizer: Any, row: dict[str, Any]):
    from factory.formats import explanation_ids, parse_teacher_completion
    from factory.rewards.base import RewardItem

    explanation, tagged = parse_teacher_completion(row["explanation"])
    closed = bool(row["closed"]) if isinstance(row.get("closed"), bool) else True
    return RewardItem(row["question"], row["solution"], explanation_ids(tokenizer, explanation), closed or tagged)


def score(
    teacher: Any,
    student: Any,
    data: str,
    out: str | Path | None = None,
    dump_tokens: bool = False,
    *,
    settings: Reward | None = None,
    formats: Formats | None = None,
    split: str = "train",
    limit: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    console: Any = None,
) -> list[dict[str, Any]]:
    """Score `data` with `teacher` and `student` (any `factory.models` source); returns the records.

    `out` defaults to `<data name>.scores.jsonl` in the current folder. On CPU the models run in
    float32 unless `dtype` says otherwise; elsewhere in their checkpoint's dtype.
    """
    from rich.console import Console
    from rich.progress import track

    from factory.formats import check_same_vocabulary, student_format
    from factory.models import load_causal_lm, load_tokenizer
    from factory.rewards.build import build_reward, find_term

    console = console or Console()
    settings, formats = settings or Reward(), formats or Formats()
    if dump_tokens and "rlt" not in settings.terms:
        raise UserError(f"--dump-tokens writes the RLT term's sequences; reward.terms is {settings.terms}")
    out = (
        Path(out) if out else Path(f"{Path(data).stem if Path(data).suffix else data.replace('/', '__')}.scores.jsonl")
    )
    device, dtype = check_options(data, out, device, dtype)
    rows = load_rows(data, split, limit)

    teacher_tokenizer, student_tokenizer = load_tokenizer(teacher), load_tokenizer(student)
    check_same_vocabulary(teacher_tokenizer, student_tokenizer)
    teacher_model = load_causal_lm(teacher, dtype=dtype, device=device)
    student_model = (
        teacher_model if str(student) == str(teacher) else load_causal_lm(student, dtype=dtype, device=device)
    )
    reward = build_reward(
        settings,
        teacher_model=teacher_model,
        student_model=student_model,
        tokenizer=teacher_tokenizer,
        student_tokenizer=student_tokenizer,
        teacher_system=formats.teacher_system,
        student_format=student_format(formats, rows),
    )
    rlt = find_term(reward, "rlt")

    items = [_item(teacher_tokenizer, row) for row in rows]
    records: list[dict[str, Any]] = []
    started, tokens = time.perf_counter(), 0
    with out.open("w") as handle:
        step = settings.batch_size * 4  # several batches per call, so length sorting has room to work
        for start in track(range(0, len(items), step), description="scoring", console=console, transient=True):
            chunk = items[start : start + step]
            for offset, (item, result) in enumerate(zip(chunk, reward.score(chunk))):
                built = rlt.sequences(item) if rlt else None
                tokens += len(built.teacher.input_ids) + len(built.student.input_ids) if built else 0
                record = {"row": start + offset, **result, "closed": item.closed}
                if dump_tokens:
                    record.update(
                        teacher_input_ids=built.teacher.input_ids,
                        student_input_ids=built.student.input_ids,
                        teacher_explanation_span=list(built.teacher.explanation_span),
                        student_explanation_span=list(built.student.explanation_span),
                        student_solution_span=list(built.student.solution_span),
                        teacher_temperature=settings.teacher_temperature,
                        student_temperature=settings.student_temperature,
                        kl_estimator=settings.kl_estimator,
                        kl_coef=settings.kl_coef,
                        alpha=settings.alpha,
                    )
                handle.write(json.dumps(record) + "\n")
                records.append(record)
    elapsed = time.perf_counter() - started
    name = "RLT reward" if settings.terms == ["rlt"] else f"reward ({' + '.join(settings.terms)})"
    console.print(summary_table(records, f"{name}: {teacher} -> {student} on {data}", reward.components))
    unclosed, truncated = sum(not r["closed"] for r in records), sum(r["truncated"] for r in records)
    rlt_settings = (
        f", {tokens / elapsed:.0f} tokens/s; lambda={settings.kl_coef} alpha={settings.alpha} "
        f"kl={settings.kl_estimator} T_teacher={settings.teacher_temperature} T_student={settings.student_temperature}"
        if rlt
        else ""
    )
    console.print(
        f"{len(records)} rows ({unclosed} unclosed, {truncated} truncated) in {elapsed:.1f} s: "
        f"{len(records) / elapsed:.2f} rows/s{rlt_settings}; wrote {out}"
    )
    return records


def summary_table(records: list[dict[str, Any]], title: str, components: tuple[str, ...]):
    """Mean, std, min and max of each component over the rows."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("component", "mean", "std", "min", "max"):
        table.add_column(name, justify="left" if name == "component" else "right")
    for key in (*components, *(key for key in ("explanation_tokens", "solution_tokens") if key in records[0])):
        values = [float(r[key]) for r in records]
        cells = (statistics.fmean(values), statistics.pstdev(values), min(values), max(values))
        table.add_row(key, *(f"{v:.4f}" for v in cells))
    return table
