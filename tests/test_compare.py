"""The compare Space: loading and aligning trace datasets, paging, search, votes, the launched app, the Hub.

Two small trace datasets with the traces schema are built here (no model needed): `base` as a traces
artifact folder (data/*.parquet, plus a candidates config that must be ignored) and `rlt` as a
JSONL file. Rewards are chosen so that the largest disagreements are known: q017 (rlt much better)
and q042 (base much better).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from commands import factory

from factory import compare as fc
from factory.errors import UserError
from factory.formats import student_messages

cd = fc.space_module("compare_data")
cr = fc.space_module("compare_render")
cs = fc.space_module("compare_sources")
cv = fc.space_module("compare_votes")
N = 60
SPECIAL = {17: 3.0, 42: -2.5}  # rlt reward - base reward at these questions


def base_reward(i: int) -> float:
    return round(-1.0 - 0.01 * i, 4)


def delta(i: int) -> float:
    return SPECIAL.get(i, round(0.05 * ((i * 7) % 11 - 5), 4))  # |delta| <= 0.25 elsewhere


def explanation(teacher: str, i: int) -> str:
    extra = " A zebra crossing helps here." if (teacher, i) == ("rlt", 23) else ""
    return f"{teacher} explains {i}: square it, $x^{2} = {i * i}$, so\n\n$$\\frac{{{i}}}{{1}} = {i}$$\n{extra}"


def trace_rows(teacher: str, ids: list[int]) -> list[dict]:
    """Rows of the traces schema (briefing) for questions `ids`; `rlt` also records student_correct."""
    rows = []
    for i in ids:
        question, solution, text = (
            f"Question {i}: what is the square root of {i * i}?",
            f"\\boxed{{{i}}}",
            explanation(teacher, i),
        )
        messages = student_messages(question, text, solution)
        reward = base_reward(i) + (delta(i) if teacher == "rlt" else 0.0)
        row = {
            "id": f"q{i:03d}",
            "question": question,
            "solution": solution,
            "explanation": text,
            "prompt": messages[:2],
            "completion": messages[2:],
            "reward": reward,
            "r_ss_mean": reward / 2,
            "r_ss_min": reward,
            "kl_mean": 0.1 * (i % 5),
            "kl_max": 0.5,
            "penalty": 0.0,
            "closed": i % 9 != 0,
            "explanation_tokens": 20 + i + (30 if teacher == "rlt" else 0),
            "finish_reason": "stop",
            "candidate_index": 0,
            "teacher": f"org/{teacher}-teacher@v1",
            "temperature": 0.7,
            "top_p": 1.0,
            "seed": 42,
        }
        if teacher == "rlt":
            row.update(student_correct=i % 2 == 0, answer_leaked=i == 18, reward_truncated=False)  # generate's QA flags
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    """`base`: an artifact folder (ids 0..59 plus 900, 901); `rlt`: a JSONL file (ids 0..59 plus 950, shuffled)."""
    root = tmp_path_factory.mktemp("traces")
    base = root / "base-artifact"
    (base / "data" / "candidates").mkdir(parents=True)
    base_rows = trace_rows("base", [*range(N), 900, 901])
    pd.DataFrame(base_rows).to_parquet(base / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(base_rows + base_rows).to_parquet(base / "data" / "candidates" / "train-00000-of-00001.parquet")
    rlt = root / "rlt.jsonl"
    order = np.random.default_rng(0).permutation([*range(N), 950]).tolist()
    rlt.write_text("".join(json.dumps(row) + "\n" for row in trace_rows("rlt", order)))
    return {"base": base, "rlt": rlt}


@pytest.fixture(scope="module")
def comparison(traces):
    return cd.load_comparison([f"base={traces['base']}", f"rlt={traces['rlt']}"])


def test_sources_load_and_align_by_id(traces, comparison):
    assert comparison.labels == ["base", "rlt"]
    assert [s.kind for s in comparison.sources] == ["artifact", "file"]
    assert len(comparison) == N  # the candidates config is not read; 900, 901, 950 are not shared
    assert list(comparison.ids[:3]) == ["q000", "q001", "q002"]  # the first source's order
    assert comparison.missing == {"base": 2, "rlt": 1} and comparison.mismatched == 0
    pos = comparison.position("q017")
    assert comparison.rewards[0, pos] == pytest.approx(base_reward(17))
    assert comparison.rewards[1, pos] == pytest.approx(base_reward(17) + 3.0)
    assert comparison.length_unit == "tokens" and comparison.lengths[1, pos] == 20 + 17 + 30
    unlabelled = cd.load_comparison([str(traces["base"]), str(traces["rlt"]), str(traces["rlt"])])
    assert unlabelled.labels == ["base-artifact", "rlt", "rlt #2"]


def test_bad_sources_name_the_problem(traces, tmp_path):
    no_reward = tmp_path / "no-reward.jsonl"
    no_reward.write_text(json.dumps({"id": "a", "question": "q", "solution": "s", "explanation": "e"}) + "\n")
    with pytest.raises(cd.SourceError, match=r"no-reward.jsonl: missing column\(s\) \['reward'\]"):
        cd.load_source(str(no_reward))
    candidates = traces["base"] / "data" / "candidates" / "train-00000-of-00001.parquet"
    with pytest.raises(cd.SourceError, match="id 'q000' appears more than once .*candidates"):
        cd.load_source(str(candidates))
    with pytest.raises(cd.SourceError, match="not a Hub dataset id"):
        cd.load_source("./missing.parquet")
    with pytest.raises(UserError, match="two or more sources, got 1"):
        fc.load([str(traces["base"])])
    result = factory("compare", str(traces["base"]), "./nowhere.jsonl")
    assert result.returncode == 2 and "nowhere.jsonl: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_order_sorts_by_reward_difference(comparison):
    ids = lambda order: [comparison.ids[p] for p in order]  # noqa: E731
    assert ids(comparison.order(sort="disagreement")[:2]) == ["q017", "q042"]
    right_better = ids(comparison.order(sort="right_better"))
    assert right_better[0] == "q017" and right_better[-1] == "q042"
    assert ids(comparison.order(sort="left_better"))[0] == "q042"
    assert ids(comparison.order(sort="right_better", left=1, right=0))[0] == "q042"  # swapping the pair flips Δ
    assert list(comparison.order(sort="dataset")) == list(range(N))
    diffs = np.abs(comparison.difference(0, 1)[comparison.order()])
    assert np.all(np.diff(diffs) <= 1e-12)  # non-increasing |Δ|


def test_overview_pages_never_exceed_page_size(comparison):
    table, page, pages, total = comparison.overview("", "disagreement", 0, 1, page=1, page_size=25)
    assert (len(table), page, pages, total) == (25, 1, 3, N)
    assert list(table["id"][:2]) == ["q017", "q042"]
    assert table["Δ rlt − base"][0] == pytest.approx(3.0) and table["Δ rlt − base"][1] == pytest.approx(-2.5)
    assert list(table.columns) == [
        "#",
        "id",
        "question",
        "reward · base",
        "reward · rlt",
        "Δ rlt − base",
        "tokens · base",
        "tokens · rlt",
    ]
    last, page, _, _ = comparison.overview("", "disagreement", 0, 1, page=99, page_size=25)
    assert page == 3 and len(last) == 10 and list(last["#"]) == list(range(51, 61))
    found, _, pages, total = comparison.overview("q01", "dataset", 0, 1, page=1, page_size=25)
    assert total == 10 and pages == 1 and list(found["id"]) == [f"q01{d}" for d in range(10)]


def test_search_ids_questions_and_explanations(comparison):
    assert [comparison.ids[p] for p in comparison.search("ZEBRA")] == ["q023"]  # one rlt explanation
    assert [comparison.ids[p] for p in comparison.search("root of 2401?")] == ["q049"]  # a question
    assert len(comparison.search("  ")) == N
    assert len(comparison.search("no such words")) == 0
    assert len(comparison.order("no such words")) == 0


def test_question_panels_and_markdown(comparison):
    shown = comparison.question(comparison.position("q018"))
    assert shown["id"] == "q018" and shown["solution"] == "\\boxed{18}"
    base, rlt = shown["panels"]
    assert base["explanation"] == explanation("base", 18) and rlt["explanation"] == explanation("rlt", 18)
    assert rlt["reward"] == pytest.approx(base_reward(18) + delta(18))
    assert base["components"]["kl_mean"] == pytest.approx(0.3) and base["tokens"] == 38 and rlt["tokens"] == 68
    assert base["student_correct"] is None and bool(rlt["student_correct"]) is True
    assert not base["closed"]  # 18 % 9 == 0
    text = cr.metrics_markdown(rlt, "right")
    assert text.startswith("### rlt · right") and f"**{rlt['reward']:.4f}**" in text and "✓ student right" in text
    assert "student result not recorded" in cr.metrics_markdown(base) and "**not closed**" in cr.metrics_markdown(base)
    assert rlt["flags"] == ["answer leaked"] and "**answer leaked**" in text and base["flags"] == []
    assert comparison.panel(1, comparison.position("q019"))["flags"] == []
    assert cr.question_markdown(shown).endswith("#### Reference solution\n\n$\\boxed{18}$")  # bare \boxed made math
    assert (
        cr.math_markdown("so \\boxed{\\frac{1}{2}} and \\boxed{3}.") == "so $\\boxed{\\frac{1}{2}}$ and $\\boxed{3}$."
    )
    assert cr.math_markdown("$x$ and \\boxed{3}") == "$x$ and $\\boxed{3}$"  # outside the math spans
    assert cr.math_markdown("so \\[\\boxed{3}\\]") == "so \\[\\boxed{3}\\]"  # inside one: the author's
    assert (
        cr.math_markdown("costs $5, so \\boxed{3}") == "costs $5, so \\boxed{3}"
    )  # a lone $ could pair with a new one


def test_summary_and_figures(comparison):
    summary = comparison.summary().set_index("source")
    assert summary.loc["base", "reward mean"] == pytest.approx(np.mean([base_reward(i) for i in range(N)]), abs=1e-4)
    assert summary.loc["rlt", "mean tokens"] == pytest.approx(np.mean([50 + i for i in range(N)]), abs=0.1)
    assert summary.loc["rlt", "student correct"] == pytest.approx(0.5)
    assert summary["best reward share"].sum() == pytest.approx(1.0)
    for what in ("reward", "length"):
        ax = comparison.figure(what).axes[0]
        heights = [patch.get_height() for patch in ax.patches]
        assert sum(heights) == 2 * N  # both histograms hold every aligned question


def test_votes_become_preference_pairs(comparison, tmp_path):
    store = cv.VoteStore(tmp_path / "votes.jsonl")
    p17, p42, p5 = (comparison.position(q) for q in ("q017", "q042", "q005"))
    store.record(comparison, p17, 0, 1, "left")
    store.record(comparison, p17, 0, 1, "right")  # changes its mind: the latest counts
    store.record(comparison, p42, 0, 1, "left")
    store.record(comparison, p5, 0, 1, "tie")
    with pytest.raises(ValueError):
        store.record(comparison, p5, 0, 0, "left")
    assert len(store.records()) == 4 and len(store.latest()) == 3
    assert store.vote_for("q017", *(s.ref for s in comparison.sources)) == "right"
    pairs = {row["id"]: row for row in cv.preference_rows(store.latest())}
    assert set(pairs) == {"q017", "q042"}  # the tie is not a preference pair
    assert pairs["q017"]["chosen"] == explanation("rlt", 17) and pairs["q017"]["rejected"] == explanation("base", 17)
    assert pairs["q042"]["chosen_source"] == comparison.sources[0].ref
    assert pairs["q042"]["chosen_reward"] - pairs["q042"]["rejected_reward"] == pytest.approx(2.5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(traces, tmp_path):
    """The app of `factory compare base rlt`, launched on a free local port."""
    votes = tmp_path / "votes.jsonl"
    demo = fc.build([f"base={traces['base']}", f"rlt={traces['rlt']}"], votes)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, ssr_mode=False, quiet=True)
    yield demo, votes
    demo.close()


def test_launched_app_answers_gradio_client(served):
    from gradio_client import Client

    demo, votes = served
    app = fc.space_module("app")
    client = Client(demo.local_url, verbose=False)
    plain, marked = [], [app.DIFF]  # what the page shows: explanations as written, or their differences marked
    # outputs after the query box: position, question, metrics x2, explanations x2, vote status, link
    shown = client.predict("q017", 0, 1, plain, api_name="/go_to")
    query, position, question, m_base, m_rlt, e_base, e_rlt, status, link = shown
    assert query == "" and "q017" in question and "**1** / 60" in position  # q017 leads the disagreement order
    assert e_base == explanation("base", 17).strip() and e_rlt == explanation("rlt", 17).strip()  # Markdown strips
    assert f"**{base_reward(17):.4f}**" in m_base and f"**{base_reward(17) + 3.0:.4f}**" in m_rlt
    assert status == "no vote yet for this question and pair" and link.endswith("?q=q017")
    diffed = client.predict("q023", 0, 1, marked, api_name="/go_to")
    assert diffed[5].startswith("<mark>base</mark> explains 23") and "<mark>rlt</mark> explains 23" in diffed[6]
    assert "<mark>A zebra crossing helps here.</mark>" in diffed[6] and "$x^2 = 529$" in diffed[6]
    back = client.predict(0, 1, plain, api_name="/previous")  # one back from q023; the link follows
    step = lambda position: int(position.split("**")[1])  # noqa: E731
    assert step(back[0]) == step(diffed[1]) - 1 and back[-1].endswith("?q=" + back[1].split("`")[1])
    first = client.predict("q017", 0, 1, plain, api_name="/go_to")
    back = client.predict(0, 1, plain, api_name="/previous")  # already first: stays
    assert "q017" in back[1] and "**1** / 60" in back[0] and first[2] == back[1]
    nxt = client.predict(0, 1, plain, api_name="/next")
    assert "q042" in nxt[1] and "**2** / 60" in nxt[0]
    vote_status, summary = client.predict(0, 1, api_name="/vote_left")
    assert "left is better" in vote_status and summary.startswith("1 votes")
    saved = [json.loads(line) for line in votes.read_text().splitlines()]
    assert [(v["id"], v["vote"]) for v in saved] == [("q042", "left")]
    nothing = client.predict("no such words", "dataset", 0, 1, plain, api_name="/search")
    assert nothing[0] == "no question matches “no such words”" and nothing[-1] == "page 1 / 1 · 0 questions"
    client.predict(0, 1, api_name="/vote_right")  # nothing shown: no vote recorded
    assert len(votes.read_text().splitlines()) == 1
    found = client.predict("zebra", "dataset", 0, 1, plain, api_name="/search")
    assert "q023" in found[1] and "**1** / 1" in found[0]
    table = found[-3]
    assert [row[1] for row in table["data"]] == ["q023"] and found[-1] == "page 1 / 1 · 1 questions"
    page = client.predict(0, 1, 1, api_name="/page")  # the search still applies to the overview
    assert len(page[0]["data"]) == 1
    everything = client.predict("", "disagreement", 0, 1, plain, api_name="/search")
    assert len(everything[-3]["data"]) == app.PAGE_SIZE == 25 and everything[-1] == "page 1 / 3 · 60 questions"
    last = client.predict(0, 1, 2, api_name="/page_next")
    assert [row[0] for row in last[0]["data"]] == list(range(51, 61)) and last[1] == 3
    swapped = client.predict("q005", 1, 0, plain, api_name="/go_to")
    assert swapped[-1].endswith("?q=q005&left=1&right=0")  # the link keeps another pair
    assert swapped[3].startswith("### rlt · left") and swapped[5] == explanation("rlt", 5).strip()  # left on the left


@contextlib.contextmanager
def serving(command: list[str], port: int, **kwargs):
    """Run a command that serves a Gradio app on `port`; yield a gradio_client Client once it listens."""
    from gradio_client import Client

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **kwargs.pop("env", {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kwargs)
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        assert process.poll() is None, "the app exited:\n" + "".join(seen)
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_space_settings_and_written_space(traces, tmp_path, monkeypatch):
    import gradio

    app = fc.space_module("app")
    monkeypatch.setenv("SOURCES", f"a={traces['base']}\nb={traces['rlt']}")
    monkeypatch.setenv("VOTES_REPO", "org/votes")
    settings = app.configured()
    assert (
        settings["sources"] == [f"a={traces['base']}", f"b={traces['rlt']}"] and settings["votes_repo"] == "org/votes"
    )

    specs = ["RLT=org/rlt-traces@v3", "org/base-traces@v1", str(traces["rlt"])]
    dest = fc.write_space(tmp_path / "space", specs, title="RLT vs base")
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.md",
        "app.py",
        "compare_data.py",
        "compare_render.py",
        "compare_sources.py",
        "compare_votes.py",
        "requirements.txt",
        "sources.json",
    ]
    front = yaml.safe_load((dest / "README.md").read_text().split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["sdk_version"] == gradio.__version__
    assert front["datasets"] == ["org/rlt-traces", "org/base-traces"] and front["title"] == "RLT vs base"
    assert front["models"] == []  # deploy_space fills it from the published versions' factory.json
    assert json.loads((dest / "sources.json").read_text())["sources"] == specs
    with pytest.raises(UserError, match="two or more"):
        fc.write_space(tmp_path / "one", specs[:1])


def test_loads_source_from_hub_by_revision_and_publishes(hub_env, traces, tmp_path):
    """repo@v1 loads v1's rows even after v2 is pushed; votes and the Space publish to the same Hub."""
    import datasets
    from huggingface_hub import HfApi

    api, repo = HfApi(), "factory-org/toy-traces"
    rows = trace_rows("rlt", list(range(N)))
    datasets.Dataset.from_list(rows).push_to_hub(repo)
    api.create_tag(repo, tag="v1", repo_type="dataset")
    datasets.Dataset.from_list([{**row, "reward": 9.0} for row in rows]).push_to_hub(repo)
    api.create_tag(repo, tag="v2", repo_type="dataset")

    comparison = cd.load_comparison([str(traces["base"]), f"{repo}@v1"])
    assert comparison.sources[1].kind == "hub" and comparison.labels[1] == "toy-traces@v1"
    assert comparison.sources[1].ref == f"{repo}@v1"
    assert comparison.difference(0, 1)[comparison.position("q017")] == pytest.approx(3.0)
    latest = cd.load_source(f"{repo}@v2")
    assert set(latest.frame["reward"]) == {9.0}
    with pytest.raises(cd.SourceError, match="@v9: could not load"):
        cd.load_source(f"{repo}@v9")

    store = cv.VoteStore(tmp_path / "votes.jsonl")
    store.record(comparison, comparison.position("q017"), 0, 1, "right")
    store.record(comparison, comparison.position("q003"), 0, 1, "tie")
    assert cv.publish_votes(store, "factory-org/toy-votes") == {"pairs": 1, "votes": 2}
    pairs = datasets.load_dataset("factory-org/toy-votes", split="train")
    assert pairs["id"] == ["q017"] and pairs["chosen"] == [explanation("rlt", 17)]
    assert sorted(datasets.load_dataset("factory-org/toy-votes", "votes", split="train")["vote"]) == ["right", "tie"]

    commit = fc.deploy_space("factory-org/toy-compare", [f"{repo}@v1", f"{repo}@v2"])
    card = api.hf_hub_download("factory-org/toy-compare", "README.md", repo_type="space", revision=commit)
    assert "datasets:\n- factory-org/toy-traces\n" in Path(card).read_text()
    files = set(api.list_repo_files("factory-org/toy-compare", repo_type="space"))
    assert {"app.py", "compare_data.py", "requirements.txt", "sources.json"} <= files

    # The deployed Space runs as Spaces run it (`python app.py` in its folder) and reads both revisions.
    folder = api.snapshot_download("factory-org/toy-compare", repo_type="space", local_dir=tmp_path / "space")
    port = _free_port()
    with serving([sys.executable, "app.py"], port, cwd=folder, env={"GRADIO_SERVER_PORT": str(port)}) as client:
        shown = client.predict("q017", 0, 1, api_name="/go_to")
        assert "q017" in shown[2] and shown[5] == shown[6] == explanation("rlt", 17).strip()
        assert f"**{base_reward(17) + 3.0:.4f}**" in shown[3] and "**9.0000**" in shown[4]  # v1 left, v2 right
