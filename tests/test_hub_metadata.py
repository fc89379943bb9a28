"""What the Hub reads besides the files: `.eval_results/` (scores on the model page and the benchmark's
leaderboard), lineage metadata (base_model, datasets, the traces' teacher and Space), and every card's
metadata passing the Hub's `validate-yaml` check, through the unmodified huggingface_hub client against
the loopback Hub (tests/hubserver/cards.py, eval_results.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from publishing import (
    BASE,
    BEFORE_RL_REPO,
    EVAL_REVISION,
    RUN_RECIPE,
    STUDENT_REPO,
    TEACHER_REPO,
    TRACES_REPO,
    base_ref,
    baseline_artifact,
    before_after_artifact,
    make_recipe,
    model_artifact,
    payload_stages,
    report_artifact,
    student_artifact,
    upstream,
    writes,
)

from factory.hub.hub_store import HubStore

SPACE_REPO = "factory-tester/tiny-compare"


def publish_chain(store, tmp_path, model_dir):
    """teacher v1 (SFT) and v2 (RL), traces with before_rl (deploys the Space), student, the before-RL
    baseline student, and the report that scored the student and that baseline."""
    from factory.artifacts import mark_complete, read_meta

    sft = model_artifact(tmp_path / "sft", model_dir, "teacher_sft", {"learning_rate": 1e-5}, [base_ref("teacher")])
    rl = model_artifact(tmp_path / "rl", model_dir, "teacher_rl", {"learning_rate": 1e-6}, [upstream(sft, "teacher")])
    traces = before_after_artifact(tmp_path / "traces", rl, [1.0, 2.0], [0.5, 1.0], {"temperature": 0.7})
    student = student_artifact(tmp_path / "student", model_dir, traces)
    baseline = baseline_artifact(tmp_path / "baseline", model_dir, traces, {"rows": 2, "baseline": "before_rl_traces"})
    report = report_artifact(tmp_path / "report", upstream(student, "student"), accuracy=23.3)
    meta = read_meta(report)
    meta.inputs.append(upstream(baseline, "student_before_rl"))
    mark_complete(report, meta)
    return [store.publish(a) for a in (sft, rl, traces, student, baseline, report)], report


def shown_results(repo: str, revision: str = "main"):
    """The eval results the model page shows (`expand=evalResults`), as the client parses them."""
    from huggingface_hub import HfApi

    return HfApi().model_info(repo, revision=revision, expand=["evalResults"]).eval_results


def card_data(repo: str, repo_type: str = "model", revision: str = "main"):
    from huggingface_hub import DatasetCard, ModelCard, SpaceCard, hf_hub_download

    kind = {"model": ModelCard, "dataset": DatasetCard, "space": SpaceCard}[repo_type]
    return kind.load(hf_hub_download(repo, "README.md", repo_type=repo_type, revision=revision)).data


def test_scores_go_where_the_hub_reads_them(hub_env, tmp_path, tiny_model_dir):
    store = HubStore(make_recipe(space=False), log=lambda _: None)  # the Space: the lineage test below
    refs, report = publish_chain(store, tmp_path, tiny_model_dir)
    assert [(r.repo, r.revision) for r in refs[3:]] == [
        (STUDENT_REPO, "v1"),
        (BEFORE_RL_REPO, "v1"),
        (STUDENT_REPO, "v2"),
    ]
    [student] = shown_results(STUDENT_REPO, "v2")
    assert (student.dataset_id, student.task_id, student.value, student.dataset_revision) == (
        "HuggingFaceH4/aime_2024",
        "default",
        23.3,
        EVAL_REVISION,
    )
    assert (
        student.source_url == refs[-1].url
        and student.date == json.loads((report / "artifact.json").read_text())["created"]
    )
    assert "temperature 0, top_p 1, n 1" in student.notes and "grader math-verify" in student.notes
    assert shown_results(STUDENT_REPO, "v1") is None  # the student before its report has no scores

    # the baseline's scores in its own repo, on main over the version evaluated: no new version
    [baseline] = shown_results(BEFORE_RL_REPO)
    assert (baseline.dataset_id, baseline.value, baseline.source_url) == ("HuggingFaceH4/aime_2024", 20.0, refs[-1].url)
    assert sorted(hub_env.repo(BEFORE_RL_REPO).tags) == ["v1"] and len(hub_env.repo(BEFORE_RL_REPO).commits) == 3
    card = card_data(STUDENT_REPO, revision="v2")
    assert card.eval_results[0].metric_value == 23.3  # the model-index stays beside them
    text = _card_text(STUDENT_REPO, "v2")
    assert "The Hub reads this model's scores from `.eval_results/aime24.yaml`" in text
    assert "Each distilled baseline's scores are in its own repo's `.eval_results/`" in text

    # publishing the report again, from a store with no memory of it, writes nothing anywhere
    since = len(hub_env.requests)
    assert HubStore(make_recipe(space=False), log=lambda _: None).publish(report).created is False
    assert writes(hub_env, since) == []


def _card_text(repo: str, revision: str) -> str:
    from huggingface_hub import ModelCard, hf_hub_download

    return ModelCard.load(hf_hub_download(repo, "README.md", revision=revision)).text


def test_lineage_metadata_links_the_repos_and_every_card_validates(store, hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import HfApi

    publish_chain(store, tmp_path, tiny_model_dir)
    student, teacher = card_data(STUDENT_REPO), card_data(TEACHER_REPO)
    assert (student.base_model, student.base_model_relation, student.datasets) == (BASE, "finetune", [TRACES_REPO])
    assert (teacher.base_model, teacher.base_model_relation) == (BASE, "finetune")
    traces = card_data(TRACES_REPO, "dataset")
    assert traces.teacher == {"repo": TEACHER_REPO, "revision": "v2"} and traces.compare_space == SPACE_REPO
    assert TRACES_REPO in card_data(SPACE_REPO, "space").datasets

    api = HfApi()
    cards = {(t, r): api.hf_hub_download(r, "README.md", repo_type=t) for t, r in hub_env.hub.repos}
    assert len(cards) == 5  # teacher, traces, student, before-RL baseline, Space
    for (repo_type, _), path in cards.items():
        api._validate_yaml(open(path).read(), repo_type=repo_type)  # the client's own validate-yaml call

    # the check can fail: a relation the Hub does not know, a base that is no repo id
    broken = (
        open(cards[("model", STUDENT_REPO)])
        .read()
        .replace("base_model_relation: finetune", "base_model_relation: distilled")
    )
    broken = broken.replace(f"base_model: {BASE}", "base_model: ./a local folder")
    with pytest.raises(ValueError, match="Invalid metadata") as error:
        api._validate_yaml(broken, repo_type="model")
    assert '"base_model_relation" must be one of' in str(error.value) and '"base_model" must be Hub repo ids' in str(
        error.value
    )
    with pytest.raises(ValueError, match='"sdk" must be one of'):
        api._validate_yaml(
            open(cards[("space", SPACE_REPO)]).read().replace("sdk: gradio", "sdk: flask"), repo_type="space"
        )


def test_a_malformed_eval_results_file_is_reported_not_shown(hub_env):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_session

    api, repo = HfApi(), "factory-tester/scores"
    api.create_repo(repo)
    good = b"- dataset: {id: HuggingFaceH4/aime_2024, task_id: default}\n  value: 12.5\n"
    bad = b"- dataset: {id: HuggingFaceH4/aime_2024}\n  value: high\n  protocol: greedy\n"
    api.upload_file(path_or_fileobj=good, path_in_repo=".eval_results/aime.yaml", repo_id=repo)
    api.upload_file(path_or_fileobj=bad, path_in_repo=".eval_results/bad.yaml", repo_id=repo)
    assert [(e.dataset_id, e.value) for e in shown_results(repo)] == [("HuggingFaceH4/aime_2024", 12.5)]
    answer = get_session().get(f"{hub_env.endpoint}/api/models/{repo}", params={"expand": "evalResults"}).json()
    [error] = [e for e in answer["evalResults"] if "error" in e]
    assert error["filename"] == ".eval_results/bad.yaml"
    assert all(m in error["error"] for m in ('"dataset.task_id" is required', '"value" must be a number', '"protocol"'))


def test_a_base_that_is_no_hub_model_is_named_in_the_text_only(hub_env, tmp_path, tiny_model_dir):
    from factory.recipe import Recipe

    recipe = make_recipe().model_dump(mode="json")
    recipe["models"]["teacher"]["source"] = str(tiny_model_dir)
    store = HubStore(Recipe.model_validate(recipe), log=lambda _: None)
    store.publish(model_artifact(tmp_path / "t", tiny_model_dir, "teacher_sft", {}, [base_ref("teacher")]))
    data = card_data(TEACHER_REPO)
    assert data.base_model is None and data.to_dict().get("base_model_relation") is None
    assert "a local folder or a packaged model, not a Hub model id" in _card_text(TEACHER_REPO, "v1")


def test_factory_run_push_writes_eval_results_for_hub_benchmarks(hub_env, tmp_path, tiny_model_dir, monkeypatch):
    """`factory run --push` with a Hub-hosted eval set beside the bundled quickstart one: both get
    `.eval_results/`; the bundled one is published as a dataset of its own, named at the commit evaluated
    (factory.hub.benchmarks), once; every card validates."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi
    from typer.testing import CliRunner

    from factory import cli
    from factory.stages import REGISTRY, load_stages

    api = HfApi()
    api.create_repo("factory-org/bench", repo_type="dataset")
    pq.write_table(pa.table({"question": ["1+1?"], "answer": ["2"]}), tmp_path / "test.parquet")
    api.upload_file(
        path_or_fileobj=str(tmp_path / "test.parquet"),
        path_in_repo="data/test-00000-of-00001.parquet",
        repo_id="factory-org/bench",
        repo_type="dataset",
    )
    load_stages()
    for name, stage in payload_stages(tiny_model_dir).items():
        monkeypatch.setitem(REGISTRY, name, stage)
    recipe = tmp_path / "tiny.yaml"
    bench = "    - {name: bench, source: factory-org/bench}\n"
    recipe.write_text(RUN_RECIPE.replace("MODEL", str(tiny_model_dir)).replace("stages:\n", bench + "stages:\n"))
    args = ["run", str(recipe), "--push", "--set", "hub.namespace=factory-org", "--run-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output

    files = api.list_repo_files("factory-org/tiny-student", revision="v2")
    assert sorted(f for f in files if f.startswith(".eval_results/")) == [
        ".eval_results/bench.yaml",
        ".eval_results/held_out.yaml",
    ]
    entries = {entry.dataset_id: entry for entry in shown_results("factory-org/tiny-student", "v2")}
    assert (entries["factory-org/bench"].task_id, entries["factory-org/bench"].value) == ("default", 50.0)
    held_out = entries["factory-org/tiny-eval-held-out"]  # the bundled task's eval split, published by the run
    [tag] = api.list_repo_refs(held_out.dataset_id, repo_type="dataset").tags
    assert (tag.name, held_out.dataset_revision, held_out.value) == ("v1", tag.target_commit, 50.0)
    questions = api.hf_hub_download(held_out.dataset_id, "data/test-00000-of-00001.parquet", repo_type="dataset")
    from factory.data.loaders import load_rows
    from factory.recipe import load_recipe

    evaluated = load_rows(load_recipe(recipe).data.eval[0])  # the quick-start eval split evaluate scored
    assert pq.read_table(questions).to_pylist() == evaluated
    assert "published with the run (held_out as `factory-org/tiny-eval-held-out`)" in _card_text(
        "factory-org/tiny-student", "v2"
    )
    again = CliRunner().invoke(cli.app, args)  # everything cached: published once, nothing new
    assert again.exit_code == 0, again.output
    assert len(api.list_repo_refs(held_out.dataset_id, repo_type="dataset").tags) == 1
    for repo_type, repo in hub_env.hub.repos:
        if repo != "factory-org/bench":
            api._validate_yaml(
                open(api.hf_hub_download(repo, "README.md", repo_type=repo_type)).read(), repo_type=repo_type
            )


def test_the_local_store_holds_the_same_scores(tmp_path, tiny_model_dir):
    from factory.hub import LocalStore

    local = LocalStore(make_recipe(), tmp_path / "store", log=lambda _: None)
    refs, report = publish_chain(local, tmp_path, tiny_model_dir)
    student, baseline = tmp_path / "store" / "models" / STUDENT_REPO, tmp_path / "store" / "models" / BEFORE_RL_REPO
    assert (student / "v2" / ".eval_results" / "aime24.yaml").is_file()
    assert not (student / "v1" / ".eval_results").exists()
    [entry] = yaml.safe_load((baseline / "main" / ".eval_results" / "aime24.yaml").read_text())
    assert (entry["dataset"]["id"], entry["value"], entry["source"]["url"]) == (
        "HuggingFaceH4/aime_2024",
        20.0,
        refs[-1].url,
    )
    assert not (baseline / "v1" / ".eval_results").exists()  # the tag keeps the version as published
    snapshots = sorted((baseline / "snapshots").iterdir())
    assert local.publish(report).created is False and sorted((baseline / "snapshots").iterdir()) == snapshots


def test_a_lost_answer_to_the_baseline_scores_commit_is_not_committed_twice(hub_env, tmp_path, tiny_model_dir):
    """The Hub commits the baseline's scores but the answer is lost: the retry re-reads main and finds them."""
    hub_env.inject(rf"^POST /api/models/{BEFORE_RL_REPO}/commit/main", "drop_after", nth=2)  # 1st: its v1
    store = HubStore(make_recipe(space=False), log=lambda _: None, backoff_s=0.01)
    publish_chain(store, tmp_path, tiny_model_dir)
    dropped = [r for r in hub_env.requests if r[1].startswith(f"/api/models/{BEFORE_RL_REPO}/commit/")]
    assert [r[2] for r in dropped] == [200, None]  # the scores commit's answer was lost, and not sent again
    assert len(hub_env.repo(BEFORE_RL_REPO).commits) == 3 and [e.value for e in shown_results(BEFORE_RL_REPO)] == [20.0]
