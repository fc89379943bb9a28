"""Data logic of the compare Space: load trace datasets, align them by id, page, search, render.

This module lives beside app.py so that the Space folder deploys unchanged (it must not import
`factory`); `factory compare` imports it from here. With compare_votes.py (the votes) it holds
everything that is not Gradio layout, so it is tested without a browser. Nothing here sends a whole
dataset anywhere: the app asks for one question or one overview page at a time.

A source is written `[label=]LOCATION[#config]`, where LOCATION is a local artifact folder (its
`data/*.parquet`, the `default` config of a traces artifact), a local `.parquet` / `.jsonl` /
`.json` file, or a Hub dataset `owner/name@revision` (the revision is optional, `main` otherwise).
`#config` picks another dataset config: an artifact folder's `data/<config>/*.parquet`, a Hub
dataset's config `name=config`; e.g. `org/name-traces@v1#before_rl` is the teacher before RL.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
]
SORTS = {
    "disagreement": "|reward right − left|, largest first",
    "right_better": "reward right − left, largest first",
    "left_better": "reward left − right, largest first",
    "dataset": "dataset order",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LABEL = re.compile(r"^[\w .()+-]+$")
CONFIG = re.compile(r"^[A-Za-z0-9][\w.-]*$")


class SourceError(ValueError):
    """A source that cannot be shown: not found, wrong columns, duplicate ids. Names the source."""


# ------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One loaded trace dataset: where it came from and its rows (indexed by id)."""

    label: str
    ref: str  # repo@revision or an absolute local path: what a vote record names
    kind: str  # "hub" | "artifact" | "file"
    frame: pd.DataFrame
    components: list[str]  # the reward's component columns but `reward`, in order


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
    float columns (`floats`: column -> is a float) but NOT_COMPONENTS."""
    marked = [name for name, feature in (features or {}).items() if _marked(feature)]
    if marked:
        return [name for name in marked if name != "reward"]
    return [name for name, is_float in floats.items() if is_float and name not in NOT_COMPONENTS]


def _marked(feature: Any) -> bool:
    return isinstance(feature, dict) and feature.get("id") == REWARD_COMPONENT


def _shown(names: list[str], components: list[str]) -> list[str]:
    return [c for c in (*REQUIRED, *components, *OPTIONAL) if c in names]


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


def load_source(spec: str) -> Source:
    """Read one source (local first, then the Hub) and check it has the columns the app shows."""
    label, location = split_spec(spec)
    config = None
    if not Path(location).expanduser().exists():  # a path that exists is taken whole, even with a '#' in it
        location, config = split_config(location)
    suffix = f"#{config}" if config else ""
    path = Path(location).expanduser()
    if path.exists():
        kind, frame, components = _read_local(path, config)
        ref = str(path.resolve()) + suffix
        default_label = (path.stem if path.is_file() else _folder_label(path)) + suffix
    else:
        repo, _, revision = location.partition("@")
        if not HUB_ID.match(repo):
            raise SourceError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name@revision)")
        revision = revision or "main"
        kind = "hub"
        frame, components = _read_hub(repo, revision, config)
        ref = f"{repo}@{revision}{suffix}"
        default_label = f"{repo.split('/')[-1]}@{revision}{suffix}"
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
    frame = frame.set_index("id", drop=False)
    return Source(label=label or default_label, ref=ref, kind=kind, frame=frame, components=components)


# ----------------------------------------------------------------------------------- alignment


def _unique_labels(sources: list[Source]) -> None:
    seen: dict[str, int] = {}
    for source in sources:
        count = seen.get(source.label, 0)
        seen[source.label] = count + 1
        if count:
            source.label = f"{source.label} #{count + 1}"


class Comparison:
    """Two or more sources aligned on the ids they share, in the first source's order."""

    def __init__(self, sources: list[Source]):
        if len(sources) < 2:
            raise SourceError(f"compare needs two or more sources, got {len(sources)}")
        _unique_labels(sources)
        self.sources = sources
        first = sources[0].frame["id"]
        shared = first[np.logical_and.reduce([first.isin(s.frame.index) for s in sources[1:]])]
        if shared.empty:
            raise SourceError("the sources share no question id; rows are aligned by the `id` column")
        self.ids = shared.to_numpy(dtype=object)
        self.missing = {s.label: int(len(s.frame) - len(self.ids)) for s in sources}
        self.frames = [s.frame.loc[self.ids].reset_index(drop=True) for s in sources]
        base = self.frames[0]
        self.question_text = base["question"].astype(str).to_numpy(dtype=object)
        self.solution_text = base["solution"].astype(str).to_numpy(dtype=object)
        self.mismatched = int(
            sum((f["question"].astype(str).to_numpy(dtype=object) != self.question_text).sum() for f in self.frames[1:])
        )
        self.rewards = np.stack([f["reward"].to_numpy(dtype=float) for f in self.frames])
        self.lengths = np.stack([self._lengths(f) for f in self.frames])
        self._position = {qid: i for i, qid in enumerate(self.ids)}
        self._orders: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _lengths(frame: pd.DataFrame) -> np.ndarray:
        if "explanation_tokens" in frame:
            return frame["explanation_tokens"].to_numpy(dtype=float)
        return frame["explanation"].astype(str).str.len().to_numpy(dtype=float)

    @property
    def length_unit(self) -> str:
        return "tokens" if all("explanation_tokens" in f for f in self.frames) else "characters"

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sources]

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, qid: str) -> int | None:
        return self._position.get(str(qid).strip())

    def search(self, query: str) -> np.ndarray:
        """Positions whose id, question or any explanation contains `query` (case-insensitive)."""
        query = query.strip()
        if not query:
            return np.arange(len(self))
        texts = [pd.Series(self.ids), pd.Series(self.question_text)] + [f["explanation"] for f in self.frames]
        mask = np.zeros(len(self), dtype=bool)
        for text in texts:
            mask |= text.astype(str).str.contains(query, case=False, regex=False).to_numpy(dtype=bool)
        return np.flatnonzero(mask)

    def difference(self, left: int, right: int) -> np.ndarray:
        return self.rewards[right] - self.rewards[left]

    def order(self, query: str = "", sort: str = "disagreement", left: int = 0, right: int = 1) -> np.ndarray:
        """The positions a view walks through: search matches, sorted; cached per view."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {list(SORTS)}, got {sort!r}")
        key = (query.strip(), sort, left, right)
        with self._lock:
            cached = self._orders.get(key)
        if cached is not None:
            return cached
        found = self.search(query)
        diff = self.difference(left, right)[found]
        score = {"disagreement": -np.abs(diff), "right_better": -diff, "left_better": diff}.get(sort)
        result = found if score is None else found[np.argsort(np.nan_to_num(score, nan=np.inf), kind="stable")]
        with self._lock:
            if len(self._orders) >= 32:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = result
        return result

    def panel(self, index: int, pos: int) -> dict[str, Any]:
        """What one source column shows for one question."""
        row = self.frames[index].iloc[pos]
        explanation = str(row["explanation"])

        def get(name: str) -> Any:
            value = row.get(name)
            return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value

        return {
            "label": self.sources[index].label,
            "explanation": explanation,
            "reward": float(row["reward"]),
            "components": {name: get(name) for name in self.sources[index].components if name in row.index},
            "tokens": get("explanation_tokens"),
            "chars": len(explanation),
            "closed": get("closed"),
            "finish_reason": get("finish_reason"),
            "student_correct": get("student_correct"),
            "teacher": get("teacher"),
            "flags": [name.replace("_", " ") for name in FLAGS if get(name)],
        }

    def question(self, pos: int) -> dict[str, Any]:
        return {
            "id": str(self.ids[pos]),
            "question": self.question_text[pos],
            "solution": self.solution_text[pos],
            "panels": [self.panel(i, pos) for i in range(len(self.sources))],
        }

    def overview(self, query: str, sort: str, left: int, right: int, page: int, page_size: int = 25):
        """One page of the overview table: (frame, page actually shown, pages, matching rows)."""
        order = self.order(query, sort, left, right)
        pages = max(1, -(-len(order) // page_size))
        page = min(max(1, int(page)), pages)
        chosen = order[(page - 1) * page_size : page * page_size]
        diff = self.difference(left, right)[chosen]
        columns: dict[str, Any] = {
            "#": (page - 1) * page_size + np.arange(1, len(chosen) + 1),
            "id": self.ids[chosen].astype(str),
            "question": [_one_line(q, 90) for q in self.question_text[chosen]],
        }
        for index, label in enumerate(self.labels):
            columns[f"reward · {label}"] = np.round(self.rewards[index, chosen], 4)
        columns["Δ right − left"] = np.round(diff, 4)
        for index, label in enumerate(self.labels):
            columns[f"{self.length_unit} · {label}"] = self.lengths[index, chosen].astype(int)
        return pd.DataFrame(columns), page, pages, len(order)

    def summary(self) -> pd.DataFrame:
        """Per source: reward and length statistics over the aligned questions."""
        rows = []
        for index, source in enumerate(self.sources):
            rewards, lengths = self.rewards[index], self.lengths[index]
            correct = self.frames[index].get("student_correct")
            rows.append(
                {
                    "source": source.label,
                    "ref": source.ref,
                    "questions": len(self),
                    "reward mean": round(float(np.nanmean(rewards)), 4),
                    "reward median": round(float(np.nanmedian(rewards)), 4),
                    "reward std": round(float(np.nanstd(rewards)), 4),
                    f"mean {self.length_unit}": round(float(np.nanmean(lengths)), 1),
                    "student correct": round(float(correct.astype(float).mean()), 4) if correct is not None else None,
                    "best reward share": round(float(np.mean(np.argmax(self.rewards, axis=0) == index)), 4),
                }
            )
        return pd.DataFrame(rows)

    def figure(self, what: str):
        """Histogram per source of `reward` or `length`, overlaid on shared bins."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        values = self.rewards if what == "reward" else self.lengths
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=min(40, max(5, len(self) // 5))) if finite.size else 10
        fig = Figure(figsize=(7, 3.2), tight_layout=True)
        ax = fig.add_subplot()
        for index, label in enumerate(self.labels):
            row = values[index][np.isfinite(values[index])]
            ax.hist(row, bins=bins, alpha=0.5, label=f"{label} (mean {np.mean(row):.3g})")
        ax.set_xlabel("RLT reward" if what == "reward" else f"explanation length ({self.length_unit})")
        ax.set_ylabel("questions")
        ax.legend(fontsize=8)
        return fig


def load_comparison(specs: list[str]) -> Comparison:
    return Comparison([load_source(spec) for spec in specs])


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ rendering


def _number(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def math_markdown(text: str) -> str:
    """Text with bare `\\boxed{...}` put in `$...$`, so KaTeX renders it; text with math delimiters is left as is."""
    if any(mark in text for mark in ("$", "\\(", "\\[")):
        return text
    out, start = [], 0
    while (begin := text.find("\\boxed{", start)) >= 0:
        depth, end = 0, begin + len("\\boxed")
        for end in range(begin + len("\\boxed"), len(text)):  # noqa: B007 - `end` is read after the loop
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        out += [text[start:begin], "$", text[begin : end + 1], "$"]
        start = end + 1
    return "".join(out) + text[start:]


def question_markdown(view: dict[str, Any]) -> str:
    question, solution = math_markdown(view["question"]), math_markdown(view["solution"])
    return f"### Question `{view['id']}`\n\n{question}\n\n#### Reference solution\n\n{solution}"


def metrics_markdown(panel: dict[str, Any], role: str = "") -> str:
    """The header of one source column: reward, its components, length, closure, student result."""
    names = ("reward", *panel["components"])
    values = [panel["reward"], *panel["components"].values()]
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    row = "| " + " | ".join(f"**{_number(v)}**" if i == 0 else _number(v) for i, v in enumerate(values)) + " |"
    correct = {True: "✓ student right", False: "✗ student wrong"}.get(
        None if panel["student_correct"] is None else bool(panel["student_correct"]), "student result not recorded"
    )
    facts = [f"{panel['tokens']} tokens" if panel["tokens"] is not None else None, f"{panel['chars']} characters"]
    if panel["closed"] is not None:
        facts.append("closed" if panel["closed"] else "**not closed**")
    if panel["finish_reason"]:
        facts.append(f"finish: {panel['finish_reason']}")
    facts += [f"**{flag}**" for flag in panel["flags"]]
    facts.append(correct)
    title = f"### {panel['label']}" + (f" · {role}" if role else "")
    return f"{title}\n\n{head}{row}\n\n" + " · ".join(f for f in facts if f)
