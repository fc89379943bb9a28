"""Alignment of the compare Space: two or more trace datasets joined by id, searched, sorted, paged.

This module lives beside app.py so that the Space folder deploys unchanged (it must not import
`factory`); `factory compare` imports it from here. compare_sources.py reads and names each source,
compare_render.py turns one question into Markdown, compare_votes.py keeps the votes; together they
hold everything that is not Gradio layout, so they are tested without a browser. Nothing here sends a
whole dataset anywhere: the app asks for one question or one overview page at a time, and a question
is a lookup in columns indexed once (no per-row pandas work), so a page costs the same on 17k questions
as on 17.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
from compare_sources import FLAGS, Source, SourceError, load_source, unique_labels

SORTS = {
    "disagreement": "|reward right − left|, largest first",
    "right_better": "reward right − left, largest first",
    "left_better": "reward left − right, largest first",
    "dataset": "dataset order",
}


class Comparison:
    """Two or more sources aligned on the ids they share, in the first source's order."""

    def __init__(self, sources: list[Source]):
        if len(sources) < 2:
            raise SourceError(f"compare needs two or more sources, got {len(sources)}")
        unique_labels(sources)
        self.sources = sources
        first = sources[0].frame["id"]
        shared = first[np.logical_and.reduce([first.isin(s.frame.index) for s in sources[1:]])]
        if shared.empty:
            raise SourceError("the sources share no question id; rows are aligned by the `id` column")
        self.ids = shared.to_numpy(dtype=object)
        self.missing = {s.label: int(len(s.frame) - len(self.ids)) for s in sources}
        self.frames = [s.frame.loc[self.ids].reset_index(drop=True) for s in sources]
        # each column's array, indexed once: a question is one lookup per cell, not a pandas row
        self.columns = [{name: frame[name].array for name in frame.columns} for frame in self.frames]
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
    def pair(self) -> tuple[int, int]:
        """The left and right sources a page opens with: before RL left and after RL right where the
        sources hold both (so the reward difference is what RL changed), else the first two."""
        phases = [source.provenance.phase for source in self.sources]
        if "before RL" in phases and "after RL" in phases:
            return phases.index("before RL"), phases.index("after RL")
        return 0, 1

    @property
    def components(self) -> list[str]:
        """Every source's reward components (but `reward`), each once, in the order the sources list them."""
        return list(dict.fromkeys(name for source in self.sources for name in source.components))

    @property
    def notes(self) -> dict[str, str]:
        """What each component measures, as the sources' metadata says (the first source that says wins)."""
        return {name: note for source in reversed(self.sources) for name, note in source.notes.items()}

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
        columns = self.columns[index]
        explanation = str(columns["explanation"][pos])

        def get(name: str) -> Any:
            value = columns[name][pos] if name in columns else None
            return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value

        return {
            "label": self.sources[index].label,
            "explanation": explanation,
            "reward": float(columns["reward"][pos]),
            "components": {name: get(name) for name in self.sources[index].components if name in columns},
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
        columns[f"Δ {self.labels[right]} − {self.labels[left]}"] = np.round(diff, 4)
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
