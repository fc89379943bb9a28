"""The files shipped inside the package: recipes by name, `extends:` by name, and the wheel's package data.

scripts/wheel_check.sh (run by .ci/run) builds and installs the wheel itself; these tests keep the
pieces it relies on true in a checkout, in a second or two.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from commands import factory

from factory.bundled import bundled, bundled_recipe, recipe_file, recipe_names
from factory.compare import SPACE_DIR, SPACE_FILES
from factory.errors import UserError
from factory.launch import PRESET_FILES, preset_file
from factory.recipe import Launch, load_recipe


def test_package_links_to_the_checkout_folders(repo_root):
    """factory/recipes and factory/spaces are the checkout's recipes/ and spaces/, not copies."""
    assert bundled("recipes").resolve() == (repo_root / "recipes").resolve()
    assert SPACE_DIR.resolve() == (repo_root / "spaces" / "compare").resolve()
    assert recipe_names() == ["aime", "four-gpu", "one-gpu", "quickstart", "quickstart-students"]
    assert [preset_file(Launch(preset=name)).parent for name in PRESET_FILES] == [bundled("recipes", "accelerate")] * 3


def test_package_data_patterns_cover_every_shipped_file(repo_root):
    """Every file of recipes/ and spaces/compare/ matches a package-data pattern, so the wheel carries it
    (a new recipe, preset or Space file in a folder the patterns miss fails here, not in a user's install)."""
    setuptools = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["factory"]
    package = repo_root / "factory"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    files = [
        package / top / path.relative_to(repo_root / top)
        for top in ("recipes", "spaces")
        for path in (repo_root / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert files and [path for path in files if path not in shipped] == []
    assert {SPACE_DIR / name for name in SPACE_FILES} <= shipped


def test_recipe_file_by_path_or_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipe_file("quickstart") == bundled("recipes", "quickstart.yaml")
    (tmp_path / "quickstart").mkdir()  # a run folder named like the recipe is not a recipe file
    assert recipe_file("quickstart") == bundled("recipes", "quickstart.yaml")
    (tmp_path / "aime").write_text("name: mine\n")  # a file of that name wins: a path is a path
    assert recipe_file("aime") == Path("aime")
    assert recipe_file("missing.yaml") == Path("missing.yaml")  # left to the loader: `recipe not found`
    assert bundled_recipe("quickstart.yaml") is None and bundled_recipe("recipes/quickstart") is None
    with pytest.raises(UserError, match=r"'quickstrat' is neither a file nor a bundled recipe; bundled: aime, "):
        recipe_file("quickstrat")


def test_cli_runs_bundled_recipes_by_name_from_anywhere(tmp_path):
    """`factory plan aime` and `factory validate quickstart-students` (extends inside the package) from a
    folder outside the checkout; an unknown name exits 2 listing the bundled ones."""
    planned = factory("plan", "aime", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "my-org/aime-teacher" in planned.stdout and "generations_per_prompt=64" in planned.stdout
    valid = factory("validate", "quickstart-students", cwd=tmp_path)
    assert valid.returncode == 0 and "recipe 'quickstart-students'" in valid.stdout, valid.stderr
    unknown = factory("run", "quickstrat", cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "bundled: aime, four-gpu, one-gpu, quickstart, quickstart-students" in unknown.stderr
    assert not (tmp_path / "runs" / "aime").exists()


def test_extends_a_bundled_recipe_by_name(tmp_path):
    """A recipe outside the checkout builds on a bundled one by its name; a file beside it of that name wins."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: quickstart\nname: mine\nstages:\n  teacher_rl:\n    steps: 7\n")
    recipe, base = load_recipe(mine), load_recipe("quickstart")
    assert (recipe.name, recipe.stages.teacher_rl.steps) == ("mine", 7)
    assert recipe.stages.teacher_rl.steps != base.stages.teacher_rl.steps
    assert recipe.stages.generate == base.stages.generate and recipe.data == base.data
    assert recipe.where("stages.teacher_rl.steps") == f"{mine}:5"
    (tmp_path / "quickstart").write_text((tmp_path / "mine.yaml").read_text().replace("extends: quickstart\n", ""))
    mine.write_text("extends: quickstart\nname: mine2\n")  # now the file beside it: a recipe without models
    with pytest.raises(UserError, match="models"):
        load_recipe(mine)
    mine.write_text("extends: nowhere\nname: mine\n")
    with pytest.raises(UserError, match="recipe not found: .*nowhere"):
        load_recipe(mine)
