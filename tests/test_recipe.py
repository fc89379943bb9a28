"""Recipe schema: errors name the key and its line; overrides are type-checked; extends merges."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from factory.errors import UserError
from factory.recipe import load_recipe

MINIMAL = """\
name: tiny
models:
  teacher: {source: ./teacher}
  student: {source: ./student}
  distill_base: {source: ./teacher}
data:
  train: {source: quickstart, format: quickstart}
  eval:
    - {name: held_out, source: quickstart, format: quickstart, split: eval}
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, overrides=None) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_shipped_recipes_validate(repo_root):
    aime = load_recipe(repo_root / "recipes/aime.yaml")
    rl = aime.stages.teacher_rl
    assert (rl.steps, rl.prompts_per_step, rl.generations_per_prompt) == (125, 16, 64)
    assert (rl.learning_rate, rl.beta, rl.ref_sync_steps, rl.ref_sync_mix, rl.temperature) == (1e-6, 0.04, 32, 0.9, 0.7)
    assert (aime.reward.kl_coef, aime.reward.alpha) == (3.0, 0.01)
    assert aime.launch.world_size == 8
    quickstart = load_recipe(repo_root / "recipes/quickstart.yaml")
    assert quickstart.name == "quickstart" and "before_rl_traces" in quickstart.stages.evaluate.baselines
    students = load_recipe(repo_root / "recipes/quickstart-students.yaml")
    assert students.name == "quickstart-students" and students.stages.generate.limit > quickstart.stages.generate.limit
    assert students.stages.teacher_rl == quickstart.stages.teacher_rl  # the same teacher chain


def test_unknown_key_names_key_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "stages:\n  teacher_rl:\n    stepz: 3\n")
    message = error_of(path)
    assert "stages.teacher_rl.stepz" in message
    assert f"{path}:12" in message
    assert "did you mean 'steps'" in message


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "stages:\n  teacher_rl:\n    steps: many\n")
    message = error_of(path)
    assert "stages.teacher_rl.steps" in message and f"{path}:12" in message and "'many'" in message


def test_misspelt_stage_name(tmp_path):
    path = write(tmp_path, MINIMAL + "stages:\n  teacher_lr:\n    steps: 3\n")
    message = error_of(path)
    assert "stages.teacher_lr" in message and f"{path}:11" in message and "did you mean 'teacher_rl'" in message


def test_a_license_the_hub_refuses_is_caught_with_its_line(tmp_path):
    """The Hub refuses a card naming an unknown license: caught when the recipe loads, not at the first
    publish after the run; the ids are the loopback Hub's, which enforces them on every card."""
    from hubserver.cards import LICENSES

    from factory.recipe_sections import HUB_LICENSES

    assert HUB_LICENSES == LICENSES
    message = error_of(write(tmp_path, MINIMAL + "hub:\n  license: Apache2.0\n"))
    assert f"hub.license ({tmp_path / 'recipe.yaml'}:11)" in message and "did you mean 'apache-2.0'" in message
    assert load_recipe(write(tmp_path, MINIMAL + "hub: {license: cc-by-nc-4.0}\n")).hub.license == "cc-by-nc-4.0"


def test_the_reward_scores_whole_sequences_unless_capped(repo_root):
    """As the reference: unset, no cap (the student's sequence is longer than the teacher's by its system
    prompt, so a cap from the RL lengths would cut it); a cap below the longest teacher sequence is refused."""
    aime = repo_root / "recipes" / "aime.yaml"
    assert load_recipe(aime).reward.max_length is None
    message = error_of(aime, ["reward.max_length=32767"])
    assert "reward.max_length" in message and "= 32768 tokens" in message and "whole sequences" in message
    assert load_recipe(aime, ["reward.max_length=40000"]).reward.max_length == 40000


def test_impossible_combination_names_key(tmp_path):
    path = write(
        tmp_path,
        MINIMAL + "stages:\n  teacher_rl:\n    prompts_per_step: 3\n    generations_per_prompt: 4\n"
        "    per_device_batch_size: 5\n",
    )
    message = error_of(path)
    assert "stages.teacher_rl.per_device_batch_size" in message and f"{path}:14" in message
    assert "12 rollouts" in message


def test_before_rl_baseline_needs_the_before_rl_traces(tmp_path):
    path = write(tmp_path, MINIMAL + "stages:\n  evaluate:\n    baselines: [distill_base, before_rl_traces]\n")
    message = error_of(path)
    assert "stages.evaluate.baselines" in message and f"{path}:12" in message
    assert "stages.generate.before_rl: true" in message and "stages.teacher_rl.enabled" not in message
    recipe = load_recipe(path, ["stages.generate.before_rl=true"])
    assert recipe.stages.evaluate.baselines == ["distill_base", "before_rl_traces"]
    assert "stages.teacher_rl.enabled: true" in error_of(
        path, ["stages.generate.before_rl=true", "stages.teacher_rl.enabled=false"]
    )


def test_set_overrides_with_type_checking(tmp_path):
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["stages.teacher_rl.steps=10", "reward.kl_coef=2.5", "data.eval.0.limit=5"])
    assert recipe.stages.teacher_rl.steps == 10
    assert recipe.reward.kl_coef == 2.5
    assert recipe.data.eval[0].limit == 5
    assert "no key 'stepz'" in error_of(path, ["stages.teacher_rl.stepz=1"])
    bad_type = error_of(path, ["stages.teacher_rl.steps=ten"])
    assert "stages.teacher_rl.steps (--set stages.teacher_rl.steps)" in bad_type
    assert "KEY=VALUE" in error_of(path, ["stages.teacher_rl.steps"])


def test_extends_merges_and_child_wins(tmp_path):
    write(tmp_path, MINIMAL + "stages:\n  teacher_rl:\n    steps: 7\n    beta: 0.1\n", name="base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\nstages:\n  teacher_rl:\n    steps: 9\n")
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert (recipe.stages.teacher_rl.steps, recipe.stages.teacher_rl.beta) == (9, 0.1)
    assert recipe.models.teacher.source == "./teacher"
    loop = write(tmp_path, "extends: loop.yaml\nname: x\n", name="loop.yaml")
    assert "loop" in error_of(loop)


def test_hub_id_with_revision_and_remote_code_default(tmp_path):
    path = write(tmp_path, MINIMAL.replace("./student", "org/model@abc123"))
    recipe = load_recipe(path)
    assert (recipe.models.student.source, recipe.models.student.revision) == ("org/model", "abc123")
    assert recipe.models.student.trust_remote_code is False


def test_safe_loader_refuses_python_tags(tmp_path):
    path = write(tmp_path, MINIMAL + "description: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in error_of(path)
