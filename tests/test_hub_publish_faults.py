"""Publishing through faults and bad tokens: an interrupted publish completes on rerun, a lost answer is
not committed twice, transient errors are retried, and a missing or weak token fails before any upload.
"""

from __future__ import annotations

import pytest
from publishing import TEACHER_REPO, assert_token_absent, make_recipe, teacher_artifact

from factory.errors import UserError
from factory.hub import open_store
from factory.hub.hub_store import HubStore

# -------------------------------------------------------------------------------------- faults


def test_publish_interrupted_before_its_tag_is_completed_by_the_rerun(store, hub_env, tmp_path, tiny_model_dir, capfd):
    artifact = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
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
    assert {"model.safetensors", "config.json", "README.md", "factory.json", "plots/loss_curve.png"} <= set(
        repo.commits[ref.commit].files
    )
    assert store.publish(artifact).created is False
    captured = capfd.readouterr()
    assert_token_absent(hub_env.token, captured.out + captured.err + "\n".join(store.logs), tmp_path)


def test_lost_commit_answer_is_tagged_not_committed_twice(hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    store = HubStore(make_recipe(private=True), log=lambda _: None, backoff_s=0.01)
    artifact = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    hub_env.inject(r"^POST /api/models/[^ ]+/commit/main", "drop_after")
    ref = store.publish(artifact)
    repo = hub_env.repo(TEACHER_REPO)
    assert (ref.revision, ref.created, repo.private) == ("v1", True, True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(TEACHER_REPO, token=False)
    assert len(repo.commits) == 2 and repo.tags == {"v1": repo.branches["main"]}
    assert [r[2] for r in hub_env.requests if "/commit/" in r[1]] == [None]  # applied once, answer lost, not resent


def test_transient_errors_are_retried_with_backoff(store, hub_env, tmp_path, tiny_model_dir):
    artifact = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
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
