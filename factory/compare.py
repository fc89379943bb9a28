"""The compare Space from the package side: run it locally, or write / deploy it with its sources.

The Space's code lives in spaces/compare/ (app.py and its compare_*.py modules), shipped as package
data (factory.bundled), so that folder deploys to the Hub unchanged; this module imports it from there.
`write_space` and `deploy_space` are what publishing calls: they add a `sources.json`, list the Hub
datasets in the Space card's `datasets:` and the teachers that wrote them (read from each version's
`factory.json`) in its `models:`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import yaml

from factory.bundled import bundled
from factory.errors import UserError

SPACE_DIR = bundled("spaces", "compare")
MODULES = ("compare_sources", "compare_data", "compare_render", "compare_votes")  # app.py's siblings
SPACE_FILES = ("app.py", *(f"{name}.py" for name in MODULES), "requirements.txt", "README.md")


def space_module(name: str) -> ModuleType:
    """Import `app` or one of MODULES from the Space folder (package data, not package modules).

    The Space's modules import each other by name, as a Space runs them; the siblings are imported first
    (in MODULES' order, each only importing earlier ones), so those imports find them in sys.modules."""
    path = SPACE_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"the compare Space is missing at {path}: this install of factory lacks its package data")
    for sibling in MODULES[: MODULES.index(name)] if name in MODULES else MODULES:
        space_module(sibling)
    module_name = f"factory_space_{name}" if name == "app" else name
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def load(sources: list[str]):
    """Load and align the sources; a source problem becomes a UserError naming it."""
    data = space_module("compare_data")
    try:
        return data.load_comparison(list(sources))
    except data.SourceError as exc:
        raise UserError(str(exc)) from None


def build(sources: list[str], votes: str | Path, votes_repo: str | None = None):
    """The Gradio Blocks of the Space for these sources (not launched)."""
    comparison = load(sources)
    app = space_module("app")
    return app.build_app(comparison, space_module("compare_votes").VoteStore(votes), votes_repo)


def launch(sources: list[str], port: int | None, host: str, votes: str | Path, votes_repo: str | None) -> None:
    """`factory compare`: serve the Space locally until interrupted."""
    demo = build(sources, votes, votes_repo)
    demo.launch(server_name=host, server_port=port, ssr_mode=False, css=space_module("app").CSS)


def write_space(
    dest: str | Path,
    sources: list[str],
    title: str | None = None,
    votes_repo: str | None = None,
    models: list[str] = (),
) -> Path:
    """Copy the Space into `dest` with its sources fixed in sources.json, its Hub datasets and `models` in the card."""
    data = space_module("compare_sources")
    if len(sources) < 2:
        raise UserError(f"the compare Space needs two or more trace datasets, got {len(sources)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        if name != "README.md":
            shutil.copyfile(SPACE_DIR / name, dest / name)
    repos = list(dict.fromkeys(where[0] for where in map(data.hub_location, sources) if where))
    settings = {"sources": list(sources), "title": title, "votes_repo": votes_repo}
    (dest / "sources.json").write_text(json.dumps(settings, indent=2) + "\n")
    (dest / "README.md").write_text(_card(repos, list(models), sources, title))
    return dest


def _card(repos: list[str], models: list[str], sources: list[str], title: str | None) -> str:
    """The Space card of the template with `datasets:` and `models:` set and the sources listed in the text."""
    text = (SPACE_DIR / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    meta["datasets"] = repos
    meta["models"] = models
    if title:
        meta["title"] = title[:60]
    listed = "\n".join(f"- `{spec}`" for spec in sources)
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n{body.rstrip()}\n\n## Sources shown\n\n{listed}\n"


def teachers(sources: list[str]) -> list[str]:
    """The Hub models that wrote the Hub sources, from each version's factory.json (none where it has none)."""
    data = space_module("compare_sources")
    found: list[str] = []
    for spec in sources:
        where = data.hub_location(spec)
        if where is not None:
            repo, revision, config = where
            found += data.provenance(data.hub_metadata(repo, revision), config).models
    return list(dict.fromkeys(found))


def deploy_space(
    repo_id: str,
    sources: list[str],
    title: str | None = None,
    votes_repo: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Create (or update) a Gradio Space repo with this comparison; returns the commit id."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        write_space(folder, sources, title, votes_repo, teachers(sources))
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=folder,
            commit_message=f"compare Space: {', '.join(sources)}",
        )
    return info.oid
