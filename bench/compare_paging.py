"""Does the compare Space answer fast on a Stratos-size traces dataset? Time per question page, last.

Builds two synthetic trace datasets of 17,000 questions (Bespoke-Stratos-17k has 16,710) with explanations
of Stratos length (log-normal, median 10,000 characters, one token in 20 inline or display math, the
format's tags; the second teacher's explanation rewrites about a third of the first's, so the word-level
diff has work to do), writes them as parquet, loads them like `factory compare`, then times what one
browser interaction costs on the server: search, sort, an overview page (through Gradio's Dataframe
postprocessing, as served), and a question page: the app's own `next` handler (position in the order,
both explanations rendered with their differences marked, metrics, vote state), walked over the questions
that differ most, as written and then with the differences marked. Printed last: the time per question
page (median and max) with the marks. `--browser N` first walks N pages in Chromium against `factory
compare` in its own process and prints the time from the click to the next question shown, its math
typeset by KaTeX.

    python bench/compare_paging.py [--rows 17000] [--pages 100] [--browser 20]
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
    """Zipf-distributed pseudo-words in sentences and paragraphs, one token in 20 a formula (a math trace's
    density: about a hundred formulas per explanation, each typeset by KaTeX in the browser)."""
    vocabulary = np.array([f"w{i}" for i in range(5000)], dtype=object)
    tokens = vocabulary[(rng.zipf(1.3, words) - 1) % len(vocabulary)]
    math = rng.random(words) < 0.05
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


def browser_pages(sources: list[Path], pages: int) -> np.ndarray:
    """Seconds from a click on "next ▶" in Chromium until the page shows the next question: what a reader
    waits, with `factory compare` serving in its own process as a Space does. Debian's /usr/bin/chromium
    driven by python playwright."""
    import socket
    import subprocess

    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "factory.cli", "compare", *map(str, sources), "--port", str(port)]
    votes = ["--votes", str(sources[0].parent / "votes.jsonl")]
    server = subprocess.Popen(command + votes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    times = []
    try:
        for line in server.stdout:
            if f"127.0.0.1:{port}" in line:
                break
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#position").get_by_text("1 /").wait_for(timeout=120_000)
            shown = "() => document.querySelector('#question').innerText"
            typeset = "(before) => document.querySelector('#question').innerText !== before && ['#explanation-0', '#explanation-1'].every(s => document.querySelector(s + ' .katex'))"
            for _ in range(pages):
                before = page.evaluate(shown)
                start = time.perf_counter()
                page.locator("#next").click()
                page.wait_for_function(typeset, arg=before, timeout=60_000, polling="raf")
                times.append(time.perf_counter() - start)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=17_000)
    parser.add_argument("--pages", type=int, default=100, help="question pages walked and timed")
    parser.add_argument("--browser", type=int, default=0, help="also walk this many pages in Chromium, end to end")
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
        if args.browser:
            seen = browser_pages([a, b], args.browser)
            print(
                f"in Chromium, click on next to the next question shown ({args.browser} pages, differences "
                f"marked, `factory compare` in its own process): median {np.median(seen):.2f} s, max {seen.max():.2f} s"
            )

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
