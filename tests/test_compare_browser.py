"""The compare app as `factory compare` serves it, in a real headless Chromium and through gradio_client.

Uses Debian's /usr/bin/chromium driven by Python playwright (scripts/test.sh installs both; never
`playwright install`, which downloads a browser); the browser test is skipped when either is missing.
The screenshot goes to tests/artifacts/ (gitignored) and its path is printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_compare import _free_port, base_reward, explanation, serving, traces  # noqa: F401 - `traces` is a fixture

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def cli_app(traces, tmp_path_factory):
    """`factory compare base rlt --port N` running in a subprocess; yields (url, gradio_client Client)."""
    port, votes = _free_port(), tmp_path_factory.mktemp("votes") / "votes.jsonl"
    command = [
        sys.executable,
        "-m",
        "factory.cli",
        "compare",
        f"base={traces['base']}",
        f"rlt={traces['rlt']}",
        "--port",
        str(port),
        "--votes",
        str(votes),
    ]
    with serving(command, port) as client:
        yield f"http://127.0.0.1:{port}/", client


def test_cli_serves_the_app_on_the_given_port(cli_app):
    _, client = cli_app
    shown = client.predict("q042", 0, 1, api_name="/go_to")
    assert (
        "q042" in shown[2]
        and shown[5] == explanation("base", 42).strip()
        and shown[6] == explanation("rlt", 42).strip()
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium missing: apt-get install chromium (scripts/test.sh)"
)
def test_page_shows_both_explanations_and_rewards(cli_app):
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright missing: pip install playwright")
    url, _ = cli_app
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#explanation-0").get_by_text("base explains 17").wait_for(timeout=30_000)  # q017 opens first
            box = page.locator("#jump-id textarea, #jump-id input").first
            box.fill("q003")
            box.press("Enter")  # go to a question by id
            page.locator("#question").get_by_text("Question 3: what is the square root of 9?").wait_for(timeout=30_000)
            page.locator("#explanation-1").get_by_text("rlt explains 3").wait_for(timeout=30_000)
            page.get_by_role("tab", name="Overview").click()  # then pick the second-largest disagreement
            page.locator("#overview").get_by_text("q042", exact=True).click()
            page.locator("#question").get_by_text("Question 42: what is the square root of 1764?").wait_for(
                timeout=30_000
            )
            page.locator("#explanation-0").get_by_text("base explains 42").wait_for(timeout=30_000)
            texts = [page.locator(f"#explanation-{i}").inner_text() for i in (0, 1)]
            metrics = [page.locator(f"#metrics-{i}").inner_text() for i in (0, 1)]
            assert "base explains 42" in texts[0] and "rlt explains 42" in texts[1]
            assert f"{base_reward(42):.4f}" in metrics[0] and f"{base_reward(42) - 2.5:.4f}" in metrics[1]
            assert "rlt · right" in metrics[1] and "✓ student right" in metrics[1]
            assert "92 tokens" in metrics[1] and "62 tokens" in metrics[0]  # 20 + 42 (+ 30 for rlt)
            assert page.locator("#explanation-1 .katex").count() >= 2  # inline $x^2$ and display $$\frac..$$
            assert "$$" not in texts[1]  # rendered by KaTeX, not shown raw
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "compare_question.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
