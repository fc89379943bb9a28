"""What ships inside the package: the recipes, the accelerate presets and the compare Space.

A checkout keeps them at the top (`recipes/`, `spaces/`), where users read, edit and run them;
`factory/recipes` and `factory/spaces` are relative links to those folders, so a wheel carries them as
package data and every reader finds them through `bundled()`, from a checkout or an install alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from factory.errors import UserError


def bundled(*parts: str) -> Path:
    """A file or folder shipped with the package (pip installs a wheel unpacked, so this is a real path)."""
    return Path(resources.files("factory"), *parts)


def recipe_names() -> list[str]:
    """The bundled recipes, by the name `factory run NAME` takes (the file name without `.yaml`)."""
    return sorted(path.stem for path in bundled("recipes").glob("*.yaml"))


def bundled_recipe(name: str) -> Path | None:
    """The bundled recipe called `name` (a bare name: no folder, no suffix); None if there is none."""
    if Path(name).name != name or Path(name).suffix or name not in recipe_names():
        return None
    return bundled("recipes", f"{name}.yaml")


def recipe_file(spec: str | Path) -> Path:
    """A recipe argument as a file: the path given when it is a file, else the bundled recipe of that name.
    A bare name that is neither is a UserError listing the bundled names; a missing path is left to the
    loader, which says `recipe not found`."""
    path = Path(spec)
    if path.is_file():
        return path
    named = bundled_recipe(str(spec))
    if named is not None:
        return named
    if path.name == str(spec) and not path.suffix:
        raise UserError(
            f"recipe {str(spec)!r} is neither a file nor a bundled recipe; bundled: {', '.join(recipe_names())} "
            "(or give the path of a recipe YAML file)"
        )
    return path
