"""The `factory` command: a thin Typer app that parses, calls the library, and maps errors to exit codes.

`--help`, `validate` and `plan` must answer in about a second: nothing here imports torch; the
commands that need it import inside their functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from factory import __version__
from factory.errors import UserError

app = typer.Typer(
    help="Recipe-driven Reinforcement-Learned Teaching: teacher RL, traces, distillation, evaluation, Hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

RecipeArg = typer.Argument(..., help="Path of the recipe YAML file.", show_default=False)
SetOpt = typer.Option(None, "--set", help="Override a recipe key: --set stages.teacher_rl.steps=10 (repeatable).")
RunDirOpt = typer.Option(Path("runs"), "--run-dir", help="Folder holding runs, artifacts and the local store.")


def _version(value: bool) -> None:
    if value:
        console.print(f"factory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """factory: one YAML recipe from teacher RL to published students."""


def _load(recipe: Path, overrides: Optional[list[str]]):
    from factory.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


@app.command()
def validate(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a recipe: schema, types, combinations. Exit 2 with the key and line on error."""
    loaded = _load(recipe, set_)
    enabled = [name for name, section in loaded.stages if section.enabled]
    console.print(f"[green]ok[/green] {recipe}: recipe {loaded.name!r}, stages: {', '.join(enabled) or 'none'}")


def _plan(recipe: Path, overrides, run_dir: Path, force=(), from_stage=None, only=()):
    from factory.pipeline import make_plan
    from factory.stages import load_stages

    loaded = _load(recipe, overrides)
    return make_plan(loaded, run_dir, load_stages(), force=tuple(force), from_stage=from_stage, only=tuple(only))


@app.command()
def plan(
    recipe: Path = RecipeArg,
    set_: Optional[list[str]] = SetOpt,
    run_dir: Path = RunDirOpt,
    force: Optional[list[str]] = typer.Option(None, "--force", help="Re-run this stage even if cached."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run from this stage on."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this stage (repeatable)."),
) -> None:
    """Show what would run, what is cached and why not, what would be published, rough compute."""
    from factory.plan_view import render_plan

    planned = _plan(recipe, set_, run_dir, force or (), from_stage, only or ())
    render_plan(planned, console)


@app.command()
def run(
    recipe: Path = RecipeArg,
    set_: Optional[list[str]] = SetOpt,
    run_dir: Path = RunDirOpt,
    force: Optional[list[str]] = typer.Option(None, "--force", help="Re-run this stage even if cached."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run from this stage on."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this stage (repeatable)."),
    push: bool = typer.Option(False, "--push", help="Publish artifacts to the Hub (HF_ENDPOINT, HF_TOKEN)."),
) -> None:
    """Run the recipe: every stage not already cached, then publish its artifacts."""
    from factory.pipeline import execute
    from factory.plan_view import render_plan, render_run_end

    planned = _plan(recipe, set_, run_dir, force or (), from_stage, only or ())
    publisher = _publisher(planned, run_dir, push)
    render_plan(planned, console, compact=True)
    report = execute(planned, str(recipe), publisher=publisher, log=console.print)
    render_run_end(planned, report, console)


def _publisher(planned, run_dir: Path, push: bool):
    """The store the artifacts go to: the Hub with --push (or hub.push), else the local store."""
    try:
        from factory.hub import open_store
    except ImportError:
        if push or planned.recipe.hub.push:
            raise UserError("publishing is not available in this build (factory.hub is missing)") from None
        return None
    return open_store(planned.recipe, run_dir, push=push or planned.recipe.hub.push)


def main() -> None:
    """Console entry point: user errors print their message and exit 2, without a traceback."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
