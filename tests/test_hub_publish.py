"""Publishing to the loopback Hub through the unmodified huggingface_hub and datasets clients.

Artifacts are built in the real artifact format (a tiny saved model under model/, parquet under
data/, artifact.json written by mark_complete) and published with the Hub store; every check reads
back through the public clients: load_dataset, snapshot_download + from_pretrained, ModelCard and
DatasetCard, list_repo_refs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from factory.artifacts import ArtifactMeta, InputRef, mark_complete
from factory.errors import UserError
from factory.hub import LocalStore, open_store
from factory.hub.hub_store import HubStore
from factory.qa import paired_bootstrap
from factory.recipe import Recipe, recipe_to_dict

ROOT = Path(__file__).resolve().parent.parent
BASE = "Qwen/Qwen2.5-7B-Instruct"
RECIPE = {
    "name": "tiny",
    "hub": {"namespace": "factory-tester", "license": "apache-2.0"},
    "models": {"teacher": {"source": BASE}, "student": {"source": BASE}, "distill_base": {"source": BASE}},
    "data": {
        "train": {"source": "bespokelabs/Bespoke-Stratos-17k", "format": "stratos"},
        "eval": [{"name": "aime24", "source": "HuggingFaceH4/aime_2024", "split": "train"}],
    },
}
TEACHER_REPO, TRACES_REPO, STUDENT_REPO = "factory-tester/tiny-teacher", "factory-tester/tiny-traces", "factory-tester/tiny-student"
WRITES = ("/commit/", "/tag/", "/preupload/", "/lfs")


def make_recipe(**hub) -> Recipe:
    return Recipe.model_validate({**RECIPE, "hub": {**RECIPE["hub"], **hub}})


def png() -> bytes:
    """A valid 1x1 PNG: plots are real image files on the cards."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def finish(folder: Path, kind: str, stage: str, role: str, config: dict, inputs: list[InputRef], metrics: dict) -> Path:
    fingerprint = hashlib.sha256(json.dumps([stage, config, [i.fingerprint for i in inputs]]).encode()).hexdigest()
    meta = ArtifactMeta(kind, stage, role, fingerprint, "tiny", config, inputs, metrics)
    mark_complete(folder, meta)
    return folder


def upstream(folder: Path, role: str) -> InputRef:
    meta = json.loads((folder / "artifact.json").read_text())
    return InputRef(role=role, fingerprint=meta["fingerprint"], path=str(folder))


def base_ref(role: str) -> InputRef:
    return InputRef(role=role, fingerprint="base-" + role, source=BASE, revision="a" * 40)


def model_artifact(folder: Path, model_dir: Path, stage: str, config: dict, inputs: list[InputRef]) -> Path:
    shutil.copytree(model_dir, folder / "model")
    (folder / "loss_curve.png").write_bytes(png())
    (folder / "loss_curve.csv").write_text("step,loss\n1,2.5\n2,1.25\n")
    role = "teacher" if stage.startswith("teacher") else "student"
    return finish(folder, "model", stage, role, config, inputs, {"train_loss": 1.25, "steps": 2})


def traces_artifact(folder: Path, questions: list[str], config: dict, teacher: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rewards = [0.5 + i for i in range(len(questions))]
    rows = {"question": questions, "solution": ["\\boxed{1}"] * len(questions), "explanation": ["because"] * len(questions), "reward": rewards}
    (folder / "data" / "candidates").mkdir(parents=True)
    pq.write_table(pa.table(rows), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({k: v * 2 for k, v in rows.items()}), folder / "data" / "candidates" / "train-00000-of-00001.parquet")
    (folder / "reward_hist.png").write_bytes(png())
    metrics = {"reward_mean": sum(rewards) / len(rewards), "reward_max": max(rewards), "closed_tag_rate": 1.0, "rows": len(questions)}
    return finish(folder, "dataset", "generate", "traces", config, [upstream(teacher, "teacher"), base_ref("reward_student")], metrics)


def report_artifact(folder: Path, student: InputRef, accuracy: float) -> Path:
    folder.mkdir(parents=True)
    metrics = {
        "aime24": {"accuracy": accuracy, "mean_length": 812.0},
        "overall": accuracy,
        "baselines": {"before_rl_traces": {"aime24": 20.0, "overall": 20.0}},
    }
    (folder / "report.json").write_text(json.dumps(metrics))
    (folder / "accuracy.png").write_bytes(png())
    return finish(folder, "report", "evaluate", "report", {"temperature": 0.0}, [student], metrics)


@pytest.fixture
def store(hub_env):
    """The Hub store against the loopback Hub, with short backoff so fault tests stay fast."""
    logs: list[str] = []
    hub = HubStore(make_recipe(), log=logs.append, backoff_s=0.01)
    hub.logs = logs
    return hub


def writes(server, since: int) -> list[tuple]:
    return [r for r in server.requests[since:] if any(w in r[1] for w in WRITES)]


def assert_token_absent(token: str, text: str, *folders: Path) -> None:
    """The token appears in no output and no file: run files, stores, caches, everything the Hub stored."""
    assert token not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert token.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------ versions


def test_publish_is_versioned_idempotent_and_revisions_load(store, hub_env, tmp_path, tiny_model_dir):
    import datasets

    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
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
    assert {r: len(hub_env.repo(r, t).commits) for r, t in ((TEACHER_REPO, "model"), (TRACES_REPO, "dataset"))} == commits

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

    first = model_artifact(tmp_path / "a", tiny_model_dir, "teacher_sft", {"learning_rate": 1e-5}, [base_ref("teacher")])
    assert store.publish(first).revision == "v1"
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        for p in changed.parameters():
            p.add_(1.0)
    changed.save_pretrained(other)
    assert store.publish(model_artifact(tmp_path / "b", other, "teacher_sft", {"learning_rate": 2e-5}, [base_ref("teacher")])).revision == "v2"

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

    sft = model_artifact(tmp_path / "sft", tiny_model_dir, "teacher_sft", {"learning_rate": 1e-5}, [base_ref("teacher")])
    rl = model_artifact(tmp_path / "rl", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [upstream(sft, "teacher"), base_ref("reward_student")])
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7, "n": 2}, rl)
    student = model_artifact(tmp_path / "student", tiny_model_dir, "distill", {"epochs": 3}, [upstream(traces, "traces"), base_ref("distill_base")])
    report = report_artifact(tmp_path / "report", upstream(student, "student"), accuracy=23.3)
    refs = [store.publish(a) for a in (sft, rl, traces, student, report)]
    assert [(r.repo, r.revision) for r in refs] == [
        (TEACHER_REPO, "v1"), (TEACHER_REPO, "v2"), (TRACES_REPO, "v1"), (STUDENT_REPO, "v1"), (STUDENT_REPO, "v2"),
    ]  # fmt: skip

    card = ModelCard.load(hf_hub_download(STUDENT_REPO, "README.md", revision="v2"))
    assert card.data.base_model == BASE
    assert card.data.datasets == [TRACES_REPO]
    assert card.data.license == "apache-2.0" and "rlt" in card.data.tags
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert (result.dataset_name, result.dataset_type, result.dataset_split, result.metric_value) == (
        "aime24", "HuggingFaceH4/aime_2024", "train", 23.3,
    )  # fmt: skip
    assert "| model | aime24 (accuracy) | overall |" in card.text
    assert "| **this model** | 23.3 | 23.3 |" in card.text
    assert "| before_rl_traces: distilled with the same settings on the traces of the teacher before RL | 20 | 20 |" in card.text
    chain = [f"[{TEACHER_REPO}@v1](", f"[{TEACHER_REPO}@v2](", f"[{TRACES_REPO}@v1](", f"[{STUDENT_REPO}@v1](", f"**{STUDENT_REPO}@v2**"]
    positions = [card.text.index(link) for link in chain]
    assert positions == sorted(positions)
    assert f"{hub_env.endpoint}/datasets/{TRACES_REPO}/tree/v1" in card.text
    assert 'from_pretrained("factory-tester/tiny-student", revision="v2")' in card.text
    assert "![loss curve](plots/loss_curve.png)" in card.text and "![accuracy](eval/accuracy.png)" in card.text
    api = HfApi()
    files_v1 = set(api.list_repo_files(STUDENT_REPO, revision="v1"))
    files_v2 = set(api.list_repo_files(STUDENT_REPO, revision="v2"))
    assert files_v2 - files_v1 == {"eval/report.json", "eval/accuracy.png"}
    weights = {rev: api.get_paths_info(STUDENT_REPO, ["model.safetensors"], revision=rev)[0].lfs.sha256 for rev in ("v1", "v2")}
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
    validations = [r for r in hub_env.requests if r[1] == "/api/validate-yaml"]
    assert len(validations) == 5 and {r[2] for r in validations} == {200}


def test_report_needs_the_student_it_evaluated_on_main(store, hub_env, tmp_path, tiny_model_dir):
    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    traces = traces_artifact(tmp_path / "traces", ["q1"], {"temperature": 0.7}, teacher)  # its teacher stays unpublished
    first = model_artifact(tmp_path / "s1", tiny_model_dir, "distill", {"epochs": 1}, [upstream(traces, "traces")])
    second = model_artifact(tmp_path / "s2", tiny_model_dir, "distill", {"epochs": 2}, [upstream(traces, "traces")])
    for artifact in (traces, first, second):
        store.publish(artifact)
    lineage = json.loads(hub_env.hub.read_blob(hub_env.repo(TRACES_REPO, "dataset").resolve("v1").files["factory.json"].sha256))["lineage"]
    assert lineage == [{"role": "teacher", "stage": "teacher_rl", "fingerprint": lineage[0]["fingerprint"], "repo": None}]
    with pytest.raises(UserError, match="no longer holds factory-tester/tiny-student@v1"):
        store.publish(report_artifact(tmp_path / "report", upstream(first, "student"), accuracy=10.0))
    assert sorted(hub_env.repo(STUDENT_REPO).tags) == ["v1", "v2"]
    base_only = report_artifact(tmp_path / "report-base", base_ref("student"), accuracy=5.0)  # evaluated a base model
    assert store.publish(base_only) is None


# -------------------------------------------------------------------------------------- faults


def test_publish_interrupted_before_its_tag_is_completed_by_the_rerun(store, hub_env, tmp_path, tiny_model_dir, capfd):
    artifact = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    hub_env.inject(r"^POST /api/models/[^ ]+/tag/", "error", times=100, status=503)
    with pytest.raises(UserError, match="no incomplete version was tagged"):
        store.publish(artifact)
    repo = hub_env.repo(TEACHER_REPO)
    assert repo.tags == {} and len(repo.commits) == 2
    assert len([r for r in hub_env.requests if "/tag/" in r[1]]) == store.retries + 1

    hub_env.clear_faults()
    ref = store.publish(artifact)
    assert (ref.revision, ref.created, ref.commit) == ("v1", True, repo.branches["main"])
    assert len(repo.commits) == 2 and repo.tags == {"v1": repo.branches["main"]}
    assert {"model.safetensors", "config.json", "README.md", "factory.json", "plots/loss_curve.png"} <= set(repo.commits[ref.commit].files)
    assert store.publish(artifact).created is False
    captured = capfd.readouterr()
    assert_token_absent(hub_env.token, captured.out + captured.err + "\n".join(store.logs), tmp_path)


def test_lost_commit_answer_is_tagged_not_committed_twice(hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    store = HubStore(make_recipe(private=True), log=lambda _: None, backoff_s=0.01)
    artifact = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    hub_env.inject(r"^POST /api/models/[^ ]+/commit/main", "drop_after")
    ref = store.publish(artifact)
    repo = hub_env.repo(TEACHER_REPO)
    assert (ref.revision, ref.created, repo.private) == ("v1", True, True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(TEACHER_REPO, token=False)
    assert len(repo.commits) == 2 and repo.tags == {"v1": repo.branches["main"]}
    assert [r[2] for r in hub_env.requests if "/commit/" in r[1]] == [None]  # applied once, answer lost, not resent


def test_transient_errors_are_retried_with_backoff(store, hub_env, tmp_path, tiny_model_dir):
    artifact = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    hub_env.inject(r"^POST /api/repos/create", "error", status=502)
    hub_env.inject(r"^GET /api/models/[^ ]+/refs", "drop", nth=1)
    hub_env.inject(r"^POST /api/models/[^ ]+/tag/", "error", status=500)
    ref = store.publish(artifact)
    assert (ref.revision, ref.created) == ("v1", True)
    assert [r[2] for r in hub_env.requests if r[1] == "/api/repos/create"] == [502, 200]
    assert [r[2] for r in hub_env.requests if r[1].endswith("/refs")][:2] == [None, 200]
    assert len([m for m in store.logs if "retrying" in m]) == 3
    assert len(hub_env.repo(TEACHER_REPO).commits) == 2


# --------------------------------------------------------------------------------------- token


def test_missing_rejected_or_read_only_token_fails_before_any_upload(hub_env, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="needs a Hugging Face token"):
        open_store(make_recipe(), tmp_path, push=True)
    assert hub_env.requests == []

    wrong = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(UserError, match="token from HF_TOKEN was rejected") as rejected:
        open_store(make_recipe(), tmp_path, push=True)
    assert wrong not in str(rejected.value) and hub_env.requests == [("GET", "/api/whoami-v2", 401)]

    monkeypatch.setenv("HF_TOKEN", hub_env.read_token)
    with pytest.raises(UserError, match="read-only"):
        open_store(make_recipe(), tmp_path, push=True)
    monkeypatch.setenv("HF_TOKEN", hub_env.token)
    with pytest.raises(UserError, match="hub.namespace 'somebody-else'"):
        open_store(make_recipe(namespace="somebody-else"), tmp_path, push=True)
    assert [r for r in hub_env.requests if r[1] != "/api/whoami-v2"] == []


# --------------------------------------------------------------------------------- local store


def test_local_store_holds_what_the_hub_holds(store, hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import HfApi

    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7}, teacher)
    local = open_store(make_recipe(), tmp_path / "runs", push=False, log=lambda _: None)
    assert isinstance(local, LocalStore)
    local_refs = [local.publish(teacher), local.publish(traces)]
    hub_refs = [store.publish(teacher), store.publish(traces)]
    assert [(r.repo, r.revision, r.store) for r in local_refs] == [(TEACHER_REPO, "v1", "local"), (TRACES_REPO, "v1", "local")]
    api = HfApi()
    for local_ref, hub_ref in zip(local_refs, hub_refs):
        folder = Path(local_ref.url)
        assert folder == tmp_path / "runs" / "tiny" / "store" / f"{local_ref.repo_type}s" / local_ref.repo / "v1"
        local_files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        hub_files = set(api.list_repo_files(hub_ref.repo, repo_type=hub_ref.repo_type, revision="v1")) - {".gitattributes"}
        assert local_files == hub_files
        record = json.loads((folder / "factory.json").read_text())
        assert record["fingerprint"] == json.loads(Path(api.hf_hub_download(hub_ref.repo, "factory.json", repo_type=hub_ref.repo_type, revision="v1")).read_text())["fingerprint"]
    lineage = json.loads((Path(local_refs[1].url) / "factory.json").read_text())["lineage"]
    assert [(e["repo"], e["revision"], e["url"]) for e in lineage] == [(TEACHER_REPO, "v1", local_refs[0].url)]

    assert local.publish(traces).created is False
    changed = traces_artifact(tmp_path / "traces2", ["q3"], {"temperature": 0.9}, teacher)
    assert local.publish(changed).revision == "v2"
    v1 = Path(local_refs[1].url)
    assert json.loads((v1 / "factory.json").read_text())["config"] == {"temperature": 0.7}
    assert (v1.parent / "main").resolve() == (v1.parent / "v2").resolve() != v1.resolve()


# ---------------------------------------------------------------------------------------- push


def test_factory_push_publishes_a_finished_run_to_hf_endpoint(hub_env, tmp_path, tiny_model_dir):
    recipe_dir = tmp_path / "runs" / "tiny"
    artifacts = recipe_dir / "artifacts"
    teacher = model_artifact(artifacts / "teacher_rl-1", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    traces = traces_artifact(artifacts / "generate-1", ["q1", "q2"], {"temperature": 0.7}, teacher)
    student = model_artifact(artifacts / "distill-1", tiny_model_dir, "distill", {"epochs": 3}, [upstream(traces, "traces")])
    report = report_artifact(artifacts / "evaluate-1", upstream(student, "student"), accuracy=50.0)
    local = LocalStore(make_recipe(namespace=None), recipe_dir / "store", log=lambda _: None)
    stages = {}
    for name, folder in (("teacher_rl", teacher), ("generate", traces), ("distill", student), ("evaluate", report)):
        ref = local.publish(folder)
        meta = json.loads((folder / "artifact.json").read_text())
        stages[name] = {
            "fingerprint": meta["fingerprint"], "status": "complete", "artifact_dir": str(folder.relative_to(recipe_dir)),
            "published": ref.to_manifest(),
        }  # fmt: skip
    manifest = {"recipe_name": "tiny", "recipe": recipe_to_dict(make_recipe(namespace=None)), "stages": stages}
    (recipe_dir / "manifest.json").write_text(json.dumps(manifest))

    command = [sys.executable, "-m", "factory.cli", "push", str(tmp_path / "runs"), "--set", "hub.namespace=factory-org"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "COLUMNS": "400"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    published = json.loads((recipe_dir / "manifest.json").read_text())["stages"]
    assert {s: (e["published"]["repo"], e["published"]["revision"], e["published"]["store"]) for s, e in published.items()} == {
        "teacher_rl": ("factory-org/tiny-teacher", "v1", "hub"),
        "generate": ("factory-org/tiny-traces", "v1", "hub"),
        "distill": ("factory-org/tiny-student", "v1", "hub"),
        "evaluate": ("factory-org/tiny-student", "v2", "hub"),
    }
    assert published["generate"]["published"]["url"] == f"{hub_env.endpoint}/datasets/factory-org/tiny-traces/tree/v1"
    record = json.loads(hub_env.hub.read_blob(hub_env.repo("factory-org/tiny-student").resolve("v2").files["factory.json"].sha256))
    assert [(e["repo"], e["revision"]) for e in record["lineage"]] == [
        ("factory-org/tiny-teacher", "v1"), ("factory-org/tiny-traces", "v1"), ("factory-org/tiny-student", "v1"),
    ]  # fmt: skip

    since = len(hub_env.requests)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already published") == 4 and writes(hub_env, since) == []

    env["HF_TOKEN"] = "hf_" + "y" * 30
    rejected = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert rejected.returncode == 2 and "was rejected" in rejected.stderr and "Traceback" not in rejected.stderr
    outputs = "".join(p.stdout + p.stderr for p in (first, second, rejected))
    assert_token_absent(hub_env.token, outputs, tmp_path)


# ------------------------------------------------------------------------------------- run --push


RUN_RECIPE = """\
name: tiny
models:
  teacher: {source: MODEL}
  student: {source: MODEL}
  distill_base: {source: MODEL}
data:
  train: {source: quickstart, format: quickstart}
  eval:
    - {name: held_out, source: quickstart, format: quickstart, split: eval}
stages:
  teacher_rl: {enabled: false}
"""


def payload_stages(model_dir: Path) -> dict:
    """Stages that write each kind's real payload (model/, data/*.parquet, report.json) without training."""
    from factory.roles import Role
    from factory.stages.base import Stage, StageResult

    def write(name: str, ctx) -> dict:
        if name in ("teacher_sft", "distill"):
            shutil.copytree(model_dir, ctx.out_dir / "model", dirs_exist_ok=True)
            (ctx.out_dir / "loss_curve.png").write_bytes(png())
            return {"train_loss": 1.0}
        if name == "generate":
            import pyarrow as pa
            import pyarrow.parquet as pq

            (ctx.out_dir / "data").mkdir(exist_ok=True)
            pq.write_table(pa.table({"question": ["q1", "q2"], "reward": [0.5, 1.5]}), ctx.out_dir / "data" / "train-00000-of-00001.parquet")
            return {"reward": {"selected": {"mean": 1.0}}}
        metrics = {"held_out": {"accuracy": 50.0}, "overall": 50.0}
        (ctx.out_dir / "report.json").write_text(json.dumps(metrics))
        return metrics

    roles = {
        "teacher_sft": ((Role.TEACHER, Role.TRAIN_DATA), Role.TEACHER),
        "generate": ((Role.TEACHER, Role.REWARD_STUDENT, Role.TRAIN_DATA), Role.TRACES),
        "distill": ((Role.TRACES, Role.DISTILL_BASE), Role.STUDENT),
        "evaluate": ((Role.STUDENT, Role.DISTILL_BASE, Role.TRAIN_DATA), Role.REPORT),
    }
    stages = {}
    for stage_name, (inputs, output) in roles.items():

        class PayloadStage(Stage):
            name, consumes, produces, sections = stage_name, inputs, output, (f"stages.{stage_name}",)

            def run(self, ctx):
                return StageResult(metrics=write(self.name, ctx), summary="payload written")

        stages[stage_name] = PayloadStage()
    return stages


def test_factory_run_push_publishes_to_hf_endpoint_namespace(hub_env, tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from factory import cli
    from factory.stages import REGISTRY, load_stages

    load_stages()
    for name, stage in payload_stages(tiny_model_dir).items():
        monkeypatch.setitem(REGISTRY, name, stage)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RUN_RECIPE.replace("MODEL", str(tiny_model_dir)))
    args = ["run", str(recipe), "--push", "--set", "hub.namespace=factory-org", "--run-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output

    tags = {repo: sorted(hub_env.repo(f"factory-org/tiny-{repo}", t).tags) for repo, t in (("teacher", "model"), ("traces", "dataset"), ("student", "model"))}
    assert tags == {"teacher": ["v1"], "traces": ["v1"], "student": ["v1", "v2"]}
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    published = {stage: (e["published"]["repo"], e["published"]["revision"]) for stage, e in manifest["stages"].items()}
    assert published == {
        "teacher_sft": ("factory-org/tiny-teacher", "v1"), "generate": ("factory-org/tiny-traces", "v1"),
        "distill": ("factory-org/tiny-student", "v1"), "evaluate": ("factory-org/tiny-student", "v2"),
    }  # fmt: skip
    since = len(hub_env.requests)
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0, again.output
    assert writes(hub_env, since) == []
    assert_token_absent(hub_env.token, result.output + again.output, tmp_path)


# ------------------------------------------------------------------------------ compare Space


SPACE_REPO = "factory-tester/tiny-compare"


def before_after_artifact(folder: Path, teacher: Path, after: list[float], before: list[float], config: dict) -> Path:
    """A traces artifact with configs default (after RL) and before_rl, and generate's before/after metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def rows(rewards: list[float], text: str) -> pa.Table:
        ids = [f"q{i}" for i in range(len(rewards))]
        return pa.table({"id": ids, "question": [f"question {i}" for i in ids], "solution": ["\\boxed{1}"] * len(ids),
                         "explanation": [text] * len(ids), "reward": rewards})  # fmt: skip

    (folder / "data" / "before_rl").mkdir(parents=True)
    pq.write_table(rows(after, "after RL"), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(rows(before, "before RL"), folder / "data" / "before_rl" / "train-00000-of-00001.parquet")
    (folder / "reward_before_after_rl.png").write_bytes(png())

    def figures(rewards: list[float]) -> dict:
        mean = sum(rewards) / len(rewards)
        reward = {"candidates": {"mean": mean - 0.25}, "selected": {"mean": mean}}
        return {"rows": len(rewards), "qa": {"closed_rate": 1.0}, "reward": reward}

    gain = (sum(after) - sum(before)) / len(after)
    metrics = {**figures(after), "before_rl": figures(before), "reward_gain_vs_before_rl": gain}
    metrics["reward_gain_vs_before_rl_paired"] = paired_bootstrap(dict(enumerate(before)), dict(enumerate(after)))
    inputs = [upstream(teacher, "teacher"), base_ref("initial_teacher"), base_ref("reward_student")]
    return finish(folder, "dataset", "generate", "traces", config, inputs, metrics)


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

    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    traces = before_after_artifact(tmp_path / "traces1", teacher, [1.0, 2.0, 3.0], [0.5, 0.5, 2.0], {"temperature": 0.7})
    store.publish(teacher)
    ref = store.publish(traces)
    space_url = f"{hub_env.endpoint}/spaces/{SPACE_REPO}"
    assert (ref.revision, ref.space, ref.to_manifest()["space"]) == ("v1", space_url, space_url)
    assert space_sources() == [f"{TRACES_REPO}@v1", f"{TRACES_REPO}@v1#before_rl"]
    space = hub_env.repo(SPACE_REPO, "space")
    files = set(space.commits[space.branches["main"]].files)
    assert {"app.py", "compare_data.py", "README.md", "sources.json", "requirements.txt"} <= files
    shown = compare.load(space_sources())  # what the Space loads: both configs of v1, aligned by id
    assert shown.labels == ["tiny-traces@v1", "tiny-traces@v1#before_rl"]
    assert shown.difference(1, 0).tolist() == pytest.approx([0.5, 1.5, 1.0])  # after − before, per question
    assert datasets.load_dataset(TRACES_REPO, "before_rl", revision="v1", split="train")["explanation"] == ["before RL"] * 3

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
    store.publish(before_after_artifact(tmp_path / "traces2", teacher, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], {"temperature": 0.9}))
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

    teacher = model_artifact(tmp_path / "teacher", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])
    traces = before_after_artifact(tmp_path / "traces", teacher, [1.0, 2.0], [0.0, 1.0], {"temperature": 0.7})
    local = open_store(make_recipe(), tmp_path / "runs", push=False, log=lambda _: None)
    ref = local.publish(traces)
    assert ref.space is None and "space" not in ref.to_manifest()
    text = (Path(ref.url) / "README.md").read_text()
    assert f"`factory compare {ref.url} {ref.url}#before_rl`" in text and "/spaces/" not in text
    shown = compare.load([ref.url, f"{ref.url}#before_rl"])
    assert shown.labels == ["tiny-traces@v1", "tiny-traces@v1#before_rl"]  # the version, not its snapshot id
    assert shown.difference(1, 0).tolist() == pytest.approx([1.0, 1.0])
