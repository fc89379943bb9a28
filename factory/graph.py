"""The stage graph, derived from the stages' declarations alone (consumes, produces, passes_on).

Order: a stage runs after every stage that produces a role it consumes, unless it produces that role
itself. Stages that refine the same role (teacher SFT, then teacher RL: both consume and produce the
teacher) keep the order of their recipe sections under `stages:`; a stage without a section comes
after those, in registration order. A consumer then takes each role from the latest enabled stage
before it that produces it (factory.pipeline), else from the recipe (`base_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from factory.roles import Role

if TYPE_CHECKING:
    from factory.recipe import DataSource, ModelSpec, Recipe
    from factory.stages.base import Stage


def why_disabled(recipe: Recipe, name: str, stage: Stage | None) -> str | None:
    """Why the recipe leaves stage `name` out: `stages.<name>.enabled: false`, or the stage's own
    `disabled_by` (a stage with no section of its own: whatever setting asks for it); None when it runs."""
    section = getattr(recipe.stages, name, None)
    if section is not None and not section.enabled:
        return "enabled: false in the recipe"
    return stage.disabled_by(recipe) if stage is not None else None


def enabled(recipe: Recipe, name: str, stage: Stage | None) -> bool:
    return why_disabled(recipe, name, stage) is None


def outputs(stage: Stage) -> set[Role]:
    """The roles a stage makes available downstream: its artifact's, and those it passes on."""
    return {stage.produces, *stage.passes_on}


def stage_order(registry: Mapping[str, Stage], recipe: Recipe) -> list[str]:
    """Every stage name of the plan in running order: the registered stages and the recipe's stage
    sections (a section whose stage this build lacks stays at its place, depending on nothing)."""
    sequence = list(dict.fromkeys([*type(recipe.stages).model_fields, *registry]))
    needs = {name: _upstream(name, registry) for name in sequence}
    order: list[str] = []
    while len(order) < len(sequence):
        ready = next((n for n in sequence if n not in order and needs[n] <= set(order)), None)
        if ready is None:
            waiting = [f"{n} (after {', '.join(sorted(needs[n] - set(order)))})" for n in sequence if n not in order]
            raise ValueError(f"the stages' roles form a cycle: {', '.join(waiting)}")
        order.append(ready)
    return order


def _upstream(name: str, registry: Mapping[str, Stage]) -> set[str]:
    stage = registry.get(name)
    if stage is None:
        return set()
    wanted = set(stage.consumes) - {stage.produces}
    return {other for other, up in registry.items() if other != name and outputs(up) & wanted}


def _base_role(role: Role, produced: set[Role] | Mapping[Role, Any]) -> Role | None:
    """The role whose recipe key gives `role` when no stage produces it: itself, or along its fallbacks
    (student -> distill_base); None when a stage produces it or the recipe has nothing for it."""
    while role not in produced and role.recipe_key is None and role.fallback is not None:
        role = role.fallback
    return role if role not in produced and role.recipe_key is not None else None


def base_spec(recipe: Recipe, role: Role) -> ModelSpec | DataSource:
    """The model or data set of the recipe at `role.recipe_key`."""
    section: Any = recipe
    for part in role.recipe_key.split("."):
        section = getattr(section, part)
    return section


def base_roles(recipe: Recipe, registry: Mapping[str, Stage], order: list[str]) -> list[Role]:
    """The roles enabled stages take from the recipe (no enabled stage before them produces them)."""
    produced: set[Role] = set()
    roles: list[Role] = []
    for name in order:
        stage = registry.get(name)
        if stage is None or not enabled(recipe, name, stage):
            continue
        for role in stage.consumes:
            base = _base_role(role, produced)
            if base is not None and base not in roles:
                roles.append(base)
        produced |= outputs(stage)
    return roles
