"""Student distillation (RLT.md "Training pipeline", step 4): SFT of the distillation base on traces.

The traces are the generate stage's artifact (one selected explanation per question) or, with
generate disabled, the recipe's train set with its reference `thought` as the explanation (the
Bespoke-Stratos baseline). Either way each row becomes a conversational prompt/completion pair in
the student format (`formats.student_messages`): system + question as the prompt, thought and
solution as the completion, so the loss covers the completion only. Packing is best-fit
decreasing (TRL `bfd`, padding-free): whole sequences share a row without attending to each other
(a sequence over `max_length` is cut there, as without packing), and with packing one row of a
batch holds up to `max_length` tokens of several examples, so `global_batch_size` counts rows.

The stage tokenises the pairs itself, once, exactly as TRL's SFTTrainer would (`tokenised_rows`), and
hands them to `factory.stages.distill_worker` as a memory-mapped Arrow file through
`factory.worker.run_training` (one process here, `accelerate launch` with the recipe's preset
otherwise), with the folder layout and resume of factory.training (shared with teacher SFT/RL).
Output: `model/` (weights + tokenizer), `loss_curve.png` + `loss_curve.csv`, the rows trained on
(`rows/rows.arrow`: input_ids, labels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import UserError
from factory.roles import Role
from factory.stages.base import STUDENT_FORMAT, Problem, Stage, StageResult, register, thought_problems
from factory.worker_job import WorkerJob, model_of, run_name_of

if TYPE_CHECKING:
    from factory.formats import StudentFormat
    from factory.recipe import Distill, Recipe
    from factory.stages.base import ResolvedInput, StageContext

WORKER = "factory.stages.distill_worker"
TRACE_COLUMNS = ("id", "question", "solution", "explanation")


def trace_rows(traces: ResolvedInput, log: Callable[[str], None], config: str | None = None) -> list[dict[str, str]]:
    """(id, question, solution, explanation) of the traces: a generate artifact's default config (or
    `config`, e.g. before_rl), or the train DataSource's reference thoughts."""
    if traces.is_artifact:
        return _artifact_rows(traces.artifact_dir, config)
    if config is not None:
        raise ValueError(f"config {config!r} asked of {traces.describe()}, which is not a generate artifact")
    from factory.data import load_rows

    rows = load_rows(traces.data, log=log)
    if not rows:
        raise UserError(f"data.train ({traces.describe()}) has no rows to distill on")
    missing = [row["id"] for row in rows if not row.get("thought")]
    if missing:
        raise UserError(
            f"data.train: {len(missing)} of {len(rows)} rows have no reference thought (first: row {missing[0]}); "
            "with stages.generate disabled the student is distilled on the reference thoughts: set "
            "data.train.thought_column (or format: stratos), or enable stages.generate"
        )
    return [
        {"id": r["id"], "question": r["question"], "solution": r["solution"], "explanation": r["thought"]} for r in rows
    ]


def _artifact_rows(folder: Path, config: str | None) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    data = folder / "data" / config if config else folder / "data"  # other configs are subfolders of data/
    files = sorted(data.glob("*.parquet"))
    if not files:
        raise UserError(
            f"traces artifact {folder} has no {data.relative_to(folder)}/*.parquet; re-run the generate stage (--force generate)"
        )
    rows: list[dict[str, str]] = []
    for file in files:
        table = pq.read_table(file)
        absent = [c for c in TRACE_COLUMNS if c not in table.column_names]
        if absent:
            raise UserError(f"traces file {file} lacks the columns {absent} of the traces schema")
        rows += table.select(list(TRACE_COLUMNS)).to_pylist()
    return rows


def student_rows(rows: list[dict[str, str]], fmt: StudentFormat) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows of the student format, as SFTTrainer takes them."""
    from factory.formats import student_messages

    out = []
    for row in rows:
        messages = student_messages(row["question"], row["explanation"], row["solution"], fmt)
        out.append({"prompt": messages[:2], "completion": messages[2:]})
    return out


def tokenised_rows(
    pairs: Iterable[dict[str, Any]], tokenizer: Any, settings: Distill, batch_rows: int = 64
) -> Iterator[dict[str, Any]]:
    """Prompt/completion pairs (`student_rows`) as the trainer consumes them: the conversation's token ids and
    its labels, -100 over the prompt; unpacked, cut at `max_length` and without the rows left with no label.

    TRL 1.16's SFTTrainer preparation of conversational pairs, done once here instead of on every rank:
    the prompt rendered with the generation prompt, the whole conversation without it, the completion
    starting where the two token sequences diverge (`common_prefix_length`); without packing, the cut
    (`truncation_mode` keep_start) and the drop of fully masked rows, so the worker skips TRL's preparation
    (`distill_worker.sft_config`); with packing, TRL packs the rows (BFD, cutting what exceeds max_length).
    tests/test_distill.py checks the trainer's rows against TRL's own on the tiny and the Qwen tokenizer.
    """
    from trl.data_utils import common_prefix_length

    from factory.stages.handoff import IGNORE

    cut = None if settings.packing else settings.max_length
    pairs = iter(pairs)
    while batch := list(islice(pairs, batch_rows)):
        prompts = tokenizer.apply_chat_template([row["prompt"] for row in batch], add_generation_prompt=True)
        whole = tokenizer.apply_chat_template([row["prompt"] + row["completion"] for row in batch])
        for prompt_ids, ids in zip(prompts["input_ids"], whole["input_ids"]):
            start = common_prefix_length(prompt_ids, ids)
            labels = ([IGNORE] * start + ids[start:])[:cut]
            if cut is None or start < min(len(ids), cut):  # TRL drops a row the cut leaves without a label
                yield {"input_ids": ids[:cut], "labels": labels}


def _at_least_one(rows: Iterator[dict[str, Any]], count: int, max_length: int) -> Iterator[dict[str, Any]]:
    """`rows`, or a UserError when the cut at max_length left none to learn from (checked as they stream)."""
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise UserError(
            f"stages.distill.max_length: each of the {count} trace rows has a prompt of {max_length} tokens or "
            "more, so no completion token is left to learn; raise stages.distill.max_length"
        )


def check_settings(recipe: Recipe) -> list[Problem]:
    """Mistakes in `stages.distill`, which the distill stage and evaluate's distilled baselines train with."""
    from factory.training import check_sft_settings

    return check_sft_settings(recipe.stages.distill, "stages.distill", recipe.launch.world_size)


def distill_model(
    *,
    rows: list[dict[str, str]],
    base: ResolvedInput,
    recipe: Recipe,
    out_dir: Path,
    log: Callable[[str], None],
    run_name: str,
    title: str = "student distillation loss (completion tokens)",
) -> dict[str, Any]:
    """SFT `base` on trace rows with `stages.distill` into `out_dir/model` (+ loss curve); resumes.

    The folder follows factory.training's layout (job.json, checkpoints/, result.json last); a
    folder whose result.json exists has nothing left to train and returns its metrics.
    """
    from factory.worker import run_training

    def prepare() -> tuple[WorkerJob, Iterator[dict[str, Any]]]:
        from factory.data.student import student_format_of
        from factory.models import load_tokenizer
        from factory.training import last_checkpoint

        resume = last_checkpoint(out_dir)
        log(
            f"distill: {len(rows)} rows, {'resuming from ' + resume.name if resume else 'starting'} "
            f"({recipe.launch.preset}, {recipe.launch.world_size} process(es), packing "
            f"{'bfd' if recipe.stages.distill.packing else 'off'})"
        )
        job = WorkerJob(
            worker=WORKER,
            out_dir=out_dir.resolve(),
            run_name=run_name,
            recipe=recipe,
            models={"base": model_of(base)},
            counts={"rows": len(rows)},
            title=title,
        )
        pairs = student_rows(rows, student_format_of(recipe, log))
        tokenised = tokenised_rows(pairs, load_tokenizer(job.models["base"]), recipe.stages.distill)
        return job, _at_least_one(tokenised, len(rows), recipe.stages.distill.max_length)

    return run_training(out_dir, recipe.launch, prepare)


@register
class DistillStage(Stage):
    name = "distill"
    consumes = (Role.TRACES, Role.DISTILL_BASE)
    produces = Role.STUDENT
    sections = ("stages.distill", *STUDENT_FORMAT)
    version = 2  # 2: the reference student format (padding inside tags, the data's system prompt)

    def check(self, recipe: Recipe) -> list[Problem]:
        problems = check_settings(recipe)
        distill, generate = recipe.stages.distill, recipe.stages.generate
        if not generate.enabled:
            problems += thought_problems(recipe, "stages.distill (stages.generate is disabled)")
        elif generate.max_new_tokens > distill.max_length:
            message = (
                f"{distill.max_length} tokens are fewer than an explanation may have (stages.generate.max_new_tokens "
                f"= {generate.max_new_tokens}): sequences are cut at max_length, so a long trace loses its solution; "
                "raise it by the longest question and solution above that, or lower stages.generate.max_new_tokens"
            )
            problems.append(Problem("stages.distill.max_length", message, warning=True))
        return problems

    def estimate(self, recipe: Recipe) -> dict[str, float]:
        """Upper bound: every row a full `max_length` sequence, 6 FLOPs per parameter per token."""
        from factory.models import estimate_parameters

        settings = recipe.stages.distill
        rows = recipe.stages.generate.limit if recipe.stages.generate.enabled else None
        rows = rows or recipe.data.train.limit
        if settings.max_steps:
            tokens = settings.max_steps * settings.global_batch_size * settings.max_length
        elif rows:
            tokens = rows * settings.epochs * settings.max_length
        else:
            return {}
        params = estimate_parameters(recipe.models.distill_base)
        return {"tokens": tokens, "flops": 6 * params * tokens} if params else {"tokens": tokens}

    def memory(self, recipe: Recipe):
        """The distillation base trained on rows of up to max_length tokens (factory.memory.sft_memory)."""
        from factory.memory import sft_memory

        return sft_memory(recipe.models.distill_base, recipe.stages.distill, recipe.launch, "stages.distill")

    def run(self, ctx: StageContext) -> StageResult:
        traces = ctx.inputs["traces"]
        metrics = distill_model(
            rows=trace_rows(traces, ctx.log),
            base=ctx.inputs["distill_base"],
            recipe=ctx.recipe,
            out_dir=ctx.out_dir,
            log=ctx.log,
            run_name=run_name_of(ctx, self.name),
        )
        metrics["traces"] = traces.describe()
        files = {"model": "model", "loss_curve_csv": "loss_curve.csv", "loss_curve_png": "loss_curve.png"}
        loss = ""
        if metrics["last_loss"] is not None:
            loss = f", loss {metrics['first_loss']:.3f} -> {metrics['last_loss']:.3f}"
        summary = (
            f"{metrics['rows']} rows ({metrics['supervised_tokens']:,} supervised tokens) from {traces.describe()}, "
            f"{metrics['steps']} steps{loss}"
        )
        return StageResult(metrics=metrics, files=files, summary=summary)
