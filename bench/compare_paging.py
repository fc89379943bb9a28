"""Does the compare Space answer fast on a Stratos-size traces dataset? Time per question page, last.

Builds two synthetic trace datasets of 17,000 questions (Bespoke-Stratos-17k has 16,710) with explanations of
Stratos length (log-normal, median 10,000 characters, with inline and display math and the format's tags; the
second teacher's explanation rewrites about a third of the first's, so the word-level diff has work to do),
writes them as parquet, loads them like `factory compare`, then times what one browser interaction costs on
the server: search, sort, an overview page (through Gradio's Dataframe postprocessing, as served), and a
question page: the app's own `next` handler (position in the order, both explanations rendered with their
differences marked, metrics, vote state), walked over the questions that differ most, as written and then
with the differences marked. Printed last: the time per question page (median and max) with the marks.

    python bench/compare_paging.py [--rows 17000] [--pages 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.compare import space_module  # noqa: E402

MATH = [
    "$x^2 + y^2 = r^2$",
    "$\\frac{a}{b}$",
    "$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$",
    "\\(\\sqrt{2}\\)",
    "\\boxed{42}",
]


def corpus(rng: np.random.Generator, words: int) -> str:
    """Zipf-distributed pseudo-words in sentences and paragraphs, with math every so often."""
    vocabulary = np.array([f"w{i}" for i in range(5000)] + MATH, dtype=object)
    picks = np.minimum(rng.zipf(1.3, words) - 1, len(vocabulary) - 1)
    tokens = vocabulary[picks]
    math = rng.random(words) < 0.004
    tokens[math] = rng.choice(MATH, int(math.sum()))
    ends = rng.random(words)
    out = [t + (".\n\n" if e < 0.006 else ". " if e < 0.06 else " ") for t, e in zip(tokens, ends)]
    return "".join(out)


def write_sources(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path, float]:
    rng = np.random.default_rng(seed)
    text = corpus(rng, 3_000_000)
    lengths = np.clip(rng.lognormal(np.log(10_000), 0.6, rows), 500, 60_000).astype(int)
    starts = rng.integers(0, len(text) - 60_001, rows)
    first = [f"<|begin_of_thought|>\n\n{text[s : s + n]}\n\n<|end_of_thought|>" for s, n in zip(starts, lengths)]
    second = []
    for explanation in first:  # a third of the segments rewritten by the other teacher
        cut = np.linspace(0, len(explanation), 10, dtype=int)
        parts = [explanation[a:b] for a, b in zip(cut[:-1], cut[1:])]
        for k in np.flatnonzero(rng.random(len(parts)) < 0.33):
            at = int(rng.integers(0, len(text) - len(parts[k]) - 1))
            parts[k] = text[at : at + len(parts[k])]
        second.append("".join(parts))
    paths = []
    for name, texts in (("after", first), ("before", second)):
        reward = rng.normal(-1.0, 0.5, rows)
        frame = pd.DataFrame(
            {
                "id": [f"q{i:06d}" for i in range(rows)],
                "question": [f"Question {i}: find $x$ such that $x^2 = {i * i}$." for i in range(rows)],
                "solution": [f"\\boxed{{{i}}}" for i in range(rows)],
                "explanation": texts,
                "reward": reward,
                "r_ss_mean": reward / 2,
                "r_ss_min": reward,
                "kl_mean": rng.random(rows),
                "kl_max": rng.random(rows) + 1,
                "penalty": np.zeros(rows),
                "closed": np.ones(rows, bool),
                "explanation_tokens": (lengths / 4).astype(int),
                "finish_reason": ["stop"] * rows,
            }
        )
        path = folder / name
        path.mkdir(parents=True)
        frame.to_parquet(path / "train.parquet")
        paths.append(path)
    return paths[0], paths[1], float(np.mean([len(t) for t in first]))


def timed(fn, repeat: int = 5):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def handler(demo, api_name: str):
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == api_name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=17_000)
    parser.add_argument("--pages", type=int, default=100, help="question pages walked and timed")
    args = parser.parse_args()
    import gradio as gr

    data, app, votes = space_module("compare_data"), space_module("app"), space_module("compare_votes")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        a, b, mean_chars = write_sources(Path(folder), args.rows)
        print(
            f"wrote 2 x {args.rows} synthetic traces, explanations {mean_chars:,.0f} characters on average: "
            f"{time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        comparison = data.load_comparison([str(a), str(b)])
        print(f"load + align + index {args.rows} x 2 sources: {time.perf_counter() - start:.2f} s")
        demo = app.build_app(comparison, votes.VoteStore(Path(folder) / "votes.jsonl"))

    table = gr.Dataframe()
    t_search, _ = timed(lambda: comparison.search("w4999 w4998"), 1)

    def uncached_order():
        comparison._orders.clear()
        return comparison.order("", "disagreement", 0, 1)

    t_order, _ = timed(uncached_order)
    page_s, page_json = timed(
        lambda: table.postprocess(comparison.overview("", "disagreement", 0, 1, 1, 25)[0]).model_dump_json()
    )
    print(f"search over ids, questions, 2 x {args.rows} explanations (on submit, then cached): {t_search:.2f} s")
    print(f"sort by |reward difference| (uncached): {t_order * 1e3:.1f} ms")
    print(f"overview page of 25 rows: {page_s * 1e3:.1f} ms, {len(page_json):,} bytes")

    step = handler(demo, "next")  # the "next ▶" button: what one question page costs the server
    for marks, show in (("as written", []), ("with their differences marked", [app.DIFF])):
        view, times, sizes = {"query": "", "sort": "disagreement", "index": -1, "link": ""}, [], []
        for _ in range(args.pages):
            start = time.perf_counter()
            shown = step(view, 0, 1, show)
            times.append(time.perf_counter() - start)
            view = shown[0]
            sizes.append(sum(len(part) for part in shown[1:] if isinstance(part, str)))
        times_ms = np.array(times) * 1e3
        print(
            f"time per question page ({args.pages} pages walked in the |Δ reward| order, {args.rows} questions, "
            f"explanations {marks}, median payload {np.median(sizes):,.0f} characters): "
            f"median {np.median(times_ms):.1f} ms, max {times_ms.max():.1f} ms"
        )


if __name__ == "__main__":
    main()
