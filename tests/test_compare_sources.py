"""The compare Space's sources and rendering: dataset configs, names read from factory's metadata, and one
question's Markdown (math kept whole, the format's tags hidden or shown, the two explanations' differences
marked, the reward components explained). No browser, no server but the loopback Hub where a test needs it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from test_compare import N, base_reward, trace_rows

from factory import compare as fc

cd = fc.space_module("compare_data")
cr = fc.space_module("compare_render")
cs = fc.space_module("compare_sources")


def test_source_selects_a_config_of_an_artifact_folder(tmp_path):
    """`FOLDER#before_rl` reads data/before_rl/*.parquet; the default label says which config it is:
    "before RL" from the config name alone, "after RL" and the teachers from the folder's artifact.json."""
    from factory.artifacts import ArtifactMeta, InputRef, mark_complete

    artifact = tmp_path / "generate-0123456789ab"
    (artifact / "data" / "before_rl").mkdir(parents=True)
    pd.DataFrame(trace_rows("rlt", list(range(N)))).to_parquet(artifact / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(trace_rows("base", list(range(N)))).to_parquet(
        artifact / "data" / "before_rl" / "train-00000-of-00001.parquet"
    )
    comparison = cd.load_comparison([str(artifact), f"{artifact}#before_rl"])
    assert comparison.labels == ["generate-0123456789ab", "before RL"]  # no artifact.json: the folder's name
    inputs = [
        InputRef("teacher", "f" * 64, "runs/x/artifacts/teacher_rl-ffff", hub_repo="org/x-teacher", hub_revision="v2"),
        InputRef("initial_teacher", "e" * 64, source="Qwen/Qwen2.5-7B-Instruct", revision="a" * 40),
    ]
    metrics = {"rows": N, "before_rl": {"rows": N}}
    mark_complete(artifact, ArtifactMeta("dataset", "generate", "traces", "d" * 64, "x", {}, inputs, metrics))
    comparison = cd.load_comparison([str(artifact), f"{artifact}#before_rl"])
    assert comparison.labels == ["after RL", "before RL"]
    assert comparison.pair == (1, 0)  # the page opens with before RL left, after RL right: Δ is what RL changed
    assert comparison.sources[0].detail == f"`{artifact}`, written by the teacher `org/x-teacher@v2`"
    assert comparison.sources[1].provenance.teacher == "Qwen/Qwen2.5-7B-Instruct@aaaaaaaaaaaa"
    assert comparison.sources[1].provenance.models == ["Qwen/Qwen2.5-7B-Instruct"]
    again = cd.load_comparison([str(artifact), f"{artifact}#before_rl", str(artifact), f"mine={artifact}"])
    assert again.labels == [
        "after RL · generate-0123456789ab",
        "before RL",
        "after RL · generate-0123456789ab #2",
        "mine",
    ]
    assert [s.ref for s in comparison.sources] == [str(artifact), f"{artifact}#before_rl"]
    assert len(comparison) == N and comparison.difference(1, 0)[comparison.position("q017")] == pytest.approx(3.0)
    assert set(comparison.frames[1]["teacher"]) == {"org/base-teacher@v1"}

    with pytest.raises(cd.SourceError, match="no config 'candidates' .*configs: default, before_rl"):
        cd.load_source(f"{artifact}#candidates")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in trace_rows("rlt", [1, 2])))
    with pytest.raises(cd.SourceError, match="applies to an artifact folder or a Hub dataset, not a file"):
        cd.load_source(f"{rows}#before_rl")
    hashed = tmp_path / "run#2.jsonl"  # an existing path is taken whole, '#' and all
    hashed.write_text(rows.read_text())
    assert cd.load_source(str(hashed)).label == "run#2"
    assert cs.split_config("org/x-traces@v2#before_rl") == ("org/x-traces@v2", "before_rl")
    assert cs.split_config("org/x-traces@v2") == ("org/x-traces@v2", None)


def test_source_selects_a_config_of_a_hub_dataset(hub_env, tmp_path):
    """`owner/name@rev#before_rl` passes name=before_rl to load_dataset, at that revision."""
    import datasets
    from huggingface_hub import HfApi

    repo = "factory-org/cfg-traces"
    datasets.Dataset.from_list(trace_rows("rlt", list(range(N)))).push_to_hub(repo)
    datasets.Dataset.from_list(trace_rows("base", list(range(N)))).push_to_hub(repo, config_name="before_rl")
    HfApi().create_tag(repo, tag="v1", repo_type="dataset")
    comparison = cd.load_comparison([f"{repo}@v1", f"{repo}@v1#before_rl"])
    assert comparison.labels == ["cfg-traces@v1", "before RL"]  # no factory.json: by location, and the config
    assert [s.ref for s in comparison.sources] == [f"{repo}@v1", f"{repo}@v1#before_rl"]
    assert comparison.difference(1, 0)[comparison.position("q017")] == pytest.approx(3.0)
    assert comparison.rewards[1, comparison.position("q005")] == pytest.approx(base_reward(5))
    with pytest.raises(cd.SourceError, match="@v1#nope: could not load"):
        cd.load_source(f"{repo}@v1#nope")

    dest = fc.write_space(tmp_path / "space", [f"{repo}@v1", f"{repo}@v1#before_rl"])
    assert yaml.safe_load((dest / "README.md").read_text().split("---\n")[1])["datasets"] == [repo]


def test_diff_marks_words_and_whole_math_spans():
    left = "First, square it: $x^2 = 4$.\n\n- so x is 2\n- done"
    right = "First, halve it: $x^2 = 9$.\n\n- so x is 3\n- done"
    marked = cr.diff_marks(left, right)
    assert marked == "First, <mark>square</mark> it: <mark>$x^2 = 4$</mark>.\n\n- so x is <mark>2</mark>\n- done"
    assert cr.diff_marks(left, left) == left  # nothing differs: nothing marked
    added = cr.diff_marks("a b c d", "a d")
    assert added == "a <mark>b c</mark> d"  # one mark for a run, none for the words both have
    assert (
        cr.diff_marks("x\n\n$$\\frac{1}{2}$$\n", "x\n") == "x\n\n<mark>$$\\frac{1}{2}$$</mark>\n"
    )  # display math whole


def test_tags_hidden_unless_shown_and_bare_boxed_made_math():
    text = "<|begin_of_thought|>\n\nSo \\boxed{3}.\n\n<|end_of_thought|>"
    assert cr.explanation_markdown(text) == "\n\nSo $\\boxed{3}$.\n\n"
    assert cr.explanation_markdown(text, show_tags=True).startswith("`<|begin_of_thought|>`\n\nSo $\\boxed{3}$.")
    assert (
        cr.explanation_markdown(text, "<|begin_of_thought|>So \\boxed{4}.") == "\n\nSo <mark>$\\boxed{3}$</mark>.\n\n"
    )


def test_component_notes_name_what_the_data_holds():
    said = {"rlt.kl_mean": "mean KL over the explanation", "correct_generation.reward": "equal to the reference answer"}
    notes = cr.component_notes(["rlt.kl_mean", "correct_generation.reward", "made_up"], said)
    lines = notes.splitlines()[2:]
    assert [line.split("**")[1] for line in lines] == ["reward", "rlt.kl_mean", "correct_generation.reward", "made_up"]
    assert lines[1].endswith(": mean KL over the explanation") and lines[2].endswith(": equal to the reference answer")
    assert lines[0] == "- **reward**" and lines[3] == "- **made_up**"  # what the metadata does not explain: listed


def test_a_question_is_read_from_the_indexed_columns(tmp_path):
    """One lookup per cell; a missing optional value shows as None; components are listed once per name."""
    rows = trace_rows("rlt", list(range(3)))
    rows[1]["explanation_tokens"] = None
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "a.parquet")
    frame.assign(reward=frame["reward"] + 1).to_parquet(tmp_path / "b.parquet")
    comparison = cd.load_comparison([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    left, right = comparison.question(comparison.position("q001"))["panels"]
    assert (left["reward"], right["reward"]) == pytest.approx((rows[1]["reward"], rows[1]["reward"] + 1))
    assert left["tokens"] is None and left["components"]["kl_mean"] == pytest.approx(0.1)
    assert comparison.components == ["r_ss_mean", "r_ss_min", "kl_mean", "kl_max", "penalty"]  # plain parquet: floats
