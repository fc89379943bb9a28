"""Plan and run: stages, fingerprints, cache decisions, the run directory and its manifest.

The pipeline knows stages and artifacts, not ML; the stages' declarations give the graph
(factory.graph). A stage's fingerprint hashes the recipe sections it declares minus the fields the
schema marks result-neutral (factory.stages.base.section_config), its inputs' fingerprints
(upstream artifacts, or base models/datasets with their resolved revisions) and its code version.
An artifact folder named after the fingerprint that holds an `artifact.json` is complete and is
reused; one without it is resumed in place.

Run directory layout (`--run-dir`, default `./runs`)::

    runs/<recipe name>/manifest.json                    lineage of the latest run, per stage
    runs/<recipe name>/artifacts/<stage>-<fp12>/        one folder per artifact version
    runs/<recipe name>/store/                           the local store (see factory.hub)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from factory import machines
from factory.artifacts import MANIFEST, ArtifactMeta, InputRef, is_complete, mark_complete, read_meta, write_json_atomic
from factory.data import resolve_revision as resolve_data_revision
from factory.dotted import changed_keys
from factory.errors import UserError
from factory.graph import base_spec, outputs, stage_order, why_disabled
from factory.models import resolve_revision as resolve_model_revision
from factory.preflight import preflight
from factory.recipe import ModelSpec, Recipe, recipe_to_dict
from factory.roles import Role
from factory.stages.base import ResolvedInput, Stage, StageContext, own_section, section_config, stage_view


class Status(StrEnum):
    """What the plan does with a stage; a str, so it prints and serialises as its value."""

    RUN = "run"
    RESUME = "resume"  # its folder holds an interrupted run with this fingerprint
    CACHED = "cached"  # its folder holds a complete artifact with this fingerprint
    DISABLED = "disabled"
    UNREGISTERED = "unregistered"  # a recipe section whose stage this build lacks
    BLOCKED = "blocked"  # an input cannot be had
    SKIPPED = "skipped"  # not selected by --only


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------------- base inputs


def _base_input(role: Role, recipe: Recipe, revisions: dict[str, str]) -> ResolvedInput:
    spec = base_spec(recipe, role)
    key = spec.model_dump_json()
    if key not in revisions:
        revisions[key] = resolve_model_revision(spec) if isinstance(spec, ModelSpec) else resolve_data_revision(spec)
    revision = revisions[key]
    fingerprint = _hash({"base": spec.model_dump(mode="json"), "revision": revision})
    if isinstance(spec, ModelSpec):
        return ResolvedInput(role=role, fingerprint=fingerprint, model=spec, resolved_revision=revision)
    return ResolvedInput(role=role, fingerprint=fingerprint, data=spec, resolved_revision=revision)


# ------------------------------------------------------------------------------------------- plan


@dataclass
class PlannedStage:
    name: str
    stage: Stage | None
    enabled: bool
    status: Status = Status.RUN
    reason: str = ""
    forced: bool = False  # by --force or --from: an earlier artifact of this fingerprint is set aside
    fingerprint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[Role, ResolvedInput] = field(default_factory=dict)
    artifact_dir: Path | None = None
    changed: list[str] = field(default_factory=list)
    estimate: dict[str, float] = field(default_factory=dict)

    @property
    def will_run(self) -> bool:
        return self.status in (Status.RUN, Status.RESUME)


@dataclass
class Plan:
    recipe: Recipe
    recipe_dir: Path
    stages: list[PlannedStage]
    warnings: list[str] = field(default_factory=list)  # the preflight's

    def stage(self, name: str) -> PlannedStage:
        return next(s for s in self.stages if s.name == name)

    def repo_for(self, planned: PlannedStage) -> str | None:
        """The Hub repo this stage's artifact is published to (None for reports and when no namespace)."""
        from factory.hub.content import target_for

        role, namespace = planned.stage.produces if planned.stage else None, self.recipe.hub.namespace
        return target_for(namespace, self.recipe.name, role).repo if role and role.repo_type and namespace else None


def load_manifest(recipe_dir: Path) -> dict[str, Any]:
    path = recipe_dir / MANIFEST
    if not path.is_file():
        return {"stages": {}}
    return json.loads(path.read_text())


def make_plan(
    recipe: Recipe,
    run_dir: Path,
    registry: dict[str, Stage],
    *,
    force: tuple[str, ...] = (),
    from_stage: str | None = None,
    only: tuple[str, ...] = (),
    running: bool = False,
    memory_of: tuple[str, ...] | None = None,
) -> Plan:
    """Decide, for every stage in order, whether it is cached, runs, resumes, or cannot run and why.
    The preflight runs first: a recipe with a mistake is refused before anything is read or written
    (`running`: the plan is for running here, see `preflight`; then a stage that cannot fit the visible GPUs is
    refused too: of those that will run, or of `memory_of` only, `()` for none)."""
    order = stage_order(registry, recipe)
    for name in [*force, *only, *([from_stage] if from_stage else [])]:
        if name not in order:
            raise UserError(f"stage {name}: no such stage (stages: {', '.join(order)})")
    warnings = preflight(recipe, registry, running)
    recipe_dir = run_dir / recipe.name
    previous = load_manifest(recipe_dir).get("stages", {})
    revisions: dict[str, str] = {}
    produced: dict[Role, PlannedStage] = {}  # role -> latest enabled upstream producer
    forced = set(force)
    if from_stage:
        forced.update(order[order.index(from_stage) :])
    planned_all: list[PlannedStage] = []
    missing: PlannedStage | None = None  # an enabled stage this build lacks: what it makes is unknown

    for name in order:
        stage = registry.get(name)
        off = why_disabled(recipe, name, stage)
        planned = PlannedStage(name=name, stage=stage, enabled=off is None)
        planned_all.append(planned)
        if off is not None:
            planned.status, planned.reason = Status.DISABLED, off
            continue
        if stage is None:
            planned.status, planned.reason = Status.UNREGISTERED, "stage not implemented in this build"
            missing = missing or planned
            continue
        blocked = f"comes after {missing.name}, which is {missing.status}" if missing else ""
        blocked = blocked or _resolve_inputs(planned, stage, recipe, produced, revisions)
        produced.update(dict.fromkeys(outputs(stage), planned))
        if blocked:
            planned.status, planned.reason = Status.BLOCKED, blocked
            continue
        planned.config = section_config(recipe, stage.sections_for(recipe))
        planned.fingerprint = _hash(
            {
                "stage": name,
                "version": stage.version,
                "config": planned.config,
                "inputs": {role: item.fingerprint for role, item in sorted(planned.inputs.items())},
            }
        )
        planned.artifact_dir = recipe_dir / "artifacts" / f"{name}-{planned.fingerprint[:12]}"
        planned.estimate = stage.estimate(recipe)
        _decide(planned, stage, previous.get(name), forced)

    if only:
        for planned in planned_all:
            if planned.name not in only and planned.will_run:
                planned.status, planned.reason = Status.SKIPPED, f"not selected by --only ({', '.join(only)})"
    _require_upstream(planned_all, only, from_stage)
    if running:
        checked = [p for p in planned_all if p.will_run and (memory_of is None or p.name in memory_of)]
        warnings += _check_memory(checked, recipe)
    return Plan(recipe=recipe, recipe_dir=recipe_dir, stages=planned_all, warnings=warnings)


def _check_memory(stages: list[PlannedStage], recipe: Recipe) -> list[str]:
    """With GPUs visible, a stage (of those that will run) that cannot fit them at any sequence length is refused here,
    before any model loads; one that fits only below its longest sequences is a warning (factory.memory).
    A machine without a GPU refuses nothing."""
    from factory.memory import visible_gpu_memory
    from factory.memory_fit import oversized

    gpu = visible_gpu_memory()
    if gpu is None:
        return []
    refused, at_risk = oversized(recipe, [(p.name, p.stage.memory) for p in stages], gpu)
    if refused:
        lines = "\n  ".join(refused)
        raise UserError(
            f"recipe {recipe.name!r} does not fit this machine's GPUs (factory plan shows the table; "
            f"--no-memory-check runs anyway):\n  {lines}"
        )
    return at_risk


def _resolve_inputs(
    planned: PlannedStage, stage: Stage, recipe: Recipe, produced: dict[Role, PlannedStage], revisions: dict[str, str]
) -> str:
    """Fill `planned.inputs`; return why the stage cannot run, or '' when it can."""
    for role in stage.consumes:
        found = _input(role, recipe, produced, revisions)
        if isinstance(found, str):
            return found
        planned.inputs[role] = found
    return ""


def _input(
    role: Role, recipe: Recipe, produced: dict[Role, PlannedStage], revisions: dict[str, str]
) -> ResolvedInput | str:
    """`role` from the latest enabled upstream stage that produces it or passes it on (teacher RL's
    initial teacher: the teacher it started from), else from the recipe; or why it cannot be had."""
    upstream = produced.get(role)
    if upstream is None:
        if role.recipe_key:
            return _base_input(role, recipe, revisions)
        if role.fallback is None:
            raise UserError(f"no stage produces {role!r} and the recipe has no base input for it")
        found = _input(role.fallback, recipe, produced, revisions)
        return found if isinstance(found, str) else replace(found, role=role)
    if upstream.fingerprint is None:
        return f"needs {role!r} from {upstream.name}, which is {upstream.status}"
    if role in upstream.stage.passes_on:
        return replace(upstream.inputs[upstream.stage.passes_on[role]], role=role)
    meta = read_meta(upstream.artifact_dir) if is_complete(upstream.artifact_dir) else None
    return ResolvedInput(role=role, fingerprint=upstream.fingerprint, artifact_dir=upstream.artifact_dir, meta=meta)


def _decide(planned: PlannedStage, stage: Stage, last: dict[str, Any] | None, forced: set[str]) -> None:
    complete = is_complete(planned.artifact_dir)
    if complete and planned.name not in forced:
        planned.status, planned.reason = Status.CACHED, "complete artifact with this fingerprint"
        return
    if planned.name in forced:
        planned.status, planned.reason, planned.forced = Status.RUN, "forced", True
        return
    if planned.artifact_dir.exists():
        planned.status, planned.reason = Status.RESUME, "interrupted run with this fingerprint"
        return
    planned.status = Status.RUN
    if not last or not last.get("fingerprint"):
        planned.reason = "never run"
        return
    planned.changed = changed_keys(last.get("config", {}), planned.config)
    inputs_changed = sorted(
        role for role, item in planned.inputs.items() if last.get("inputs", {}).get(role) != item.fingerprint
    )
    parts = []
    if planned.changed:
        parts.append("changed: " + ", ".join(planned.changed))
    if inputs_changed:
        parts.append("input changed: " + ", ".join(inputs_changed))
    if last.get("version") not in (None, stage.version):
        parts.append(f"stage code version {last.get('version')} -> {stage.version}")
    planned.reason = "; ".join(parts) or "no complete artifact for this fingerprint"


def _require_upstream(stages: list[PlannedStage], only: tuple[str, ...], from_stage: str | None) -> None:
    """With --only/--from, inputs come from earlier runs: they must already be complete."""
    if not only and not from_stage:
        return
    order = [planned.name for planned in stages]
    selected = set(only) if only else set(order[order.index(from_stage) :])
    for planned in stages:
        if planned.name not in selected or not planned.will_run:
            continue
        for item in planned.inputs.values():
            if item.artifact_dir is not None and not is_complete(item.artifact_dir):
                upstream = next(s for s in stages if s.artifact_dir == item.artifact_dir)
                if upstream.name not in selected:
                    raise UserError(
                        f"{planned.name} needs the {item.role!r} artifact of {upstream.name}, which has not been "
                        f"produced with the current recipe; run without --only/--from first"
                    )


# -------------------------------------------------------------------------------------------- run


@contextmanager
def _run_lock(recipe_dir: Path) -> Iterator[None]:
    """One run per recipe folder at a time: a second concurrent run would corrupt artifacts."""
    recipe_dir.mkdir(parents=True, exist_ok=True)
    with open(recipe_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another factory run is using {recipe_dir}; wait for it or use --run-dir") from None
        yield


class Publisher(Protocol):
    """What the pipeline calls after each stage to publish its artifact (factory.hub's stores)."""

    def publish(self, artifact_dir: Path) -> Any:
        """Publish (idempotently); return a ref with `to_manifest()`, or None when nothing is published."""


@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)


def execute(
    plan: Plan,
    recipe_path: str,
    *,
    publisher: Publisher | None = None,
    log: Callable[[str], None] = print,
) -> RunReport:
    """Run the stages the plan says to run, in order; record lineage in the manifest after each.

    On machine 0 of several (`launch.num_machines`), the other machines join through `factory.machines`
    before the first stage runs, and each training world is announced to them."""
    report = RunReport()
    has_work = any(planned.will_run for planned in plan.stages)
    with _run_lock(plan.recipe_dir), machines.lead(plan.recipe_dir, plan.recipe.launch, has_work, log):
        manifest = load_manifest(plan.recipe_dir)
        manifest.update(recipe_name=plan.recipe.name, recipe=recipe_to_dict(plan.recipe), recipe_path=recipe_path)
        entries = manifest.setdefault("stages", {})
        for planned in plan.stages:
            if planned.status is Status.CACHED:
                report.cached.append(planned.name)
                log(f"[cached] {planned.name}: {planned.reason} ({planned.artifact_dir.name})")
                _refresh_inputs_meta(planned)
                entries[planned.name] = _manifest_entry(plan, planned, entries.get(planned.name, {}).get("published"))
                _publish(publisher, planned, entries[planned.name])
                continue
            if not planned.will_run:
                log(f"[{planned.status}] {planned.name}: {planned.reason}")
                continue
            _refresh_inputs_meta(planned)
            summary = _run_stage(plan, planned, entries, log)
            report.ran.append(planned.name)
            report.summaries[planned.name] = summary
            entries[planned.name] = _manifest_entry(plan, planned, None)
            _publish(publisher, planned, entries[planned.name])
            manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
            write_json_atomic(plan.recipe_dir / MANIFEST, manifest)
        manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json_atomic(plan.recipe_dir / MANIFEST, manifest)
    return report


def _publish(publisher: Publisher | None, planned: PlannedStage, entry: dict[str, Any]) -> None:
    """Publish a complete artifact and record where it went; publishing twice creates nothing."""
    if publisher is None:
        return
    ref = publisher.publish(planned.artifact_dir)
    if ref is not None:
        entry["published"] = ref.to_manifest()


def _refresh_inputs_meta(planned: PlannedStage) -> None:
    """Upstream artifacts produced earlier in this run: read their metadata now that they exist."""
    for item in planned.inputs.values():
        if item.artifact_dir is not None and item.meta is None and is_complete(item.artifact_dir):
            item.meta = read_meta(item.artifact_dir)


def _run_stage(plan: Plan, planned: PlannedStage, entries: dict[str, Any], log: Callable[[str], None]) -> str:
    out_dir = planned.artifact_dir
    if planned.forced and out_dir.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        shutil.move(str(out_dir), str(out_dir.with_name(f"{out_dir.name}.replaced-{stamp}")))
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"[{planned.status}] {planned.name}: {planned.reason}")
    ctx = StageContext(
        recipe=stage_view(planned.stage, plan.recipe),
        section=own_section(planned.stage, plan.recipe),
        run_dir=plan.recipe_dir,
        out_dir=out_dir,
        fingerprint=planned.fingerprint,
        inputs=planned.inputs,
        log=log,
    )
    started = time.monotonic()
    result = planned.stage.run(ctx)
    meta = ArtifactMeta(
        kind=planned.stage.kind,
        stage=planned.name,
        role=planned.stage.produces,
        fingerprint=planned.fingerprint,
        recipe_name=plan.recipe.name,
        config=planned.config,
        inputs=[_input_ref(item, entries) for item in planned.inputs.values()],
        metrics=result.metrics,
        files=result.files,
        columns=result.columns,
    )
    mark_complete(out_dir, meta)
    elapsed = time.monotonic() - started
    summary = f"{planned.name}: {result.summary or 'done'} ({elapsed:.0f}s)"
    log(f"[done] {summary}")
    return summary


def _input_ref(item: ResolvedInput, entries: dict[str, Any]) -> InputRef:
    ref = InputRef(role=item.role, fingerprint=item.fingerprint)
    if item.artifact_dir is not None:
        ref.path = str(item.artifact_dir)
        published = entries.get(item.meta.stage, {}).get("published") if item.meta else None
        if published:
            ref.hub_repo, ref.hub_revision = published.get("repo"), published.get("revision")
    elif item.model is not None:
        ref.source, ref.revision = item.model.source, item.resolved_revision
    elif item.data is not None:
        ref.source, ref.revision = item.data.source, item.resolved_revision
    return ref


def _manifest_entry(plan: Plan, planned: PlannedStage, published: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "fingerprint": planned.fingerprint,
        "version": planned.stage.version,
        "status": "complete",
        "artifact_dir": str(planned.artifact_dir.relative_to(plan.recipe_dir)),
        "config": planned.config,
        "inputs": {role: item.fingerprint for role, item in planned.inputs.items()},
        "input_sources": {role: item.describe() for role, item in planned.inputs.items()},
        "published": published,
    }
