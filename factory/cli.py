"""The `factory` command: a thin Typer app that parses, calls the library, and maps errors to exit codes.

`--help`, `validate` and `plan` must answer in about a second: nothing here imports torch; the
commands that need it import inside their functions.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from factory import __version__
from factory.errors import UserError, scrub, scrub_logs

app = typer.Typer(
    help="Recipe-driven Reinforcement-Learned Teaching: teacher RL, traces, distillation, evaluation, Hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
RESUMING = ("run", "generate-shard")  # commands whose rerun picks up what was finished
OUTPUTS = ("out", "votes", "run_dir")  # the options naming where a command writes


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _disk_full(exc: BaseException, command: str, params: dict[str, Any]) -> str | None:
    """A full disk, anywhere in the chain (safetensors and torch wrap the OSError in their own errors)."""
    for item in _chain(exc):
        if (isinstance(item, OSError) and item.errno in DISK_FULL) or "No space left on device" in str(item):
            named = getattr(item, "filename", None) or next((params[k] for k in OUTPUTS if params.get(k)), ".")
            where = Path(named)
            existing = next(p for p in (where.absolute(), *where.absolute().parents) if p.exists())
            free = shutil.disk_usage(existing).free
            again = " (what was finished is kept and resumed)" if command in RESUMING else ""
            return (
                f"no space left on the device holding {where} ({free / 2**20:.0f} MiB free): free some space, "
                f"then run the same command again{again}"
            )
    return None


def _hub_answer(exc: BaseException) -> str | None:
    """An HTTP answer the Hub client had no better error for (a wrong HF_ENDPOINT, a proxy, an outage)."""
    if "huggingface_hub" not in sys.modules:
        return None
    from huggingface_hub.errors import HfHubHTTPError

    for item in _chain(exc):
        if isinstance(item, HfHubHTTPError) and item.response is not None:
            request, said = item.response.request, (item.server_message or "").strip().splitlines()
            detail = f": {said[0][:300]}" if said else ""
            return (
                f"the Hub answered HTTP {item.response.status_code} to {request.method} {request.url}{detail}; "
                "check HF_ENDPOINT, the repo id and your access, or retry later"
            )
    return None


class _Command(typer.core.TyperCommand):
    """Every command: a user's mistake (a UserError, a full disk, a Hub answer it cannot use) prints one
    message without a traceback and exits 2. Whatever is printed is scrubbed of the Hub token."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = str(exc) if isinstance(exc, UserError) else None
            message = message or _disk_full(exc, ctx.info_name or "", ctx.params) or _hub_answer(exc)
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/bold red] {escape(scrub(message))}", highlight=False, soft_wrap=True)
            raise typer.Exit(UserError.exit_code) from None


def command(*args, **kwargs):
    """`app.command` with factory's error handling."""
    return app.command(*args, cls=_Command, **kwargs)


RecipeArg = typer.Argument(
    ..., help="Path of the recipe YAML file, or a bundled recipe's name (quickstart, aime, ...).", show_default=False
)
SetOpt = typer.Option(None, "--set", help="Override a recipe key: --set stages.teacher_rl.steps=10 (repeatable).")
RunDirOpt = typer.Option(Path("runs"), "--run-dir", help="Folder holding runs, artifacts and the local store.")
ForceOpt = typer.Option(None, "--force", help="Re-run this stage even if cached (repeatable).")
FromOpt = typer.Option(None, "--from", help="Re-run from this stage on.")
OnlyOpt = typer.Option(None, "--only", help="Run only this stage (repeatable).")
MemoryCheckOpt = typer.Option(
    True,
    "--memory-check/--no-memory-check",
    help="Refuse a stage whose model states alone exceed the visible GPU; warn where only the longest sequences do.",
)


@dataclass(frozen=True)
class _Selection:
    """What `plan` and `run` cover: a recipe (a file or a bundled name) with its --set overrides, the folder of
    runs, and the stages --force, --from and --only choose."""

    recipe: Path
    overrides: list[str]
    run_dir: Path
    force: tuple[str, ...] = ()
    from_stage: str | None = None
    only: tuple[str, ...] = ()


_SELECTION_OPTIONS = {  # parameter: (type, typer declaration), in --help order
    "recipe": (Path, RecipeArg),
    "set_": (list[str] | None, SetOpt),
    "run_dir": (Path, RunDirOpt),
    "force": (list[str] | None, ForceOpt),
    "from_stage": (str | None, FromOpt),
    "only": (list[str] | None, OnlyOpt),
}


def _selecting(command_function):
    """Declares the options that choose what a command covers once for `plan` and `run`: typer sees them
    before the command's own options, and the command gets them as its first argument, a `_Selection`."""
    own = list(inspect.signature(command_function, eval_str=True).parameters.values())[1:]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    shared = [inspect.Parameter(name, kind, default=d, annotation=t) for name, (t, d) in _SELECTION_OPTIONS.items()]

    def with_selection(**options: Any) -> Any:
        given = {name: options.pop(name) for name in _SELECTION_OPTIONS}
        chosen = _Selection(
            given["recipe"],
            given["set_"] or [],
            given["run_dir"],
            tuple(given["force"] or ()),
            given["from_stage"],
            tuple(given["only"] or ()),
        )
        return command_function(chosen, **options)

    functools.update_wrapper(with_selection, command_function, updated=())
    with_selection.__annotations__ = {}  # the signature below holds the evaluated types
    with_selection.__signature__ = inspect.Signature(shared + own)
    return with_selection


def _version(value: bool) -> None:
    if value:
        console.print(f"factory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """factory: one YAML recipe from teacher RL to published students."""


def _load(recipe: Path, overrides: list[str] | None):
    from factory.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


@command()
def validate(recipe: Path = RecipeArg, set_: list[str] | None = SetOpt) -> None:
    """Check a recipe: schema, types, combinations, the stages' settings, data files and model folders.
    Exit 2 with the key and line on error."""
    from factory.preflight import preflight
    from factory.stages import load_stages

    loaded = _load(recipe, set_)
    _warn(preflight(loaded, load_stages()))
    enabled = [name for name, section in loaded.stages if section.enabled]
    console.print(f"[green]ok[/green] {recipe}: recipe {loaded.name!r}, stages: {', '.join(enabled) or 'none'}")


def _plan(loaded, chosen: _Selection, running=False, memory_of=None):
    """The plan of the loaded recipe (`chosen.recipe`) over the chosen stages, its warnings printed."""
    from factory.pipeline import make_plan
    from factory.stages import load_stages

    planned = make_plan(
        loaded,
        chosen.run_dir,
        load_stages(),
        force=chosen.force,
        from_stage=chosen.from_stage,
        only=chosen.only,
        running=running,
        memory_of=memory_of,
    )
    _check_run_dir(loaded, chosen.recipe, chosen.run_dir)  # after the preflight, which names each source's key and line
    _warn(planned.warnings)
    return planned


def _check_run_dir(loaded, recipe: Path, run_dir: Path) -> None:
    """The run writes under run_dir/<recipe name>: not a file, and never an input or inside one."""
    from factory.bundled import recipe_file
    from factory.data.loaders import local_data_path
    from factory.models import source_kind
    from factory.paths import refuse_input_as_output

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a folder (it holds runs, artifacts and the local store)")
    inputs = [("the recipe", recipe_file(recipe))]
    sets = [("data.train", loaded.data.train), *((f"data.eval {s.name}", s) for s in loaded.data.eval)]
    for key, source in sets:
        path = local_data_path(source.source) if source.format != "quickstart" else None
        inputs += [(key, path)] if path is not None else []
    for role, spec in loaded.models:
        inputs += [(f"models.{role}", Path(spec.source))] if source_kind(spec) == "local" else []
    refuse_input_as_output(run_dir / loaded.name, "--run-dir", inputs)


def _warn(warnings: list[str]) -> None:
    """The preflight's warnings: settings that run but probably not as meant."""
    for line in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


@command()
@_selecting
def plan(
    chosen: _Selection,
    gpu_memory: float | None = typer.Option(
        None, "--gpu-memory", min=1, help="GiB of one GPU for the memory table when none is visible [default: 80]."
    ),
) -> None:
    """Show what would run, what is cached and why not, what would be published, rough compute, memory per GPU."""
    from factory.plan_view import render_memory, render_plan

    planned = _plan(_load(chosen.recipe, chosen.overrides), chosen)
    render_plan(planned, console)
    render_memory(planned, console, gpu_memory * 2**30 if gpu_memory else None)


@command()
@_selecting
def run(
    chosen: _Selection,
    push: bool = typer.Option(False, "--push", help="Publish artifacts to the Hub (HF_ENDPOINT, HF_TOKEN)."),
    memory_check: bool = MemoryCheckOpt,
) -> None:
    """Run the recipe: every stage not already cached, then publish its artifacts."""
    from factory.pipeline import execute, load_manifest
    from factory.plan_view import render_plan, render_run_end
    from factory.summary import run_summary

    loaded = _load(chosen.recipe, chosen.overrides)
    if loaded.launch.machine_rank > 0:
        machine_0_options = {
            "--push": push,
            "--force": chosen.force,
            "--from": chosen.from_stage,
            "--only": chosen.only,
        }
        _follow(loaded, chosen.run_dir, ignored=[flag for flag, given in machine_0_options.items() if given])
        return
    memory_of = None if memory_check else ()
    planned = _plan(loaded, chosen, running=True, memory_of=memory_of)
    publisher = _publisher(planned, chosen.run_dir, push)
    render_plan(planned, console, compact=True)
    report = execute(planned, str(chosen.recipe), publisher=publisher, log=console.print)
    render_run_end(planned, report, console)
    for line in run_summary(planned, load_manifest(planned.recipe_dir)):
        console.print(escape(line), soft_wrap=True)


def _follow(loaded, run_dir: Path, ignored: list[str]) -> None:
    """A machine of rank > 0: check the recipe here, then join machine 0's run (factory.machines)."""
    from factory.launch import run_worker
    from factory.machines import follow
    from factory.preflight import preflight
    from factory.stages import load_stages

    _warn(preflight(loaded, load_stages(), running=True))
    rank = loaded.launch.machine_rank
    if ignored:
        _warn([f"{', '.join(ignored)} ignored on machine {rank}: machine 0 plans, runs the stages and publishes"])
    ran = follow(run_dir / loaded.name, loaded.launch, run_worker, console.print)
    console.print(f"machine {rank}: ran its part of {ran} training world(s) of machine 0's run; machine 0 published")


@command()
def score(
    teacher: str = typer.Option(..., "--teacher", help="Teacher: Hub id[@rev], local folder or packaged:NAME."),
    student: str = typer.Option(..., "--student", help="Reward student; must share the teacher's vocabulary."),
    data: str = typer.Option(
        ..., "--data", help="JSONL/JSON/parquet file or Hub dataset id: question, solution, explanation."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="JSONL written, one line per row [default: <data>.scores.jsonl]."
    ),
    dump_tokens: bool = typer.Option(
        False, "--dump-tokens", help="Add token ids, spans and temperatures to each line."
    ),
    recipe: Path | None = typer.Option(None, "--recipe", help="Take reward settings and system prompts from a recipe."),
    set_: list[str] | None = SetOpt,
    kl_estimator: str | None = typer.Option(None, "--kl-estimator", help="k1 (default), k3 or full."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Sequences per forward pass."),
    split: str = typer.Option("train", "--split", help="Split of a Hub dataset."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N rows."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 ... [default: float32 on CPU]."),
) -> None:
    """RLT reward of every row of an explanation dataset: JSON lines and a summary table."""
    from factory.score import score as run_score
    from factory.score import settings_from

    settings, formats = settings_from(recipe, set_, kl_estimator=kl_estimator, batch_size=batch_size)
    run_score(
        teacher,
        student,
        data,
        out,
        dump_tokens,
        settings=settings,
        formats=formats,
        split=split,
        limit=limit,
        device=device,
        dtype=dtype,
        console=console,
    )


@command()
def compare(
    sources: list[str] = typer.Argument(
        ...,
        help="Two or more trace datasets, each owner/name@rev, an artifact folder or a .parquet/.jsonl file, optionally as LABEL=SOURCE; SOURCE#CONFIG picks a dataset config (e.g. #before_rl).",
    ),
    port: int | None = typer.Option(None, "--port", help="Port to serve on; by default the first free one from 7860."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 to share on the network)."),
    votes: Path = typer.Option(Path("compare-votes.jsonl"), "--votes", help="JSONL file the votes are appended to."),
    votes_repo: str | None = typer.Option(None, "--votes-repo", help="Hub dataset the Publish button pushes votes to."),
) -> None:
    """Serve the Gradio app comparing teachers' explanations side by side (the compare Space, locally)."""
    from factory.compare import launch, space_module
    from factory.paths import refuse_input_as_output

    data = space_module("compare_sources")
    locations = [Path(data.split_config(data.split_spec(spec)[1])[0]) for spec in sources]
    refuse_input_as_output(votes, "--votes", [("the source", path) for path in locations if path.exists()])
    launch(sources, port, host, votes, votes_repo)


@command()
def push(
    run_dir: Path = typer.Argument(
        ..., help="The run folder (--run-dir of `factory run`) or one recipe's folder in it."
    ),
    recipe_name: str | None = typer.Option(None, "--recipe", help="Which recipe's run, if the folder holds several."),
    set_: list[str] | None = SetOpt,
) -> None:
    """Publish a finished run to the Hub (HF_ENDPOINT, HF_TOKEN); what is already there is skipped."""
    from factory.hub.push import push_run

    results = push_run(run_dir, recipe_name, set_ or [], log=console.print)
    published = [f"{stage}: {ref.repo}@{ref.revision}" for stage, ref in results.items() if ref is not None]
    console.print(f"[green]pushed[/green] {len(published)} artifact(s): " + "; ".join(published))


@command("generate-shard")
def generate_shard(
    recipe: Path = RecipeArg,
    shard: str = typer.Option(..., "--shard", help="I or I/N: shard I of N (default N: stages.generate.shards)."),
    set_: list[str] | None = SetOpt,
    run_dir: Path = RunDirOpt,
    memory_check: bool = MemoryCheckOpt,
) -> None:
    """Generate and score one shard of the generate stage (spread over nodes); `factory run` merges."""
    from factory.stages.generate import run_shard

    memory_of = ("generate",) if memory_check else ()
    chosen = _Selection(recipe, set_ or [], run_dir)
    plan = _plan(_load(recipe, set_), chosen, running=True, memory_of=memory_of)
    index, count = _parse_shard(shard, plan.recipe.stages.generate.shards)
    console.print(run_shard(plan, index, count, log=console.print))


def _parse_shard(shard: str, default_count: int) -> tuple[int, int]:
    """`--shard I` (of `default_count`) or `I/N` as (index, count)."""
    text, _, count_text = shard.partition("/")
    try:
        index, count = int(text), int(count_text) if count_text else default_count
    except ValueError:
        raise UserError(f"--shard {shard!r}: write I or I/N, e.g. --shard 3/8") from None
    if not 0 <= index < count:
        raise UserError(
            f"--shard {shard!r}: the index must be in 0..{count - 1} (stages.generate.shards = {default_count})"
        )
    return index, count


def _publisher(planned, run_dir: Path, push: bool):
    """The store the artifacts go to: the Hub with --push (or hub.push), else the local store."""
    try:
        from factory.hub import open_store
    except ImportError:
        if push or planned.recipe.hub.push:
            raise UserError("publishing is not available in this build (factory.hub is missing)") from None
        return None
    return open_store(planned.recipe, run_dir, push=push or planned.recipe.hub.push, log=console.print)


def main() -> None:
    """Console entry point: a bug keeps its traceback and exit code 1, scrubbed of the Hub token like
    every log record (typer's own excepthook would print it unscrubbed).

    OpenMP's idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless the environment
    sets it; read when torch loads, which no command does before this): a spinning torch thread holds
    the core its partner waits for whenever another process shares the cores, and on a 2-core machine
    with other work running, decoding and training steps took 2-4x (up to 20x) as long as with
    sleeping threads.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    scrub_logs()
    try:
        app()
    except Exception:
        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(1)


if __name__ == "__main__":
    main()
