"""Terminal rendering of a plan and of a run's end: what runs, why, where it goes, what it costs."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from factory.dotted import flatten
from factory.pipeline import Plan, PlannedStage, RunReport, Status

# Peak dense bf16 of one H100 SXM and an MFU typical of LLM training: only for rough plan estimates.
H100_BF16_FLOPS = 989e12
ASSUMED_MFU = 0.35

STATUS_STYLE = {
    Status.CACHED: "green",
    Status.RUN: "yellow",
    Status.RESUME: "yellow",
    Status.DISABLED: "dim",
    Status.SKIPPED: "dim",
    Status.UNREGISTERED: "red",
    Status.BLOCKED: "red",
}


def gpu_hours(flops: float) -> float:
    """FLOPs -> H100-hours at an assumed MFU; a rough order of magnitude for `plan`."""
    return flops / (H100_BF16_FLOPS * ASSUMED_MFU) / 3600


def _destination(plan: Plan, planned: PlannedStage) -> str:
    repo = plan.repo_for(planned)
    if repo is None:
        return (
            "report in the run dir, eval results on the student card" if planned.name == "evaluate" else "local store"
        )
    where = "Hub" if plan.recipe.hub.push else "local store; Hub with --push"
    return f"{repo} @ next tag v<N> ({where})"


def _compute(planned: PlannedStage) -> str:
    flops, tokens = planned.estimate.get("flops"), planned.estimate.get("tokens")
    if not flops:
        return ""
    hours = gpu_hours(flops)
    text = f"~{hours:.3g} H100-hours" if hours >= 0.01 else f"~{hours * 3600:.2g} H100-seconds"
    return f"{text} ({tokens / 1e6:.3g}M tokens)" if tokens else text


def render_plan(plan: Plan, console: Console, compact: bool = False) -> None:
    """Per stage: status and why (changed keys), fingerprint, destination, compute, settings."""
    console.print(f"[bold]plan[/bold] {plan.recipe.name}  (run dir {plan.recipe_dir})")
    for index, planned in enumerate(plan.stages, 1):
        style = STATUS_STYLE[planned.status]
        status = f"[{style}]{planned.status}[/{style}]"
        console.print(f"{index}. [bold]{planned.name:<12}[/bold] {status}: {escape(planned.reason)}")
        if compact or planned.status is Status.DISABLED:
            continue
        if planned.fingerprint:
            console.print(f"   fingerprint {planned.fingerprint[:12]}  artifact {planned.artifact_dir}")
        console.print(f"   publishes to {escape(_destination(plan, planned))}")
        if compute := _compute(planned):
            console.print(f"   compute {compute}")
        if planned.inputs:
            inputs = ", ".join(f"{role} <- {item.describe()}" for role, item in planned.inputs.items())
            console.print(f"   inputs {escape(inputs)}")
        section = getattr(plan.recipe.stages, planned.name, None)  # a stage may have no section of its own
        settings = flatten(section.model_dump(mode="json")) if section is not None else {}
        if text := ", ".join(f"{key}={value}" for key, value in settings.items() if key != "enabled"):
            console.print(f"   settings {escape(text)}", soft_wrap=True)


def render_run_end(plan: Plan, report: RunReport, console: Console) -> None:
    """The one-line summaries of the stages that ran; or why nothing ran."""
    if not report.ran:
        reasons = "; ".join(f"{s.name}: {s.status} ({s.reason})" for s in plan.stages)
        console.print(f"[green]nothing to do[/green]: {escape(reasons)}")
        return
    console.print("[bold]summary[/bold]")
    for name in report.ran:
        console.print(f"  {escape(report.summaries[name])}")


def render_memory(plan: Plan, console: Console, gpu_memory: float | None = None) -> None:
    """Per stage that would run: the GiB one GPU holds at its peak, by component (factory.memory), against the
    visible GPU, else `gpu_memory` (bytes), else DEFAULT_GPU; and whether `run` would refuse it."""
    from factory.memory import COLUMNS, DEFAULT_GPU, GIB, RESERVE, gib, visible_gpu_memory

    running = [planned for planned in plan.stages if planned.will_run and planned.stage is not None]
    if not running:
        return
    visible = visible_gpu_memory()
    gpu = visible or gpu_memory or DEFAULT_GPU
    if visible:
        against = (
            f"the visible GPU's {gib(gpu)} GiB; run refuses a stage whose model states alone exceed "
            f"{gib(gpu - RESERVE)} GiB and warns where only the longest sequences do"
        )
    else:
        given = "--gpu-memory" if gpu_memory else "the default, --gpu-memory to change"
        against = f"{gib(gpu)} GiB ({given}); no GPU visible, so run refuses nothing here"
    console.print(
        f"[bold]memory per GPU[/bold], GiB, upper bounds at the longest sequences, against {against}", soft_wrap=True
    )
    headers = ["weights", "grads", "optim", "activ", "logits", "frozen", "vLLM", "total"]
    console.print(f"   {'stage':<18}" + "".join(f"{name:>8}" for name in headers) + "  peak", soft_wrap=True)
    for planned in running:
        estimate = planned.stage.memory(plan.recipe)
        if estimate is None:
            console.print(
                f"   {planned.name:<18}  unknown: the stage gives no estimate, or its model's config.json is not here",
                soft_wrap=True,
            )
            continue
        peak = estimate.peak(gpu)
        values = [*(peak.columns(gpu)[column] for column in COLUMNS), peak.total(gpu)]
        cells = "".join(f"{value / GIB:>8.1f}" for value in values)
        verdict = (
            ""
            if estimate.fits(gpu)
            else "  [red]does not fit[/red]"
            if estimate.cannot_fit(gpu)
            else "  [yellow]fits only shorter sequences[/yellow]"
        )
        console.print(f"   {planned.name:<18}{cells}  {peak.name}{verdict}", soft_wrap=True)
