"""The student format a recipe resolves to: its `formats` section plus, when `formats.student_system` is
unset, the system prompt the train data carries (Bespoke-Stratos-17k's `system` column: the prompt the
reward student Bespoke-Stratos-7B was trained with, RLT.md "The reward student's format")."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from factory.formats import StudentFormat, student_format

if TYPE_CHECKING:
    from factory.recipe import Recipe


def student_format_of(recipe: Recipe, log: Callable[[str], None] = print) -> StudentFormat:
    """Reads the train rows only when their system prompt is needed (only the Stratos layout has one)."""
    rows = []
    if recipe.formats.student_system is None and recipe.data.train.format == "stratos":
        from factory.data.loaders import load_rows

        rows = load_rows(recipe.data.train, log=log)
    return student_format(recipe.formats, rows)
