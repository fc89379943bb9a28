"""A running stage reads only the recipe sections it declares: what it may not read is what its fingerprint
does not hash, so a change there would leave a stale artifact cached."""

from __future__ import annotations

import pytest
from test_pipeline import RECIPE, Recorder, run, toy_registry

from factory.recipe import load_recipe
from factory.recipe_view import RecipeView, UndeclaredRead, whole
from factory.roles import Role
from factory.stages.base import Stage, StageResult


@pytest.fixture
def toy_path(tmp_path, tiny_model_dir):
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE.replace("MODEL", str(tiny_model_dir)))
    return path


@pytest.fixture
def recipe(toy_path):
    return load_recipe(toy_path)


def test_declared_sections_are_the_real_typed_objects_and_the_rest_is_refused_by_name(recipe):
    view = RecipeView(recipe, ("stages.distill", "formats.teacher_system", "data.eval"), "distill")
    assert view.stages.distill is recipe.stages.distill  # the typed section itself, not a copy
    assert view.formats.teacher_system == recipe.formats.teacher_system
    assert view.data.eval[0].name == "held_out"
    assert view.name == "toy" and view.launch.world_size == 1  # every stage reads these
    assert view.model_dump(mode="json") == recipe.model_dump(mode="json")  # methods pass through
    with pytest.raises(UndeclaredRead, match="stage distill reads the recipe key 'formats.student_system'"):
        _ = view.formats.student_system
    with pytest.raises(UndeclaredRead, match="'stages.generate'"):
        _ = view.stages.generate
    with pytest.raises(UndeclaredRead, match="'reward'.*add it to distill's `sections`"):
        _ = view.reward
    with pytest.raises(AttributeError, match="no_such_key"):
        _ = view.no_such_key
    assert whole(view) is recipe and whole(recipe) is recipe  # what a worker's job carries


class ReadsUndeclared(Stage):
    """Declares `stages.distill` but reads `reward.kl_coef`, which its fingerprint would not hash."""

    name = "distill"
    consumes = (Role.TRACES, Role.DISTILL_BASE)
    produces = Role.STUDENT
    sections = ("stages.distill",)

    def run(self, ctx):
        assert ctx.section is ctx.recipe.stages.distill  # its own typed section
        return StageResult(summary=str(ctx.recipe.reward.kl_coef))


def test_a_stage_reading_an_undeclared_key_fails_when_it_reads_it(toy_path, tmp_path):
    registry = {**toy_registry(Recorder()), "distill": ReadsUndeclared()}
    with pytest.raises(UndeclaredRead, match="stage distill reads the recipe key 'reward'"):
        run(toy_path, tmp_path / "runs", registry)
