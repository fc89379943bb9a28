"""A recipe as one stage sees it: the sections it declares, and nothing else.

A stage's fingerprint hashes the recipe sections it declares (`Stage.sections`). A stage that read any
other key would produce artifacts that a change of that key does not invalidate: a silently stale
cache, the costliest kind of bug on a GPU week. So a running stage (and its worker) reads the recipe
through a `RecipeView`: reading a declared section, or anything below it, returns the real typed
object; reading an undeclared one raises `UndeclaredRead`, naming the stage and the key to declare.
Methods and properties of the recipe pass through (`model_dump` is how a job carries it to a worker).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# What every stage reads besides its sections: the recipe's name (run and repo names) and `launch`
# (machines, processes, presets, vLLM placement), which decide where the work runs, not what it computes.
EVERY_STAGE = ("name", "launch")


class UndeclaredRead(RuntimeError):
    """A stage read a recipe key outside its declared sections (a programming error, not a user's)."""


class RecipeView:
    """`model` (a Recipe or a section of it, at dotted `path`) restricted to the dotted `allowed` paths."""

    __slots__ = ("_model", "_allowed", "_owner", "_path")

    def __init__(self, model: BaseModel, allowed: tuple[str, ...], owner: str, path: str = ""):
        self._model = model
        self._allowed = tuple(allowed) + (EVERY_STAGE if not path else ())
        self._owner = owner
        self._path = path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and friends probe these: not recipe keys
        value = getattr(self._model, name)
        if name not in type(self._model).model_fields:
            return value  # a method or property of the recipe
        key = f"{self._path}.{name}" if self._path else name
        if any(key == path or key.startswith(path + ".") for path in self._allowed):
            return value
        if any(path.startswith(key + ".") for path in self._allowed):
            return RecipeView(value, self._allowed, self._owner, key)
        raise UndeclaredRead(
            f"stage {self._owner} reads the recipe key {key!r}, which its `sections` do not declare, so a change "
            f"of it would not re-run the stage: add it to {self._owner}'s `sections` (it then enters the "
            f"fingerprint), or read it from an input"
        )

    def __repr__(self) -> str:
        return f"RecipeView({self._owner}: {', '.join(self._allowed)})"


def whole(recipe: Any) -> Any:
    """The recipe behind a view, for a job that carries it to a worker process; a Recipe comes back as it is."""
    return object.__getattribute__(recipe, "_model") if isinstance(recipe, RecipeView) else recipe
