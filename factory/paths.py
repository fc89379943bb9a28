"""Input is never destroyed: one check for every command that writes to a path it was given."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from factory.errors import UserError


def refuse_input_as_output(output: Path, option: str, inputs: Iterable[tuple[str, Path]]) -> None:
    """UserError when `output` is one of the `(what, path)` inputs or lies inside one: compared
    resolved (symlinks followed) and by inode (hard links), so another spelling does not slip by."""
    written = output.expanduser().resolve()
    for what, path in inputs:
        source = path.expanduser().resolve()
        same = written == source or (written.exists() and source.exists() and os.path.samefile(written, source))
        if same or source in written.parents:
            where = "is" if same else "is inside"
            raise UserError(
                f"{option} {output} {where} {what} {path}: writing there would destroy an input; choose another path"
            )
