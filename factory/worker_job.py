"""What a training stage hands its worker: the typed job (`job.json`) and the rows, one Arrow file.

The stage prepares everything that can fail on user input in the pipeline process, and tokenises its
rows there, once, exactly as the trainer consumes them (token ids and labels, -100 where no loss is
taken). `write_rows` streams them into `rows/rows.arrow` (Arrow IPC, batch by batch: the stage never
holds the whole table) and `write_job` the WorkerJob next to it, both atomically. Every rank opens the
rows with `open_rows` (`datasets.Dataset.from_file`), which memory-maps the file: the ranks of a
machine share its pages through the page cache, none holds the rows as Python objects (except teacher RL's
prompt -> ids dict, docs/architecture.md), and nothing is tokenised again. TRL's own preparation of a tokenised dataset (truncation, BFD packing) writes its
results as cache files beside the rows, computed by the main process first and read by the others.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from factory.artifacts import write_json_atomic
from factory.formats import StudentFormat
from factory.recipe import ModelSpec, Recipe
from factory.recipe_view import whole

if TYPE_CHECKING:
    from datasets import Dataset

    from factory.stages.base import ResolvedInput, StageContext

JOB_FILE = "job.json"
ROWS_DIR = "rows"  # the rows file and the trainer's cache files of it (truncated, packed)
ROWS_FILE = "rows.arrow"
TOKEN_COLUMNS = ("input_ids", "labels")  # int32: half of Python's int64 on disk and in the mapped pages


class WorkerJob(BaseModel):
    """Everything a training worker needs, validated when written and when read back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker: str  # the module whose `start(job)` builds the trainer, e.g. factory.stages.distill_worker
    out_dir: Path  # the artifact folder (absolute): checkpoints/, model/, result.json, the curve
    run_name: str  # the trackers' run name
    recipe: Recipe
    models: dict[str, ModelSpec]  # by role: a base model's spec, or an upstream artifact's model/ folder
    counts: dict[str, int]  # what the stage counted while preparing the rows; copied into result.json
    title: str = ""  # the curve's title, where the stage names it (distill and its baselines)
    student_format: StudentFormat | None = None  # teacher_rl: the reward student's chat format
    attn_implementation: str | None = None  # e.g. flash_attention_2 (varlen kernels for packed rows on GPU)

    @field_validator("recipe", mode="before")
    @classmethod
    def _unwrap(cls, recipe: Any) -> Any:
        """A stage's view of the recipe (factory.recipe_view) travels whole: workers are not restricted."""
        return whole(recipe)

    @property
    def rows_file(self) -> Path:
        return self.out_dir / ROWS_DIR / ROWS_FILE

    @classmethod
    def of_stage(cls, ctx: StageContext, stage: str, worker: str, **fields: Any) -> WorkerJob:
        """The job of a stage's run: its artifact folder, its recipe, a run name from recipe, stage and fingerprint."""
        run_name = run_name_of(ctx, stage)
        return cls(worker=worker, out_dir=ctx.out_dir.resolve(), run_name=run_name, recipe=ctx.recipe, **fields)


def run_name_of(ctx: StageContext, what: str) -> str:
    """The trackers' run name of a training: recipe, what trains (stage or baseline) and the fingerprint's head."""
    return f"{ctx.recipe.name}-{what}-{ctx.fingerprint[:8]}"


def model_of(item: ResolvedInput) -> ModelSpec:
    """A consumed model as a ModelSpec: an upstream artifact's absolute `model/` path, or the base spec."""
    source = item.model_source()
    if isinstance(source, ModelSpec):
        return source
    return ModelSpec(source=str(Path(source).resolve()))


def write_job(job: WorkerJob) -> Path:
    path = job.out_dir / JOB_FILE
    write_json_atomic(path, job.model_dump(mode="json"))
    return path


def read_job(path: str | Path) -> WorkerJob:
    return WorkerJob.model_validate_json(Path(path).read_text())


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def write_rows(out_dir: Path, rows: Iterable[dict[str, Any]], batch_rows: int = 256) -> int:
    """Stream `rows` (dicts with the same keys) into `out_dir/rows/rows.arrow`; returns how many.

    The folder is replaced whole, so no cache file of earlier rows survives (datasets keys a file's
    caches by its path). The file appears under its name only once complete.
    """
    import pyarrow as pa

    folder = out_dir / ROWS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    final = folder / ROWS_FILE
    tmp = folder / f".{ROWS_FILE}.{os.getpid()}.tmp"
    count, writer, schema = 0, None, None
    try:
        with pa.OSFile(str(tmp), "wb") as sink:
            for batch in _batches(rows, batch_rows):
                if schema is None:
                    schema = pa.Table.from_pylist(batch[:1]).schema
                    for name in TOKEN_COLUMNS:
                        if name in schema.names:
                            schema = schema.set(schema.get_field_index(name), pa.field(name, pa.list_(pa.int32())))
                    writer = pa.ipc.new_stream(sink, schema)
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
            if writer is None:
                raise ValueError(f"no rows to write to {final}")
            writer.close()
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def open_rows(path: Path) -> Dataset:
    """The rows file as a datasets.Dataset, memory-mapped (nothing is read until a row is)."""
    from datasets import Dataset

    return Dataset.from_file(str(path))
