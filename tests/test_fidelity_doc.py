"""docs/fidelity.md cannot fall behind recipes/aime.yaml: every key the recipe sets in the method's sections is
in the table, every `section.key: value` the table quotes is the recipe's value, every reference row is there."""

from __future__ import annotations

import re

import pytest
import yaml

from factory.recipe import load_recipe, recipe_to_dict

# The sections whose every key is one of the method's settings (evaluation rows follow data.eval's sets).
SECTIONS = (("reward",), ("stages", "teacher_rl"), ("stages", "teacher_sft"), ("stages", "distill"))
# RLT.md, "What the reference code does, exactly", and the reward and GRPO details: one row each.
ROWS = (
    "Reward student format",
    "Teacher layout",
    "Empty spans",
    "Reward length",
    "Lengths",
    "GRPO correction",
    "Teacher warm-up SFT",
    "Teacher RL",
    "Student distillation",
    "Evaluation",
    "Coefficients",
    "Temperatures",
    "KL estimator",
    "Unclosed explanation",
    "Advantage",
    "Loss aggregation",
    "Reference sync",
    "Spans",
    "Precision of the log-softmax",
    "Batching",
)
QUOTED = re.compile(r"`((?:reward|formats|stages|launch)\.[A-Za-z0-9_.]+): ([^`]+)`")


@pytest.fixture(scope="module")
def doc(repo_root) -> str:
    return (repo_root / "docs" / "fidelity.md").read_text()


@pytest.fixture(scope="module")
def recipe_file(repo_root) -> dict:
    return yaml.safe_load((repo_root / "recipes" / "aime.yaml").read_text())


def test_every_key_the_recipe_sets_is_in_the_table(doc, recipe_file):
    missing = []
    for path in SECTIONS:
        section = recipe_file
        for part in path:
            section = section[part]
        missing += [".".join((*path, key)) for key in section if f"`{'.'.join((*path, key))}" not in doc]
    assert missing == [], f"docs/fidelity.md does not mention: {missing}"


def test_every_quoted_value_is_the_recipes(doc, repo_root):
    resolved = recipe_to_dict(load_recipe(repo_root / "recipes" / "aime.yaml"))
    quoted = QUOTED.findall(doc)
    assert len(quoted) >= 60  # the table quotes the recipe throughout
    wrong = {}
    for key, text in quoted:
        value = resolved
        for part in key.split("."):
            assert isinstance(value, dict) and part in value, f"docs/fidelity.md quotes {key}, which the recipe lacks"
            value = value[part]
        if yaml.safe_load(text) != value:
            wrong[key] = (text, value)
    assert wrong == {}, wrong  # key: (the doc's text, the recipe's value)


def test_every_reference_row_is_there(doc):
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    sections = [line.removeprefix("## ") for line in doc.splitlines() if line.startswith("## ")]
    assert [row for row in ROWS if row not in rows and not any(s.startswith(row) for s in sections)] == []
    assert "86a3f5c" in doc and "4bb8f3e" in doc


def test_readme_and_every_card_point_to_the_table(repo_root):
    from factory.hub.cards import FIDELITY_LINE, _footer

    readme = (repo_root / "README.md").read_text()
    recipes = readme.split("## Recipes", 1)[1].split("\n## ", 1)[0]
    assert "](docs/fidelity.md)" in recipes
    assert "docs/fidelity.md" in FIDELITY_LINE
    record = {"versions": {"trl": "1.16.0"}, "stage": "distill", "fingerprint": "0" * 64}
    assert FIDELITY_LINE in _footer(record, load_recipe(repo_root / "recipes" / "aime.yaml"))  # model and dataset cards
