"""The preflight: every check that needs no model, run before any work by `validate`, `plan` and `run`.

Each enabled stage's base inputs (model folders, data files: their first row) and its own rules
(`Stage.check`) are checked together, so a recipe with three mistakes says all three at once, each with
its recipe key and YAML line, before anything is read or written; warnings are returned for the caller
to print.
"""

from __future__ import annotations

from functools import partial

from factory.errors import UserError
from factory.graph import base_roles, base_spec, enabled, stage_order
from factory.recipe import ModelSpec, Recipe
from factory.stages.base import Problem, Stage, problems_of


def preflight(recipe: Recipe, registry: dict[str, Stage], running: bool = False) -> list[str]:
    """Every check that needs no model, before any work (validate, plan and the start of run): the
    models and data sets the enabled stages read, then each enabled stage's own rules (`Stage.check`).
    Raises one UserError listing every error with its recipe key and line; returns the warnings.
    `running`: the stages will run on this machine, so what it lacks is an error too."""
    from factory.data import check_data_source
    from factory.models import check_model_source

    problems: list[Problem] = []
    order = stage_order(registry, recipe)
    for role in base_roles(recipe, registry, order):
        spec = base_spec(recipe, role)
        check = check_model_source if isinstance(spec, ModelSpec) else check_data_source
        problems += problems_of(f"{role.recipe_key}.source", partial(check, spec))
    for name in order:
        if name in registry and enabled(recipe, name, registry[name]):
            problems += registry[name].check(recipe)
    problems = list(dict.fromkeys(problems))  # a rule two stages share (stages.distill) is said once
    fatal = [p for p in problems if not p.warning and (running or not p.machine)]
    if fatal:
        count = f"{len(fatal)} problems" if len(fatal) > 1 else "1 problem"
        lines = "\n  ".join(_located(recipe, p) for p in fatal)
        raise UserError(f"recipe {recipe.name!r} cannot run ({count}, found before any work):\n  {lines}")
    return [_located(recipe, p) for p in problems if p.warning or p.machine]


def _located(recipe: Recipe, problem: Problem) -> str:
    where = recipe.where(problem.key)
    return f"{problem.key}{f' ({where})' if where else ''}: {problem.message}"
