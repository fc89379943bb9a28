"""Evaluate's distilled baselines as stages: students distilled exactly as the distill stage distills its
student (`stages.distill`, the student format, `distill_model`), on other traces, so that the student's
evaluation shows what its traces bought.

Neither has a recipe section: each runs when `stages.evaluate.baselines` lists its baseline (and
evaluate is enabled), with its own fingerprint (stages.distill, the student format, its inputs), resumes
through distill_model's checkpoints, and is published as versions of its own model repo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from factory.hub.content import BEFORE_RL, SKIPPED
from factory.roles import Role
from factory.stages.base import STUDENT_FORMAT, Problem, Stage, StageContext, StageResult, register, thought_problems
from factory.worker_job import run_name_of

if TYPE_CHECKING:
    from factory.recipe import Recipe


def student_is_reference(recipe: Recipe) -> bool:
    """The student itself is distilled on the reference traces: baseline reference_traces would repeat it."""
    return recipe.stages.distill.enabled and not recipe.stages.generate.enabled


class DistilledBaseline(Stage):
    """A student distilled with the distill stage's settings on `rows_of`'s traces, for evaluate.

    baseline   its name in `stages.evaluate.baselines` and in evaluate's report
    what       the traces it learns from, for the log and the loss curve's title
    """

    baseline: ClassVar[str]
    what: ClassVar[str]
    sections = ("stages.distill", *STUDENT_FORMAT)
    version = 1

    def disabled_by(self, recipe: Recipe) -> str | None:
        if not recipe.stages.evaluate.enabled:
            return "stages.evaluate is disabled"
        if self.baseline not in recipe.stages.evaluate.baselines:
            return f"stages.evaluate.baselines does not list {self.baseline}"
        return None

    def check(self, recipe: Recipe) -> list[Problem]:
        from factory.stages.distill import check_settings

        return check_settings(recipe)

    def estimate(self, recipe: Recipe) -> dict[str, float]:
        """As the distill stage estimates its own student."""
        from factory.stages.distill import DistillStage

        return DistillStage().estimate(recipe)

    def memory(self, recipe: Recipe):
        """As the distill stage trains its own student."""
        from factory.stages.distill import DistillStage

        return DistillStage().memory(recipe)

    def rows_of(self, ctx: StageContext) -> list[dict[str, str]] | str:
        """The trace rows it learns from, or why there are none."""
        raise NotImplementedError

    def run(self, ctx: StageContext) -> StageResult:
        from factory.stages.distill import distill_model

        rows = self.rows_of(ctx)
        if isinstance(rows, str):
            ctx.log(f"{self.name}: nothing to distill: {rows}")
            return StageResult(metrics={SKIPPED: rows}, summary=f"not trained: {rows}")
        metrics = distill_model(
            rows=rows,
            base=ctx.inputs[Role.DISTILL_BASE],
            recipe=ctx.recipe,
            out_dir=ctx.out_dir,
            log=ctx.log,
            run_name=run_name_of(ctx, self.baseline.replace("_", "-")),
            title=f"{self.what} baseline: distillation loss (completion tokens)",
        )
        metrics["baseline"] = self.baseline
        files = {"model": "model", "loss_curve_csv": "loss_curve.csv", "loss_curve_png": "loss_curve.png"}
        summary = f"{self.baseline}: {metrics['rows']} rows of {self.what}, {metrics['steps']} steps"
        return StageResult(metrics=metrics, files=files, summary=summary)


@register
class DistillReference(DistilledBaseline):
    """Baseline `reference_traces`: on the train set's reference thoughts, the Bespoke-Stratos baseline (role
    `student_reference`, repo `{recipe}-student-reference`). Left out when the student itself learns from the
    reference thoughts (distill on, generate off)."""

    name = "distill_reference"
    baseline = "reference_traces"
    what = "reference traces"
    consumes = (Role.TRAIN_DATA, Role.DISTILL_BASE)
    produces = Role.STUDENT_REFERENCE

    def disabled_by(self, recipe: Recipe) -> str | None:
        if student_is_reference(recipe):
            return "the student itself was distilled on the reference traces (stages.generate is disabled)"
        return super().disabled_by(recipe)

    def check(self, recipe: Recipe) -> list[Problem]:
        return super().check(recipe) + thought_problems(recipe, f"stages.evaluate.baselines: {self.baseline}")

    def rows_of(self, ctx: StageContext) -> list[dict[str, str]]:
        from factory.stages.distill import trace_rows

        return trace_rows(ctx.inputs[Role.TRAIN_DATA], ctx.log)


@register
class DistillBeforeRL(DistilledBaseline):
    """Baseline `before_rl_traces`: on the generate artifact's `before_rl` config, the same questions explained
    by the teacher before RL, so student vs this one is what RL bought the students (role `student_before_rl`,
    repo `{recipe}-student-before-rl`). Traces without that config (no explanation of the teacher before RL
    passed the checks) leave an artifact with nothing trained: `metrics["skipped"]` says why, evaluate reports
    the baseline skipped with that reason, and no store publishes it."""

    name = "distill_before_rl"
    baseline = "before_rl_traces"
    what = "traces of the teacher before RL"
    consumes = (Role.TRACES, Role.DISTILL_BASE)
    produces = Role.STUDENT_BEFORE_RL

    def rows_of(self, ctx: StageContext) -> list[dict[str, str]] | str:
        from factory.stages.distill import trace_rows

        traces = ctx.inputs[Role.TRACES]
        if not (traces.is_artifact and any((traces.artifact_dir / "data" / BEFORE_RL).glob("*.parquet"))):
            return "the traces have no before_rl config (no explanation of the teacher before RL passed the checks)"
        return trace_rows(traces, ctx.log, config=BEFORE_RL)


BASELINE_STAGES: dict[str, DistilledBaseline] = {cls.baseline: cls() for cls in (DistillReference, DistillBeforeRL)}
