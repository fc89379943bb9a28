"""The compare Space as the Hub runs it: deployed by the Hub store with a traces version, downloaded from its
Space repo into an empty folder, started there by a Python that can import what its requirements.txt lists
but not `factory` nor this source tree, and used in a real Chromium (one browser session).

The traces (default = after RL, before_rl = the initial teacher) carry reward components, so the page shows
them; the vote goes to the Space's votes file and, through its Publish button, to a Hub dataset. Screenshots
go to tests/artifacts/ (committed, small). Skipped where Debian's chromium or python playwright is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from publishing import finish, model_artifact, reward_notes, upstream
from test_compare import _free_port, base_reward, explanation, serving, trace_rows

from factory.artifacts import InputRef
from factory.compare import SPACE_FILES

SPACE_REPO, TRACES_REPO = "factory-tester/tiny-compare", "factory-tester/tiny-traces"
VOTES_REPO = "factory-tester/tiny-compare-votes"
# Debian's chromium driven by Python playwright (scripts/test.sh installs both; never `playwright install`,
# which downloads a browser)
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
IDS = list(range(45))  # q017 and q042 differ most (test_compare.SPECIAL)


def traces_with_components(folder: Path, teacher: Path) -> Path:
    """A traces artifact as generate writes it: default (the RL teacher's rows), before_rl (the initial teacher's)."""
    (folder / "data" / "before_rl").mkdir(parents=True)
    pd.DataFrame(trace_rows("rlt", IDS)).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(trace_rows("base", IDS)).to_parquet(folder / "data" / "before_rl" / "train-00000-of-00001.parquet")
    initial = InputRef("initial_teacher", "base-initial", source="Qwen/Qwen2.5-7B-Instruct", revision="a" * 40)
    figures = lambda teacher: {  # noqa: E731 - generate's metrics of one config
        "rows": len(IDS),
        "qa": {"closed_rate": 1.0},
        "reward": {
            "candidates": {"mean": -1.0},
            "selected": {"mean": float(pd.DataFrame(trace_rows(teacher, IDS))["reward"].mean())},
        },
    }
    metrics = {**figures("rlt"), "before_rl": figures("base")}
    inputs = [upstream(teacher, "teacher"), initial]
    return finish(folder, "dataset", "generate", "traces", {"temperature": 0.7}, inputs, metrics, reward_notes())


def isolated_env(folder: Path) -> dict[str, str]:
    """`python -S` with only the venv's site-packages on PYTHONPATH: no .pth file runs, so the editable
    `factory` install is not importable, and neither is the source tree (the cwd is the Space folder)."""
    return {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PYTHONNOUSERSITE": "1", "PWD": str(folder)}


def requirement_modules(folder: Path) -> list[str]:
    names = [
        re.split(r"[<>=!~ ;\[]", line.strip())[0] for line in (folder / "requirements.txt").read_text().splitlines()
    ]
    return ["gradio", *(name.replace("-", "_") for name in names if name and not name.startswith("#"))]


def test_space_runs_from_its_own_repo(store, hub_env, tmp_path, tiny_model_dir):
    import datasets
    import yaml
    from huggingface_hub import snapshot_download

    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [])
    store.publish(teacher)
    assert store.publish(traces_with_components(tmp_path / "traces", teacher)).space is not None
    folder = Path(snapshot_download(SPACE_REPO, repo_type="space", local_dir=tmp_path / "space"))
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert files == sorted([*SPACE_FILES, "sources.json"])
    card = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert card["datasets"] == [TRACES_REPO]
    assert card["models"] == ["factory-tester/tiny-teacher", "Qwen/Qwen2.5-7B-Instruct"]  # the two teachers shown

    env = {**os.environ, **isolated_env(folder)}
    run = lambda code: subprocess.run(  # noqa: E731
        [sys.executable, "-S", "-c", code], cwd=folder, env=env, capture_output=True, text=True
    )
    blocked = run("import factory")
    assert blocked.returncode != 0 and "No module named 'factory'" in blocked.stderr
    allowed = run("import " + ", ".join(requirement_modules(folder)))
    assert allowed.returncode == 0, allowed.stderr

    port = _free_port()
    app_env = {**isolated_env(folder), "GRADIO_SERVER_PORT": str(port), "VOTES_REPO": VOTES_REPO}
    with serving([sys.executable, "-S", "app.py"], port, cwd=folder, env=app_env):
        browse(f"http://127.0.0.1:{port}/")
    votes = (folder / "votes.jsonl").read_text().splitlines()
    assert len(votes) == 1 and '"vote": "right"' in votes[0]
    pairs = datasets.load_dataset(VOTES_REPO, split="train")  # the Space pushed its votes to the Hub
    assert pairs["id"] == ["q005"] and pairs["chosen"] == [explanation("rlt", 5)]
    assert pairs["chosen_source"] == [f"{TRACES_REPO}@v1"] and pairs["rejected_source"] == [
        f"{TRACES_REPO}@v1#before_rl"
    ]


def browse(url: str) -> None:
    """What a reader does: read the sources, one question side by side, the overview, a permalink, a vote."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium missing: apt-get install chromium (scripts/test.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright missing: pip install playwright")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#explanation-1").get_by_text("rlt explains 17").wait_for(timeout=60_000)  # |Δ| largest
            header = page.locator("h1 + p, h1 ~ ul").first.locator("..").inner_text()
            assert f"after RL: {TRACES_REPO}@v1, written by the teacher factory-tester/tiny-teacher@v1" in header
            assert (
                f"before RL: {TRACES_REPO}@v1#before_rl, written by the teacher Qwen/Qwen2.5-7B-Instruct@aaaa" in header
            )
            left, right = (page.locator(f"#metrics-{i}").inner_text() for i in (0, 1))
            assert left.startswith("before RL · left") and right.startswith("after RL · right")  # Δ: RL's change
            assert "r_ss_mean" in right and "kl_max" in left and f"{base_reward(17) + 3.0:.4f}" in right
            notes = page.locator("#components").inner_text()
            assert "kl_mean: mean KL over the explanation" in notes and "penalty: the missing-tag penalty" in notes
            assert page.locator("#explanation-0 mark").first.inner_text() == "base"  # where the teachers differ
            assert page.locator("#explanation-1 mark").first.inner_text() == "rlt"
            assert (
                page.locator("#explanation-1 .katex").count() >= 2
                and "$$" not in page.locator("#explanation-1").inner_text()
            )
            assert page.locator("#permalink textarea, #permalink input").first.input_value() == f"{url}?q=q017"
            page.screenshot(path=str(ARTIFACTS / "space_question.png"))

            page.get_by_role("tab", name="Overview").click()
            overview = page.locator("#overview")
            overview.get_by_text("reward · after RL").wait_for(timeout=30_000)
            shown_ids = re.findall(r"\bq\d{3}\b", overview.inner_text())
            assert shown_ids[:2] == ["q017", "q042"]  # by |Δ reward|, largest first
            assert page.locator("#page-info").inner_text() == f"page 1 / 2 · {len(IDS)} questions"  # 25 a page
            assert "reward · before RL" in overview.inner_text() and "Δ after RL − before RL" in overview.inner_text()
            page.screenshot(path=str(ARTIFACTS / "space_overview.png"))
            overview.get_by_text("q042", exact=True).click()  # a row opens its question
            page.locator("#question").get_by_text("Question 42: what is the square root of 1764?").wait_for(
                timeout=30_000
            )
            box = page.locator("#jump-id textarea, #jump-id input").first
            box.fill("q003")
            box.press("Enter")  # go to a question by id
            page.locator("#explanation-0").get_by_text("base explains 3").wait_for(timeout=30_000)

            page.goto(f"{url}?q=q005", wait_until="domcontentloaded")  # a permalink opens its question
            page.locator("#question").get_by_text("Question 5: what is the square root of 25?").wait_for(timeout=60_000)
            assert page.locator("#permalink textarea, #permalink input").first.input_value() == f"{url}?q=q005"
            page.locator("#vote-right").click()  # after RL explains it better
            page.locator("#vote-status").get_by_text("saved: right is better").wait_for(timeout=30_000)
            page.get_by_role("tab", name="Votes").click()
            page.locator("#publish-votes").click()
            page.locator("#publish-info").get_by_text(
                f"published 1 preference pairs and 1 votes to {VOTES_REPO}"
            ).wait_for(timeout=60_000)
        finally:
            browser.close()
    for name in ("space_question.png", "space_overview.png"):
        assert 10_000 < (ARTIFACTS / name).stat().st_size < 400_000, name
