"""Traces before and after RL deploy the compare Space (Hub store) or name the local folders (local store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from publishing import (
    TRACES_REPO,
    before_after_artifact,
    make_recipe,
    teacher_artifact,
    traces_artifact,
)

from factory.hub import open_store
from factory.hub.hub_store import HubStore
from factory.qa import paired_bootstrap

SPACE_REPO = "factory-tester/tiny-compare"


def space_sources() -> list[str]:
    """The sources the compare Space lists now (its sources.json on main)."""
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(SPACE_REPO, "sources.json", repo_type="space")).read_text())["sources"]


def commit_counts(hub) -> dict[str, int]:
    return {kind: len(hub.repo(repo, kind).commits) for repo, kind in ((TRACES_REPO, "dataset"), (SPACE_REPO, "space"))}


def dataset_card_text(revision: str) -> str:
    from huggingface_hub import DatasetCard, hf_hub_download

    return DatasetCard.load(hf_hub_download(TRACES_REPO, "README.md", repo_type="dataset", revision=revision)).text


def test_traces_before_and_after_rl_deploy_the_compare_space(store, hub_env, tmp_path, tiny_model_dir):
    import datasets

    from factory import compare

    teacher = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    traces = before_after_artifact(
        tmp_path / "traces1", teacher, [1.0, 2.0, 3.0], [0.5, 0.5, 2.0], {"temperature": 0.7}
    )
    store.publish(teacher)
    ref = store.publish(traces)
    space_url = f"{hub_env.endpoint}/spaces/{SPACE_REPO}"
    assert (ref.revision, ref.space, ref.to_manifest()["space"]) == ("v1", space_url, space_url)
    assert space_sources() == [f"{TRACES_REPO}@v1", f"{TRACES_REPO}@v1#before_rl"]
    space = hub_env.repo(SPACE_REPO, "space")
    files = set(space.commits[space.branches["main"]].files)
    assert {"app.py", "compare_data.py", "README.md", "sources.json", "requirements.txt"} <= files
    shown = compare.load(space_sources())  # what the Space loads: both configs of v1, aligned by id
    assert shown.labels == ["after RL", "before RL"]  # named by the version's factory.json, not its location
    assert shown.difference(1, 0).tolist() == pytest.approx([0.5, 1.5, 1.0])  # after − before, per question
    assert (
        datasets.load_dataset(TRACES_REPO, "before_rl", revision="v1", split="train")["explanation"]
        == ["before RL"] * 3
    )

    card = dataset_card_text("v1")
    assert "## Before vs after RL" in card
    assert "before RL **1** → after RL **2** (+1; 3 vs 3 traces); all candidates: 0.75 → 1.75." in card
    paired = paired_bootstrap({0: 0.5, 1: 0.5, 2: 2.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (
        f"Paired by question (3 questions with a trace in both): mean difference +1, 95% percentile bootstrap "
        f"interval [{paired['low']:+.4g}, {paired['high']:+.4g}] (10,000 resamples, seed 0)." in card
    )
    assert f"the Space [{SPACE_REPO}]({space_url})" in card
    assert f"`factory compare {TRACES_REPO}@v1 {TRACES_REPO}@v1#before_rl`" in card
    assert f'load_dataset("{TRACES_REPO}", "before_rl", revision="v1")' in card
    assert "| before_rl.reward.selected.mean | 1 |" in card and "| reward_gain_vs_before_rl | 1 |" in card

    # the same version again, from a store with no memory of it: no commit to the dataset nor the Space
    commits = commit_counts(hub_env)
    since = len(hub_env.requests)
    again = HubStore(make_recipe(), log=lambda _: None).publish(traces)
    assert (again.revision, again.created, again.space) == ("v1", False, space_url)
    asked = [r[1] for r in hub_env.requests[since:] if r[1].startswith(f"/api/spaces/{SPACE_REPO}/")]
    assert any("/preupload/" in path for path in asked) and not any("/commit/" in path for path in asked)
    assert commit_counts(hub_env) == commits

    # a new traces version moves the Space to it: one more Space commit
    store.publish(
        before_after_artifact(tmp_path / "traces2", teacher, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], {"temperature": 0.9})
    )
    assert space_sources() == [f"{TRACES_REPO}@v2", f"{TRACES_REPO}@v2#before_rl"]
    assert len(hub_env.repo(SPACE_REPO, "space").commits) == commits["space"] + 1

    # hub.space off, or traces without before_rl: no Space, no link
    off = HubStore(make_recipe(space=False), log=lambda _: None)
    ref3 = off.publish(before_after_artifact(tmp_path / "traces3", teacher, [3.0], [1.0], {"temperature": 1.0}))
    plain = store.publish(traces_artifact(tmp_path / "traces4", ["q1"], {"temperature": 0.5}, teacher))
    assert (ref3.revision, ref3.space, plain.revision, plain.space) == ("v3", None, "v4", None)
    assert space_sources() == [f"{TRACES_REPO}@v2", f"{TRACES_REPO}@v2#before_rl"]
    card3 = dataset_card_text("v3")
    assert "## Before vs after RL" in card3 and "/spaces/" not in card3 and f"{TRACES_REPO}@v3#before_rl" in card3
    assert "## Before vs after RL" not in dataset_card_text("v4")


def test_local_store_card_compares_its_own_folders(tmp_path, tiny_model_dir):
    """Offline, the card names the local version folders for `factory compare`; no Space is deployed."""
    from factory import compare

    teacher = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    traces = before_after_artifact(tmp_path / "traces", teacher, [1.0, 2.0], [0.0, 1.0], {"temperature": 0.7})
    local = open_store(make_recipe(), tmp_path / "runs", push=False, log=lambda _: None)
    ref = local.publish(traces)
    assert ref.space is None and "space" not in ref.to_manifest()
    text = (Path(ref.url) / "README.md").read_text()
    assert f"`factory compare {ref.url} {ref.url}#before_rl`" in text and "/spaces/" not in text
    shown = compare.load([ref.url, f"{ref.url}#before_rl"])
    assert shown.labels == ["after RL", "before RL"]  # the version's factory.json, not its snapshot id
    assert shown.difference(1, 0).tolist() == pytest.approx([1.0, 1.0])
