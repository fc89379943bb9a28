"""Publishing to the loopback Hub through the unmodified huggingface_hub and datasets clients: versions and cards.

Artifacts are built in the real artifact format (tests/publishing.py) and published with the Hub store;
every check reads back through the public clients: load_dataset, snapshot_download + from_pretrained,
ModelCard and DatasetCard, list_repo_refs. Faults and tokens: test_hub_publish_faults.py; the local store
and the CLI: test_hub_publish_cli.py; the compare Space: test_hub_publish_space.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from publishing import (
    BASE,
    STUDENT_REPO,
    TEACHER_REPO,
    TRACES_REPO,
    base_ref,
    make_recipe,
    model_artifact,
    report_artifact,
    reward_notes,
    student_artifact,
    teacher_artifact,
    traces_artifact,
    upstream,
    writes,
)

from factory.errors import UserError
from factory.hub.hub_store import HubStore

# ------------------------------------------------------------------------------------ versions


def test_publish_is_versioned_idempotent_and_revisions_load(store, hub_env, tmp_path, tiny_model_dir):
    import datasets

    teacher = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    traces_v1 = traces_artifact(tmp_path / "traces1", ["q1", "q2", "q3"], {"temperature": 0.7, "n": 2}, teacher)

    ref = store.publish(teacher)
    assert (ref.repo, ref.revision, ref.created, ref.repo_type) == (TEACHER_REPO, "v1", True, "model")
    ref1 = store.publish(traces_v1)
    assert (ref1.repo, ref1.revision, ref1.created, ref1.repo_type) == (TRACES_REPO, "v1", True, "dataset")
    assert ref1.url == f"{hub_env.endpoint}/datasets/{TRACES_REPO}/tree/v1"
    commits = {r: len(hub_env.repo(r, t).commits) for r, t in ((TEACHER_REPO, "model"), (TRACES_REPO, "dataset"))}
    assert commits == {TEACHER_REPO: 2, TRACES_REPO: 2}  # the Hub's initial commit + one publish each

    since = len(hub_env.requests)
    fresh = HubStore(make_recipe(), log=lambda _: None)  # no memory of the first publish: the repo is asked
    again = [fresh.publish(teacher), fresh.publish(traces_v1)]
    assert [(r.revision, r.commit, r.created) for r in again] == [("v1", ref.commit, False), ("v1", ref1.commit, False)]
    assert writes(hub_env, since) == []
    assert {
        r: len(hub_env.repo(r, t).commits) for r, t in ((TEACHER_REPO, "model"), (TRACES_REPO, "dataset"))
    } == commits

    traces_v2 = traces_artifact(tmp_path / "traces2", ["q4", "q5"], {"temperature": 0.9, "n": 2}, teacher)
    ref2 = store.publish(traces_v2)
    assert (ref2.revision, ref2.created) == ("v2", True)
    assert sorted(hub_env.repo(TRACES_REPO, "dataset").tags) == ["v1", "v2"]

    cache = str(tmp_path / "datasets-cache")
    at_v1 = datasets.load_dataset(TRACES_REPO, revision="v1", cache_dir=cache)
    at_main = datasets.load_dataset(TRACES_REPO, cache_dir=cache)
    assert at_v1["train"]["question"] == ["q1", "q2", "q3"]
    assert at_v1["train"]["reward"] == [0.5, 1.5, 2.5]
    assert at_main["train"]["question"] == ["q4", "q5"]
    candidates = datasets.load_dataset(TRACES_REPO, "candidates", revision="v1", cache_dir=cache)
    assert candidates["train"].num_rows == 6


def test_model_revision_loads_with_from_pretrained(store, tmp_path, tiny_model_dir):
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = model_artifact(
        tmp_path / "a", tiny_model_dir, "teacher_sft", {"learning_rate": 1e-5}, [base_ref("teacher")]
    )
    assert store.publish(first).revision == "v1"
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        for p in changed.parameters():
            p.add_(1.0)
    changed.save_pretrained(other)
    assert (
        store.publish(
            model_artifact(tmp_path / "b", other, "teacher_sft", {"learning_rate": 2e-5}, [base_ref("teacher")])
        ).revision
        == "v2"
    )

    folder = snapshot_download(TEACHER_REPO, revision="v1")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    for (name, p), q in zip(reference.named_parameters(), loaded.parameters()):
        assert torch.equal(p, q), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(tokenizer("The answer is 42.")["input_ids"]) == "The answer is 42."
    assert json.loads((Path(folder) / "factory.json").read_text())["config"] == {"learning_rate": 1e-5}


# --------------------------------------------------------------------------------------- cards


def test_cards_load_with_hub_classes_and_carry_lineage(store, hub_env, tmp_path, tiny_model_dir):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, HfApi, ModelCard, hf_hub_download

    sft = model_artifact(
        tmp_path / "sft", tiny_model_dir, "teacher_sft", {"learning_rate": 1e-5}, [base_ref("teacher")]
    )
    rl = model_artifact(
        tmp_path / "rl",
        tiny_model_dir,
        "teacher_rl",
        {"learning_rate": 1e-6},
        [upstream(sft, "teacher"), base_ref("reward_student")],
    )
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7, "n": 2}, rl)
    student = student_artifact(tmp_path / "student", tiny_model_dir, traces)
    report = report_artifact(tmp_path / "report", upstream(student, "student"), accuracy=23.3)
    refs = [store.publish(a) for a in (sft, rl, traces, student, report)]
    assert [(r.repo, r.revision) for r in refs] == [
        (TEACHER_REPO, "v1"),
        (TEACHER_REPO, "v2"),
        (TRACES_REPO, "v1"),
        (STUDENT_REPO, "v1"),
        (STUDENT_REPO, "v2"),
    ]

    card = ModelCard.load(hf_hub_download(STUDENT_REPO, "README.md", revision="v2"))
    assert card.data.base_model == BASE
    assert card.data.datasets == [TRACES_REPO]
    assert card.data.license == "apache-2.0" and "rlt" in card.data.tags
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert (result.dataset_name, result.dataset_type, result.dataset_split, result.metric_value) == (
        "aime24",
        "HuggingFaceH4/aime_2024",
        "train",
        23.3,
    )
    assert "| model | aime24 (accuracy) | overall |" in card.text
    assert "| **this model** | 23.3 | 23.3 |" in card.text
    assert (
        "| before_rl_traces: distilled with the same settings on the traces of the teacher before RL | 20 | 20 |"
        in card.text
    )
    chain = [
        f"[{TEACHER_REPO}@v1](",
        f"[{TEACHER_REPO}@v2](",
        f"[{TRACES_REPO}@v1](",
        f"[{STUDENT_REPO}@v1](",
        f"**{STUDENT_REPO}@v2**",
    ]
    positions = [card.text.index(link) for link in chain]
    assert positions == sorted(positions)
    assert f"{hub_env.endpoint}/datasets/{TRACES_REPO}/tree/v1" in card.text
    assert 'from_pretrained("factory-tester/tiny-student", revision="v2")' in card.text
    assert "![loss curve](plots/loss_curve.png)" in card.text and "![accuracy](eval/accuracy.png)" in card.text
    api = HfApi()
    files_v1 = set(api.list_repo_files(STUDENT_REPO, revision="v1"))
    files_v2 = set(api.list_repo_files(STUDENT_REPO, revision="v2"))
    assert files_v2 - files_v1 == {"eval/report.json", "eval/accuracy.png", ".eval_results/aime24.yaml"}
    weights = {
        rev: api.get_paths_info(STUDENT_REPO, ["model.safetensors"], revision=rev)[0].lfs.sha256 for rev in ("v1", "v2")
    }
    assert weights["v1"] == weights["v2"]
    assert ModelCard.load(hf_hub_download(STUDENT_REPO, "README.md", revision="v1")).data.eval_results is None

    teacher_card = ModelCard.load(hf_hub_download(TEACHER_REPO, "README.md", revision="v2"))
    assert teacher_card.data.datasets == ["bespokelabs/Bespoke-Stratos-17k"]
    assert teacher_card.text.index(f"[{TEACHER_REPO}@v1](") < teacher_card.text.index(f"**{TEACHER_REPO}@v2**")

    dcard = DatasetCard.load(hf_hub_download(TRACES_REPO, "README.md", repo_type="dataset", revision="v1"))
    configs = MetadataConfigs.from_dataset_card_data(dcard.data)
    assert sorted(configs) == ["candidates", "default"]
    infos = DatasetInfosDict.from_dataset_card_data(dcard.data)
    assert (infos["default"].splits["train"].num_examples, infos["candidates"].splits["train"].num_examples) == (2, 4)
    assert list(infos["default"].features) == ["question", "solution", "explanation", "reward"]
    assert dcard.data.license == "apache-2.0" and dcard.data.size_categories == ["n<1K"]
    assert f'load_dataset("{TRACES_REPO}", revision="v1")' in dcard.text
    assert f'load_dataset("{TRACES_REPO}", "candidates", revision="v1")' in dcard.text
    assert f"Teacher: [{TEACHER_REPO}@v2]({hub_env.endpoint}/{TEACHER_REPO}/tree/v2)" in dcard.text
    assert "| reward_mean | 1 |" in dcard.text and "| temperature | 0.7 |" in dcard.text
    assert f"| default | reward | float64 | {reward_notes()['reward']} |" in dcard.text  # the reward says what it is
    assert "| default | question | string |  |" in dcard.text
    validations = [r for r in hub_env.requests if r[1] == "/api/validate-yaml"]
    assert len(validations) == 5 and {r[2] for r in validations} == {200}


def test_report_needs_the_student_it_evaluated_on_main(store, hub_env, tmp_path, tiny_model_dir):
    teacher = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    traces = traces_artifact(
        tmp_path / "traces", ["q1"], {"temperature": 0.7}, teacher
    )  # its teacher stays unpublished
    first = model_artifact(tmp_path / "s1", tiny_model_dir, "distill", {"epochs": 1}, [upstream(traces, "traces")])
    second = model_artifact(tmp_path / "s2", tiny_model_dir, "distill", {"epochs": 2}, [upstream(traces, "traces")])
    for artifact in (traces, first, second):
        store.publish(artifact)
    lineage = json.loads(
        hub_env.hub.read_blob(hub_env.repo(TRACES_REPO, "dataset").resolve("v1").files["factory.json"].sha256)
    )["lineage"]
    assert lineage == [
        {"role": "teacher", "stage": "teacher_rl", "fingerprint": lineage[0]["fingerprint"], "repo": None}
    ]
    with pytest.raises(UserError, match="no longer holds factory-tester/tiny-student@v1"):
        store.publish(report_artifact(tmp_path / "report", upstream(first, "student"), accuracy=10.0))
    assert sorted(hub_env.repo(STUDENT_REPO).tags) == ["v1", "v2"]
    base_only = report_artifact(tmp_path / "report-base", base_ref("student"), accuracy=5.0)  # evaluated a base model
    assert store.publish(base_only) is None
