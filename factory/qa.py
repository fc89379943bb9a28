"""Quality checks of generated traces: decontamination, answer leakage, length and reward figures, plots.

Pure functions on text and numbers (no model), used by the generate stage and reusable on any
explanation dataset.

- Decontamination: a training question is contaminated when it shares a word n-gram with an eval
  question (lower-cased words and single punctuation marks; a text shorter than n words is one
  gram, so a short question matches only an identical short question).
- Answer leakage: the explanation itself states the final answer as a boxed result (its last
  `\\boxed{}` equals the solution's answer after normalisation), i.e. it copies the solution's
  conclusion instead of leading to it. `answer_mentioned` is the weaker figure: the bare answer
  appears anywhere in the explanation (expected in a good explanation; reported, never dropped).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from factory.data.answers import extract_boxed, normalize_answer

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    """An n-gram index of eval questions; `match(question)` names the eval sets it overlaps."""

    def __init__(self, eval_questions: dict[str, Iterable[str]], n: int):
        self.n = n
        self.index: dict[tuple[str, ...], set[str]] = {}
        for name, questions in eval_questions.items():
            for question in questions:
                for gram in ngrams(question, n):
                    self.index.setdefault(gram, set()).add(name)

    def match(self, question: str) -> list[str]:
        found: set[str] = set()
        for gram in ngrams(question, self.n):
            found |= self.index.get(gram, set())
        return sorted(found)


def final_answer(solution: str, answer: str | None = None) -> str | None:
    """The reference answer: the row's `answer` when it has one, else the solution's last box."""
    return answer.strip() if answer and answer.strip() else extract_boxed(solution)


def answer_leaked(explanation: str, answer: str | None) -> bool:
    boxed = extract_boxed(explanation)
    return answer is not None and boxed is not None and normalize_answer(boxed) == normalize_answer(answer)


def answer_mentioned(explanation: str, answer: str | None) -> bool:
    if not answer:
        return False
    return re.search(rf"(?<![\w.]){re.escape(answer)}(?!\w)", explanation) is not None


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, mean, std, min, p10, p50, p90, max (nearest-rank percentiles); zeros when empty."""
    if not values:
        return {"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "p10": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    ordered = sorted(float(v) for v in values)
    mean = sum(ordered) / len(ordered)
    variance = sum((v - mean) ** 2 for v in ordered) / len(ordered)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "mean": mean,
        "std": math.sqrt(variance),
        "min": ordered[0],
        "p10": rank(0.1),
        "p50": rank(0.5),
        "p90": rank(0.9),
        "max": ordered[-1],
    }


def paired_bootstrap(
    before: Mapping[str, float],
    after: Mapping[str, float],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float] | None:
    """The mean of after - before over the keys both have (the same questions), with a percentile
    bootstrap interval at `level` (pairs resampled with replacement, numpy's generator seeded with
    `seed`; keys sorted, so the order of the mappings does not matter). None when no key is shared.

    Returned (JSON-ready): questions, before and after (their means over those questions), mean
    (of the differences), low, high, level, resamples, seed.
    """
    import numpy as np

    keys = sorted(before.keys() & after.keys())
    if not keys:
        return None
    differences = np.array([after[key] - before[key] for key in keys], dtype=np.float64)
    count = len(keys)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 1_000_000 // count)  # resampled indices held at once: about 8 MB
    means = np.concatenate(
        [
            differences[rng.integers(0, count, size=(min(per_chunk, resamples - start), count))].mean(axis=1)
            for start in range(0, resamples, per_chunk)
        ]
    )
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "questions": count,
        "before": float(np.mean([before[key] for key in keys])),
        "after": float(np.mean([after[key] for key in keys])),
        "mean": float(differences.mean()),
        "low": float(low),
        "high": float(high),
        "level": level,
        "resamples": resamples,
        "seed": seed,
    }


def histogram(
    png: Path, csv: Path, series: dict[str, Sequence[float]], xlabel: str, title: str, bins: int = 30
) -> None:
    """Overlaid histograms of `series` on shared bins: a PNG plot and its counts as CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = [float(v) for vs in series.values() for v in vs]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    counts = {name: np.histogram(np.asarray(vs, dtype=float), bins=edges)[0] for name, vs in series.items()}
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, vs in series.items():
        axes.hist(np.asarray(vs, dtype=float), bins=edges, alpha=0.6, label=f"{name} (n={len(vs)})")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png)
    plt.close(figure)
    lines = ["bin_low,bin_high," + ",".join(series)]
    for i in range(bins):
        lines.append(f"{edges[i]:.6g},{edges[i + 1]:.6g}," + ",".join(str(int(counts[name][i])) for name in series))
    csv.write_text("\n".join(lines) + "\n")
