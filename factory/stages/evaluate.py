"""Evaluation (RLT.md "Training pipeline", step 5): the student, and baselines, on the recipe's eval sets.

Each model answers every question of every `data.eval` set in the student format (the student's
system prompt, then the question in its set's template: SkyThought's by default, with GPQA's options
shown in a fixed shuffled order, factory.data.eval_prompts; generation continues the assistant turn:
thought, then solution), greedy by default, until the end of turn, as SkyThought decodes (no stop string). The
answer is the last `\\boxed{}` of the completion, checked with math_verify for math sets and by exact
letter for multiple choice (factory.data.answers). A question's score is the mean over its `n`
samples; a set's score is the percentage over its questions; "overall" is the plain mean over sets
(as the paper reports). The protocol (templates, system prompt, sampling, graders and their
versions) is recorded in the report and in `metrics["protocol"]`, which the student card shows.

Baselines (`stages.evaluate.baselines`) are evaluated the same way in the same stage:
`distill_base` (the untouched distillation base); `reference_traces` (a student distilled with
the distill stage's settings on the train set's reference thoughts, the Bespoke-Stratos baseline);
`before_rl_traces` (likewise, on the generate stage's `before_rl` config: the same questions
explained by the teacher before RL, so student vs this baseline is what RL bought the students).
The two distilled ones are trained by stages of their own (factory.stages.baselines), which this
stage consumes by role. A baseline identical to the student (distill disabled; or generate disabled,
so the student already learned from the reference thoughts) is not run twice and is marked skipped,
as is `before_rl_traces` when the initial teacher left no `before_rl` traces.

Artifact: `report.json` (scores, protocol, precision, engine, eval-set revisions, library
versions), `outputs/<model>/<set>.parquet` (per question and sample: id, question, prompt,
reference answer, completion, extracted answer, correct), `scores.png` + `scores.csv`. A (model,
set) whose outputs exist is not generated again when an interrupted run resumes. Metrics follow the
card contract (factory.hub.cards): `metrics[set] = {"accuracy": ...}` for the student, then
`overall`, `baselines` and `protocol`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import UserError
from factory.recipe_view import whole
from factory.roles import Role
from factory.stages.base import STUDENT_FORMAT, Problem, Stage, StageResult, eval_set_problems, register, vllm_problems
from factory.stages.baselines import BASELINE_STAGES, SKIPPED, DistilledBaseline

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.stages.base import ResolvedInput, StageContext

STUDENT = "student"
METRIC = "accuracy"


# ------------------------------------------------------------------------------------ scoring


def score_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores of one (model, set): per question, the mean of its samples; the set, the mean in %."""
    by_question: dict[str, list[bool]] = {}
    for record in records:
        by_question.setdefault(record["id"], []).append(bool(record["correct"]))
    if not by_question:
        raise ValueError("no outputs to score")
    per_question = [sum(samples) / len(samples) for samples in by_question.values()]
    return {
        METRIC: 100.0 * sum(per_question) / len(per_question),
        "questions": len(by_question),
        "samples": len(records),
        "no_answer": sum(r["extracted"] is None for r in records) / len(records),
        "truncated": sum(r["finish_reason"] == "length" for r in records) / len(records),
        "mean_completion_tokens": sum(r["completion_tokens"] for r in records) / len(records),
    }


def overall(set_scores: dict[str, dict[str, Any]]) -> float:
    """The plain (unweighted) mean of the sets' scores."""
    return sum(s[METRIC] for s in set_scores.values()) / len(set_scores)


def score_table(scores: dict[str, dict[str, Any]], sets: list[str]) -> str:
    """The per-set table (rich), models as columns, as plain text for the log."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation ({METRIC}, %)")
    table.add_column("eval set")
    for model in scores:
        table.add_column(model, justify="right")
    for name in sets:
        table.add_row(name, *(f"{scores[m]['sets'][name][METRIC]:.1f}" for m in scores))
    table.add_row("overall", *(f"{scores[m]['overall']:.1f}" for m in scores), style="bold")
    buffer = io.StringIO()
    Console(file=buffer, width=120, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def write_score_plot(scores: dict[str, dict[str, Any]], sets: list[str], folder: Path) -> None:
    """`scores.csv` and a grouped bar chart `scores.png` (sets + overall, one bar per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*sets, "overall"]
    value = lambda m, c: scores[m]["overall"] if c == "overall" else scores[m]["sets"][c][METRIC]  # noqa: E731
    with (folder / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *columns])
        for model in scores:
            writer.writerow([model, *(f"{value(model, c):.4f}" for c in columns)])
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(columns)), 3.5), dpi=120)
    width = 0.8 / len(scores)
    for index, model in enumerate(scores):
        xs = [c + index * width for c in range(len(columns))]
        axis.bar(xs, [value(model, c) for c in columns], width, label=model)
    axis.set_xticks([c + 0.4 - width / 2 for c in range(len(columns))], columns)
    axis.set_ylabel(f"{METRIC} (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / "scores.png")
    plt.close(figure)


# ------------------------------------------------------------------------------------ generation


def student_system(recipe: Recipe) -> str:
    """The system prompt every evaluated model gets: the student format's, the one the students were
    distilled with (as SkyThought's `--system-prompt-name`). The one place evaluation resolves it."""
    from factory.data.student import student_format_of

    return student_format_of(recipe).system


def student_prompt_ids(tokenizer: Any, prompt: str, system: str) -> list[int]:
    """System and user turn of the student format, the assistant turn opened for generation: the
    prefix the students saw before their thought in distillation."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load_eval_sets(recipe: Recipe, log: Callable[[str], None]) -> dict[str, list[dict[str, str]]]:
    """Rows of every eval set with their prompts (factory.data.eval_prompts), checked for reference
    answers before any model is loaded."""
    from factory.data import load_rows
    from factory.data.answers import gold_answer
    from factory.data.eval_prompts import prepare

    sets = {}
    for index, source in enumerate(recipe.data.eval):
        key = f"data.eval.{index} ({source.name})"
        rows = prepare(load_rows(source, log=log), source)
        if not rows:
            raise UserError(f"{key}: the eval set has no rows")
        for row in rows:
            if not row.get("answer"):
                raise UserError(f"{key}: row {row['id']} has no reference answer; set answer_column")
            try:
                gold_answer(row["answer"], source.kind)
            except ValueError as exc:
                raise UserError(f"{key}: row {row['id']}: {exc}; is kind: {source.kind} right?") from None
        sets[source.name] = rows
    return sets


def evaluate_model(
    *,
    label: str,
    source: Any,
    dtype: str,
    recipe: Recipe,
    sets: dict[str, list[dict[str, str]]],
    out_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Generate, extract and check every eval set with one model; per-set outputs are saved (resume)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory.data.answers import check_answer
    from factory.engines import Sampling, open_engine, prompt_seed

    settings = recipe.stages.evaluate
    kinds = {s.name: s.kind for s in recipe.data.eval}
    folder = out_dir / "outputs" / label
    folder.mkdir(parents=True, exist_ok=True)
    pending = [name for name in sets if not (folder / f"{name}.parquet").is_file()]
    engine_info: dict[str, Any] = {}
    info_file = folder / "engine.json"
    if pending:
        sampling = Sampling.of(settings, settings.n)
        engine = open_engine(
            settings.engine,
            source,
            recipe.launch,
            dtype,
            batch_size=settings.batch_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            key="stages.evaluate.engine",
        )
        model = getattr(engine, "model", None)
        engine_info = {"engine": engine.kind, "dtype": dtype, "loaded_dtype": str(getattr(model, "dtype", "")) or None}
        info_file.write_text(json.dumps(engine_info))
        system = student_system(recipe)
        with engine:
            for name in pending:
                rows = sets[name]
                log(f"evaluate {label} on {name}: {len(rows)} questions x {settings.n}")
                prompts = [student_prompt_ids(engine.tokenizer, r["prompt"], system) for r in rows]
                seeds = [prompt_seed(settings.seed, r["id"]) for r in rows]
                outputs = engine.generate(prompts, sampling, seeds=seeds)
                records = []
                for row, completions in zip(rows, outputs):
                    for sample, completion in enumerate(completions):
                        check = check_answer(completion.text, row["answer"], kinds[name])
                        records.append(
                            {
                                "id": row["id"],
                                "sample": sample,
                                "question": row["question"],
                                "prompt": row["prompt"],
                                "answer": row["answer"],
                                "completion": completion.text,
                                "extracted": check.extracted,
                                "correct": check.correct,
                                "finish_reason": completion.finish_reason,
                                "completion_tokens": len(completion.token_ids),
                            }
                        )
                pq.write_table(pa.Table.from_pylist(records), folder / f".{name}.parquet.tmp")
                (folder / f".{name}.parquet.tmp").rename(folder / f"{name}.parquet")
    elif info_file.is_file():
        engine_info = json.loads(info_file.read_text())
    set_scores = {name: score_records(pq.read_table(folder / f"{name}.parquet").to_pylist()) for name in sets}
    return {"sets": set_scores, "overall": overall(set_scores), **engine_info}


def protocol(recipe: Recipe) -> dict[str, Any]:
    """How the scores were obtained, as a reader needs it to compare them with others' (RLT.md, "Evaluation")."""
    from factory.data.answers import grader
    from factory.data.eval_prompts import describe

    settings = recipe.stages.evaluate
    return {
        "system_prompt": student_system(recipe),
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "n": settings.n,
        "max_new_tokens": settings.max_new_tokens,
        "seed": settings.seed,
        "stop": ["end of turn (eos)"],
        "sets": {s.name: {"kind": s.kind, **describe(s), "grader": grader(s.kind)} for s in recipe.data.eval},
    }


# ------------------------------------------------------------------------------------ the stage


BEFORE_RL_BASELINE = "before_rl_traces"  # the student's twin, distilled on the traces before RL


def _baselines(ctx: StageContext) -> tuple[list[tuple[str, Any, str]], dict[str, str]]:
    """(label, model source, dtype) of each baseline to run, and why any asked-for one is skipped."""
    recipe = ctx.recipe
    base_dtype = recipe.models.distill_base.dtype
    run: list[tuple[str, Any, str]] = []
    skipped: dict[str, str] = {}
    for name in recipe.stages.evaluate.baselines:
        if name == "distill_base":
            if not ctx.inputs[STUDENT].is_artifact:
                skipped[name] = "the student is the distillation base (stages.distill is disabled)"
                continue
            run.append((name, ctx.inputs[Role.DISTILL_BASE].model_source(), base_dtype))
            continue
        trained = ctx.inputs[BASELINE_STAGES[name].produces]
        why = _why_untrained(recipe, BASELINE_STAGES[name], trained)
        if why:
            skipped[name] = why
            continue
        run.append((name, trained.model_source(), base_dtype))
    return run, skipped


def _why_untrained(recipe: Recipe, stage: DistilledBaseline, trained: ResolvedInput) -> str | None:
    """Why the distilled baseline `stage` trains has no model: its stage was left out, or found no rows."""
    from factory.artifacts import read_meta

    if not trained.is_artifact:  # the baseline's own settings decide, which evaluate does not read otherwise
        return stage.disabled_by(whole(recipe)) or f"no {stage.name} stage in this build"
    return read_meta(trained.artifact_dir).metrics.get(SKIPPED)


@register
class EvaluateStage(Stage):
    name = "evaluate"
    # distill_base: the `distill_base` baseline; student_*: the distilled baselines (factory.stages.baselines)
    consumes = (Role.STUDENT, Role.DISTILL_BASE, Role.STUDENT_REFERENCE, Role.STUDENT_BEFORE_RL)
    produces = Role.REPORT
    # the student format: the system prompt of the questions
    sections = ("stages.evaluate", "data.eval", *STUDENT_FORMAT, "models.distill_base.dtype")
    version = 4  # 3: SkyThought's templates, GPQA options from columns, protocol; 4: no stop at the solution tag

    def check(self, recipe: Recipe) -> list[Problem]:
        """The eval sets, the engine (the distilled baselines' stages check what they train with)."""
        settings = recipe.stages.evaluate
        problems = eval_set_problems(recipe) + vllm_problems(settings.engine == "vllm", "stages.evaluate.engine")
        if settings.n > 1 and settings.temperature == 0:
            message = f"{settings.n} samples at temperature 0 repeat one greedy completion per question"
            problems.append(Problem("stages.evaluate.n", message, warning=True))
        return problems

    def estimate(self, recipe: Recipe) -> dict[str, float]:
        """Upper bound: every sample runs to max_new_tokens, 2 FLOPs per parameter per generated token
        (the distilled baselines' training is their stages' estimate)."""
        from factory.models import estimate_parameters

        settings = recipe.stages.evaluate
        questions = [s.limit for s in recipe.data.eval]
        if not questions or None in questions:
            return {}
        models = 1 + len(settings.baselines)
        tokens = sum(questions) * settings.n * settings.max_new_tokens * models
        params = estimate_parameters(recipe.models.distill_base)
        if not params:
            return {"tokens": tokens}
        return {"tokens": tokens, "flops": 2 * params * tokens}

    def memory(self, recipe: Recipe):
        """One model generating at a time (the student, then each baseline): vLLM's share, or transformers'
        weights and KV cache of a batch at max_new_tokens plus a prompt of up to 2048 tokens (an assumption:
        the eval sets' questions are read only when the stage runs)."""
        from factory.memory import MemoryEstimate, engine_phase

        settings = recipe.stages.evaluate
        rows, length = settings.batch_size * settings.n, 2048 + settings.max_new_tokens
        found = engine_phase(
            "generation", settings.engine, recipe.models.distill_base, settings.gpu_memory_utilization, rows, length
        )
        return MemoryEstimate((found[0],)) if found else None

    def run(self, ctx: StageContext) -> StageResult:
        from rich.markup import escape

        from factory.artifacts import library_versions, write_json_atomic
        from factory.data import resolve_revision
        from factory.models import describe

        recipe = ctx.recipe
        sets = load_eval_sets(recipe, ctx.log)
        student = ctx.inputs[STUDENT]
        student_dtype = recipe.models.distill_base.dtype if student.is_artifact else student.model.dtype
        models = [(STUDENT, student.model_source(), student_dtype)]
        baselines, skipped = _baselines(ctx)
        models += baselines
        for name, why in skipped.items():
            ctx.log(f"baseline {name} not run: {why}")
        scores = {}
        for label, source, dtype in models:
            scores[label] = evaluate_model(
                label=label, source=source, dtype=dtype, recipe=recipe, sets=sets, out_dir=ctx.out_dir, log=ctx.log
            )
        names = list(sets)
        table = score_table(scores, names)
        ctx.log(escape(table))
        write_score_plot(scores, names, ctx.out_dir)
        report = {
            "metric": f"{METRIC} (%), mean over questions of the mean over samples; overall = plain mean over sets",
            "scores": scores,
            "skipped_baselines": skipped,
            "models": {label: describe(source) for label, source, _ in models},
            "eval_sets": [
                {**s.model_dump(mode="json"), "questions": len(sets[s.name]), "resolved_revision": resolve_revision(s)}
                for s in recipe.data.eval
            ],
            "protocol": protocol(recipe),
            "versions": library_versions(),
        }
        write_json_atomic(ctx.out_dir / "report.json", report)
        metrics: dict[str, Any] = {name: {METRIC: scores[STUDENT]["sets"][name][METRIC]} for name in names}
        metrics["overall"] = scores[STUDENT]["overall"]
        metrics["protocol"] = report["protocol"]
        if len(scores) > 1:
            metrics["baselines"] = {
                label: {**{n: s["sets"][n][METRIC] for n in names}, "overall": s["overall"]}
                for label, s in scores.items()
                if label != STUDENT
            }
        summary = "; ".join(f"{label} overall {s['overall']:.1f}%" for label, s in scores.items())
        files = {"report": "report.json", "outputs": "outputs", "scores_plot": "scores.png", "scores_csv": "scores.csv"}
        return StageResult(metrics=metrics, files=files, summary=f"{summary} ({', '.join(names)})")
