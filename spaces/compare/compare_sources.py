"""Sources of the compare Space: read one trace dataset and say what it is.

A source is written `[label=]LOCATION[#config]`, where LOCATION is a local artifact folder (its
`data/*.parquet`, the `default` config of a traces artifact), a local `.parquet` / `.jsonl` /
`.json` file, or a Hub dataset `owner/name@revision` (the revision is optional, `main` otherwise).
`#config` picks another dataset config: an artifact folder's `data/<config>/*.parquet`, a Hub
dataset's config `name=config`; e.g. `org/name-traces@v1#before_rl` is the teacher before RL.

A source without a label is named by what it is, read from factory's metadata beside the data
(`artifact.json` of an artifact folder, `factory.json` of a published version, on the Hub or in the
local store) and from the config name: "after RL" / "before RL", and the teacher that wrote it
(`org/x-teacher@v2`), never an artifact folder's hash. Like the rest of the Space, no `factory` import.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REQUIRED = ("id", "question", "solution", "explanation", "reward")
# The reward's components are read from the data, whichever reward wrote it: the traces schema marks each
# component column with this feature id (factory's generate stage). Data without the marks (written before
# them, or a JSONL export) shows its float columns but these.
REWARD_COMPONENT = "reward_component"
NOT_COMPONENTS = ("reward", "temperature", "top_p")
# Optional columns of the traces schema shown when present: generate's QA flags (answer_leaked,
# reward_truncated), and `student_correct` (bool): whether the reward student answered correctly after
# reading the explanation, where a stage recorded it.
FLAGS = ("answer_leaked", "reward_truncated")
OPTIONAL = ("closed", "explanation_tokens", "finish_reason", "teacher", "student_correct", *FLAGS)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LABEL = re.compile(r"^[\w .()+@-]+$")
CONFIG = re.compile(r"^[A-Za-z0-9][\w.-]*$")
BEFORE_RL = "before_rl"  # the traces config of the teacher before RL (factory's generate stage)
METADATA_FILES = ("artifact.json", "factory.json")  # an artifact folder's; a published version's


class SourceError(ValueError):
    """A source that cannot be shown: not found, wrong columns, duplicate ids. Names the source."""


@dataclass
class Provenance:
    """What factory's metadata says about a traces config: the training phase and the teacher that wrote it."""

    phase: str | None = None  # "after RL" | "before RL"
    teacher: str | None = None  # the teacher's repo@revision, or its base source
    models: list[str] = field(default_factory=list)  # Hub model ids among them, for a Space card's `models:`


@dataclass
class Source:
    """One loaded trace dataset: where it came from, what it is, and its rows (indexed by id)."""

    label: str
    ref: str  # repo@revision or an absolute local path: what a vote record names
    kind: str  # "hub" | "artifact" | "file"
    frame: pd.DataFrame
    components: list[str]  # the reward's component columns but `reward`, in order
    provenance: Provenance = field(default_factory=Provenance)
    fallback: str = ""  # the name by location (repo-name@revision, file stem): tells apart equal labels
    given: bool = False  # the label is the user's (`label=location`), kept as written
    shown_as: str = ""  # where it is, for the page: a local path as given (a store's `vN` link, not its snapshot)
    notes: dict[str, str] = field(default_factory=dict)  # component -> what it measures (factory's `columns`)

    @property
    def detail(self) -> str:
        """One line for the page header: location, config, teacher."""
        teacher = f", written by the teacher `{self.provenance.teacher}`" if self.provenance.teacher else ""
        return f"`{self.shown_as or self.ref}`{teacher}"


def split_spec(spec: str) -> tuple[str | None, str]:
    """`label=location` -> (label, location); a bare location has no label."""
    head, sep, tail = spec.partition("=")
    if sep and LABEL.match(head) and tail and "/" not in head:
        return head.strip(), tail.strip()
    return None, spec.strip()


def split_config(location: str) -> tuple[str, str | None]:
    """`location#config` -> (location, config); a location without a config suffix -> (location, None)."""
    head, sep, tail = location.rpartition("#")
    if sep and head and CONFIG.match(tail):
        return head, tail
    return location, None


def reward_components(features: dict[str, Any] | None, floats: dict[str, bool]) -> list[str]:
    """The component columns but `reward`: those `features` (a datasets Features dict) mark, else the
    float columns (`floats`: column -> is a float) but NOT_COMPONENTS and the OPTIONAL columns."""
    marked = [name for name, feature in (features or {}).items() if _marked(feature)]
    if marked:
        return [name for name in marked if name != "reward"]
    shown = (*NOT_COMPONENTS, *OPTIONAL)  # e.g. explanation_tokens turns float where a value is missing
    return [name for name, is_float in floats.items() if is_float and name not in shown]


def _marked(feature: Any) -> bool:
    return isinstance(feature, dict) and feature.get("id") == REWARD_COMPONENT


def _shown(names: list[str], components: list[str]) -> list[str]:
    return [c for c in (*REQUIRED, *components, *OPTIONAL) if c in names]


# ------------------------------------------------------------------------------------ provenance


def provenance(meta: dict[str, Any] | None, config: str | None) -> Provenance:
    """Phase and teacher of one config of a traces artifact, from its `artifact.json` / `factory.json`.

    The `default` config holds the teacher's traces (input role `teacher`), after RL when the artifact
    also holds `before_rl` (its metrics say so); `before_rl` holds the initial teacher's."""
    phase = "before RL" if config == BEFORE_RL else None
    if not meta:
        return Provenance(phase)
    if config is None and BEFORE_RL in (meta.get("metrics") or {}):
        phase = "after RL"
    role = "initial_teacher" if config == BEFORE_RL else "teacher"
    ref = next((r for r in meta.get("inputs", []) if r.get("role") == role), None)
    if ref is None:
        return Provenance(phase)
    published = next((e for e in meta.get("lineage", []) if e.get("fingerprint") == ref.get("fingerprint")), {})
    repo = ref.get("hub_repo") or published.get("repo")
    if repo:
        revision = ref.get("hub_revision") or published.get("revision")
        return Provenance(phase, f"{repo}@{revision}" if revision else repo, [repo])
    source = ref.get("source")
    if source and HUB_ID.match(source):  # a base model from the Hub
        revision = ref.get("revision")
        return Provenance(phase, f"{source}@{revision[:12]}" if revision else source, [source])
    return Provenance(phase, source or (Path(ref["path"]).name if ref.get("path") else None))


def _local_metadata(folder: Path) -> dict[str, Any] | None:
    for name in METADATA_FILES:
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    return None


def hub_metadata(repo: str, revision: str) -> dict[str, Any] | None:
    """The version's factory.json; None for a dataset factory did not publish (or when the Hub cannot say)."""
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(
            Path(hf_hub_download(repo, METADATA_FILES[1], repo_type="dataset", revision=revision)).read_text()
        )
    except Exception:  # not a factory dataset, offline, or no such file: the source is named by its location
        return None


# -------------------------------------------------------------------------------------- reading


def _read_parquet(files: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Only the shown columns: prompt/completion repeat the text and would double the memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, components = [], []
    for path in files:
        schema = pq.read_schema(path)
        metadata = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        features = metadata.get("info", {}).get("features")
        components = reward_components(features, {f.name: pa.types.is_floating(f.type) for f in schema})
        tables.append(pq.read_table(path, columns=_shown(schema.names, components)))
    return pa.concat_tables(tables, promote_options="default").to_pandas(), components


def _read_local(path: Path, config: str | None = None) -> tuple[str, pd.DataFrame, list[str]]:
    if path.is_dir():
        data = path / "data"
        if config is not None:
            files = sorted((data / config).glob("*.parquet"))
            if not files:
                found = ["default", *sorted(p.name for p in data.glob("*/") if any(p.glob("*.parquet")))]
                raise SourceError(
                    f"{path}: no config {config!r} (no parquet under {data / config}); configs: {', '.join(found)}"
                )
            return "artifact", *_read_parquet(files)
        files = sorted(data.glob("*.parquet")) if data.is_dir() else sorted(path.glob("*.parquet"))
        if not files:
            raise SourceError(f"{path}: no parquet files under {data} (is it a traces artifact folder?)")
        return "artifact", *_read_parquet(files)
    if config is not None:
        raise SourceError(f"{path}#{config}: a #config applies to an artifact folder or a Hub dataset, not a file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "file", *_read_parquet([path])
    if suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        return "file", frame, reward_components(None, {c: pd.api.types.is_float_dtype(frame[c]) for c in frame.columns})
    raise SourceError(f"{path}: a local source is an artifact folder, a .parquet, a .jsonl or a .json file")


def _read_hub(repo: str, revision: str, config: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    import datasets

    try:
        loaded = datasets.load_dataset(repo, name=config, revision=revision)
    except Exception as exc:  # the client's errors vary by cause (missing repo, revision, config, offline)
        where = f"{repo}@{revision}" + (f"#{config}" if config else "")
        raise SourceError(f"{where}: could not load the dataset from the Hub: {exc}") from exc
    split = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
    features = split.features.to_dict()
    floats = {name: str(feature.get("dtype", "")).startswith("float") for name, feature in features.items()}
    components = reward_components(features, floats)
    return split.select_columns(_shown(split.column_names, components)).to_pandas(), components


def _folder_label(path: Path) -> str:
    """An artifact folder's name; `repo@vN` for a version folder of factory's local store (`<repo>/vN`)."""
    folder = Path(os.path.abspath(path))  # not resolved: a local-store tag is a link to a snapshot id
    return f"{folder.parent.name}@{folder.name}" if re.fullmatch(r"v\d+", folder.name) else folder.name


def hub_location(spec: str) -> tuple[str, str, str | None] | None:
    """(repo, revision, config) of a Hub source spec; None for a local one."""
    location = split_spec(spec)[1]
    if Path(location).expanduser().exists():
        return None
    location, config = split_config(location)
    repo, _, revision = location.partition("@")
    return (repo, revision or "main", config) if HUB_ID.match(repo) else None


def load_source(spec: str) -> Source:
    """Read one source (local first, then the Hub), check it has the columns the app shows, and name it."""
    label, location = split_spec(spec)
    config = None
    if not Path(location).expanduser().exists():  # a path that exists is taken whole, even with a '#' in it
        location, config = split_config(location)
    suffix = f"#{config}" if config else ""
    path = Path(location).expanduser()
    if path.exists():
        kind, frame, components = _read_local(path, config)
        ref = str(path.resolve()) + suffix
        shown_as = os.path.abspath(path) + suffix
        fallback = (path.stem if path.is_file() else _folder_label(path)) + suffix
        meta = _local_metadata(path) if path.is_dir() else None
    else:
        repo, _, revision = location.partition("@")
        if not HUB_ID.match(repo):
            raise SourceError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name@revision)")
        revision = revision or "main"
        kind = "hub"
        frame, components = _read_hub(repo, revision, config)
        ref = shown_as = f"{repo}@{revision}{suffix}"
        fallback = f"{repo.split('/')[-1]}@{revision}{suffix}"
        meta = hub_metadata(repo, revision)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise SourceError(f"{spec}: missing column(s) {missing}; a traces dataset has {list(REQUIRED)}")
    frame = frame.assign(id=frame["id"].astype(str))
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        raise SourceError(
            f"{spec}: id {repeated.iloc[0]!r} appears more than once ({repeated.nunique()} repeated ids); "
            "give the `default` config (one explanation per question), not `candidates`"
        )
    found = provenance(meta, config)
    named = label or found.phase or (found.teacher and found.teacher.split("/")[-1]) or fallback
    frame = frame.set_index("id", drop=False)
    notes = (meta or {}).get("columns") or {}
    return Source(named, ref, kind, frame, components, found, fallback, bool(label), shown_as, notes)


def unique_labels(sources: list[Source]) -> None:
    """Tell apart sources that would show the same label: a derived label gains the source's location
    name (`after RL · x-traces@v1`), then a count (`#2`); a label the user gave keeps its words."""
    labels = [s.label for s in sources]
    for source in sources:
        if not source.given and labels.count(source.label) > 1 and source.fallback != source.label:
            source.label = f"{source.label} · {source.fallback}"
    seen: dict[str, int] = {}
    for source in sources:
        count = seen.get(source.label, 0)
        seen[source.label] = count + 1
        if count:
            source.label = f"{source.label} #{count + 1}"
