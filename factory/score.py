"""`factory score`: the RLT reward of every row of an explanation dataset.

Writes one JSON line per row (the reward components, and with `dump_tokens` the exact token ids,
spans and temperatures, enough to recompute the reward without factory) and prints a summary
table. A dataset's explanations count as closed unless a boolean `closed` column says otherwise;
an explanation that still contains its closing tag (a raw completion) is cut there.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from factory.errors import UserError
from factory.recipe import Reward

COLUMNS = ("question", "solution", "explanation")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(data: str, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a local JSONL/JSON/parquet file or a Hub dataset, checked for the scored columns."""
    import datasets

    path = Path(data).expanduser()
    try:
        if path.suffix in LOCAL_FORMATS or path.exists():
            if not path.is_file():
                raise UserError(f"data file not found: {data}")
            if path.suffix not in LOCAL_FORMATS:
                raise UserError(f"{data}: unknown data file type; give a .jsonl, .json or .parquet file or a Hub dataset id")
            dataset = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(data, split=split)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:  # unreadable file, unknown id or split
        raise UserError(f"cannot read data {data!r}: {exc}") from None
    for column in COLUMNS:
        if column not in dataset.column_names:
            raise UserError(f"{data}: no column {column!r} (columns: {', '.join(dataset.column_names)})")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows = dataset.to_list()
    if not rows:
        raise UserError(f"{data}: no rows to score")
    for index, row in enumerate(rows):
        for column in COLUMNS:
            if not isinstance(row[column], str):
                raise UserError(f"{data}: row {index}: {column!r} must be text, got {type(row[column]).__name__}")
    return rows


def settings_from(
    recipe: str | Path | None = None, overrides: list[str] | None = None, **changes: Any
) -> tuple[Reward, str | None, str | None]:
    """(reward settings, teacher system, student system): a recipe's `reward` and `formats` sections
    (factory's defaults without a recipe), then `changes` to reward keys (None leaves a key as is)."""
    from pydantic import ValidationError

    from factory.recipe import Formats, load_recipe

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
        raise UserError(f"reward settings: {exc}") from None
    return reward, formats.teacher_system, formats.student_system


def _item(tokenizer: Any, row: dict[str, Any]):
    from factory.formats import parse_teacher_completion
    from factory.reward import RewardItem

    explanation, tagged = parse_teacher_completion(row["explanation"])
    closed = bool(row["closed"]) if isinstance(row.get("closed"), bool) else True
    ids = tokenizer(explanation, add_special_tokens=False)["input_ids"]
    return RewardItem(row["question"], row["solution"], ids, closed or tagged)


def score(
    teacher: Any,
    student: Any,
    data: str,
    out: str | Path | None = None,
    dump_tokens: bool = False,
    *,
    settings: Reward | None = None,
    teacher_system: str | None = None,
    student_system: str | None = None,
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
    import torch
    from rich.console import Console
    from rich.progress import track

    from factory.formats import check_same_vocabulary
    from factory.models import load_causal_lm, load_tokenizer
    from factory.reward import RLTReward

    console = console or Console()
    settings = settings or Reward()
    rows = load_rows(data, split, limit)
    out = Path(out) if out else Path(f"{Path(data).stem if Path(data).suffix else data.replace('/', '__')}.scores.jsonl")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float32" if device == "cpu" else None)

    teacher_tokenizer, student_tokenizer = load_tokenizer(teacher), load_tokenizer(student)
    check_same_vocabulary(teacher_tokenizer, student_tokenizer)
    teacher_model = load_causal_lm(teacher, dtype=dtype, device=device)
    student_model = teacher_model if str(student) == str(teacher) else load_causal_lm(student, dtype=dtype, device=device)
    reward = RLTReward(
        teacher_model, student_model, teacher_tokenizer, settings, teacher_system, student_system,
        student_tokenizer=student_tokenizer,
    )  # fmt: skip

    items = [_item(teacher_tokenizer, row) for row in rows]
    records: list[dict[str, Any]] = []
    started, tokens = time.perf_counter(), 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        step = settings.batch_size * 4  # several batches per call, so length sorting has room to work
        for start in track(range(0, len(items), step), description="scoring", console=console, transient=True):
            chunk = items[start : start + step]
            for offset, (item, result) in enumerate(zip(chunk, reward.score(chunk))):
                built = reward.sequences(item)
                tokens += len(built.teacher.input_ids) + len(built.student.input_ids)
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
    console.print(summary_table(records, f"RLT reward: {teacher} -> {student} on {data}"))
    unclosed, truncated = sum(not r["closed"] for r in records), sum(r["truncated"] for r in records)
    console.print(
        f"{len(records)} rows ({unclosed} unclosed, {truncated} truncated) in {elapsed:.1f} s: "
        f"{len(records) / elapsed:.2f} rows/s, {tokens / elapsed:.0f} tokens/s; lambda={settings.kl_coef} "
        f"alpha={settings.alpha} kl={settings.kl_estimator} T_teacher={settings.teacher_temperature} "
        f"T_student={settings.student_temperature}; wrote {out}"
    )
    return records


def summary_table(records: list[dict[str, Any]], title: str):
    """Mean, std, min and max of each component over the rows."""
    from rich.table import Table

    from factory.reward import COMPONENTS

    table = Table(title=title)
    for name in ("component", "mean", "std", "min", "max"):
        table.add_column(name, justify="left" if name == "component" else "right")
    for key in (*COMPONENTS, "explanation_tokens", "solution_tokens"):
        values = [float(r[key]) for r in records]
        cells = (statistics.fmean(values), statistics.pstdev(values), min(values), max(values))
        table.add_row(key, *(f"{v:.4f}" for v in cells))
    return table
