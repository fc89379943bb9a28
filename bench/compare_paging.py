"""Does the compare Space stay responsive on a large traces dataset? Paging against sending every row.

Builds two synthetic trace datasets (default 20,000 questions, ~1,500-character explanations) as
parquet, loads them like `factory compare`, then times what one browser interaction costs: the
overview page (search + sort + one page, through Gradio's Dataframe postprocessing, as served)
against the baseline of sending the whole overview table, measured in the same run. Headline: the
bytes of the whole table over the bytes of one page.

    python bench/compare_paging.py [--rows 20000]
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


def write_source(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = np.array("the sum of both sides gives x so we divide by two and check the answer again".split())
    texts = [" ".join(rng.choice(words, 300)) + f" $x = {i}$" for i in range(rows)]
    rewards = rng.normal(-1.0, 0.5, rows)
    frame = pd.DataFrame(
        {
            "id": [f"q{i:06d}" for i in range(rows)],
            "question": [f"Question {i}: find x." for i in range(rows)],
            "solution": [f"\\boxed{{{i}}}" for i in range(rows)],
            "explanation": texts,
            "reward": rewards,
            "r_ss_mean": rewards / 2,
            "r_ss_min": rewards,
            "kl_mean": rng.random(rows),
            "kl_max": rng.random(rows) + 1,
            "penalty": np.zeros(rows),
            "closed": np.ones(rows, bool),
            "explanation_tokens": rng.integers(50, 400, rows),
            "finish_reason": ["stop"] * rows,
        }
    )
    path.mkdir(parents=True)
    frame.to_parquet(path / "train.parquet")


def timed(fn, repeat: int = 5):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    import gradio as gr

    data = space_module("compare_data")
    with tempfile.TemporaryDirectory() as folder:
        a, b = Path(folder) / "a", Path(folder) / "b"
        write_source(a, args.rows, 0)
        write_source(b, args.rows, 1)
        start = time.perf_counter()
        comparison = data.load_comparison([str(a), str(b)])
        print(f"load + align {args.rows} x 2 sources: {time.perf_counter() - start:.2f} s")

    table = gr.Dataframe()
    t_search, _ = timed(lambda: comparison.search("divide by two and check the answer again $x = 1999"), 3)

    def uncached_order():
        comparison._orders.clear()
        return comparison.order("", "disagreement", 0, 1)

    t_order, _ = timed(uncached_order)
    t_question, _ = timed(lambda: comparison.question(comparison.order()[0]))
    page_s, page_json = timed(
        lambda: table.postprocess(comparison.overview("", "disagreement", 0, 1, 1, 25)[0]).model_dump_json()
    )
    whole = comparison.overview("", "disagreement", 0, 1, 1, len(comparison))[0]
    full_s, full_json = timed(lambda: table.postprocess(whole).model_dump_json(), 2)
    print(f"search over ids, questions, 2 x {args.rows} explanations: {t_search * 1e3:.1f} ms")
    print(
        f"sort by |reward difference| (uncached): {t_order * 1e3:.1f} ms; one question view: {t_question * 1e3:.2f} ms"
    )
    print(f"overview page of 25 rows: {page_s * 1e3:.1f} ms, {len(page_json):,} bytes")
    print(f"baseline, every row sent: {full_s * 1e3:.1f} ms, {len(full_json):,} bytes")
    print(
        f"overview payload, every row / one page: time {full_s / page_s:.0f}x, bytes ratio={len(full_json) / len(page_json):.0f}"
    )


if __name__ == "__main__":
    main()
