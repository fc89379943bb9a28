"""The `factory` command as users run it: exit codes, messages without tracebacks, no torch import."""

from __future__ import annotations

import os

import pytest
from commands import factory, python


def test_help_version_validate_and_plan_exit_zero(repo_root):
    assert factory("--help", cwd=repo_root).returncode == 0
    assert "factory 0." in factory("--version", cwd=repo_root).stdout
    for recipe in ("recipes/aime.yaml", "recipes/quickstart.yaml"):
        result = factory("validate", recipe, cwd=repo_root)
        assert result.returncode == 0, result.stderr
    result = factory("plan", "recipes/aime.yaml", "--run-dir", "/nonexistent-dir-for-plan", cwd=repo_root)
    assert result.returncode == 0, result.stderr
    for stage in ("teacher_sft", "teacher_rl", "generate", "distill", "evaluate"):
        assert stage in result.stdout
    for repo in ("my-org/aime-teacher", "my-org/aime-traces", "my-org/aime-student"):
        assert repo in result.stdout
    assert "generations_per_prompt=64" in result.stdout and "beta=0.04" in result.stdout


@pytest.mark.parametrize(
    "extra, key, line",
    [
        ("stages:\n  teacher_rl:\n    stepz: 3\n", "stages.teacher_rl.stepz", 7),
        ("stages:\n  teacher_rl:\n    steps: lots\n", "stages.teacher_rl.steps", 7),
        ("stages:\n  teacher_lr: {steps: 3}\n", "stages.teacher_lr", 6),
    ],
)
def test_bad_recipes_exit_2_with_key_and_line(tmp_path, repo_root, extra, key, line):
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: {repo_root}/recipes/quickstart.yaml\nname: bad\nhub:\n  push: false\n" + extra)
    result = factory("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert key in result.stderr and f"bad.yaml:{line}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_set_key_exits_2(repo_root):
    result = factory("plan", "recipes/quickstart.yaml", "--set", "stages.nope.steps=1", cwd=repo_root)
    assert result.returncode == 2 and "has no key 'nope'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_openmp_threads_sleep_when_idle_unless_the_environment_says(repo_root, preset):
    """`factory` sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP; a value the user set stays."""
    code = (
        "import os, sys\n"
        "from factory import cli\n"
        "cli.app = lambda: print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)\n"
        "cli.main()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env.update({"OMP_WAIT_POLICY": preset} if preset else {})
    result = python("-c", code, cwd=repo_root, env=env)
    assert result.stdout.split() == [preset or "PASSIVE", "False"], result.stderr


def test_validate_and_plan_do_not_import_torch(repo_root, tmp_path):
    code = (
        "import sys\n"
        "from factory.cli import app\n"
        "for args in (['validate', 'recipes/aime.yaml'], ['plan', 'recipes/aime.yaml', '--run-dir', sys.argv[1]]):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'gradio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = python("-c", code, str(tmp_path), cwd=repo_root)
    assert result.returncode == 0, result.stderr
