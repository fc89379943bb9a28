"""The loopback Hub speaks the Hub API the way the unmodified clients expect, and injects faults on demand."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def api(hub_env):
    from huggingface_hub import HfApi

    return HfApi()


def test_tags_resolve_historical_content_with_ranges(api, hub_env):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import get_session

    repo = "factory-tester/notes"
    api.create_repo(repo)
    first = api.upload_file(path_or_fileobj=b"first version of the notes", path_in_repo="notes.txt", repo_id=repo)
    api.create_tag(repo, tag="v1", revision=first.oid)
    api.upload_file(path_or_fileobj=b"second", path_in_repo="notes.txt", repo_id=repo)

    assert open(hf_hub_download(repo, "notes.txt", revision="v1")).read() == "first version of the notes"
    assert open(hf_hub_download(repo, "notes.txt")).read() == "second"
    url = f"{hub_env.endpoint}/{repo}/resolve/v1/notes.txt"
    partial = get_session().get(url, headers={"Range": "bytes=6-12"})
    assert (partial.status_code, partial.content, partial.headers["Content-Range"]) == (
        206,
        b"version",
        "bytes 6-12/26",
    )
    assert partial.headers["X-Repo-Commit"] == first.oid
    assert [t.name for t in api.list_repo_refs(repo).tags] == ["v1"]
    with pytest.raises(Exception, match="409"):
        api.create_tag(repo, tag="v1", revision="main")


def test_card_metadata_is_validated_like_the_hub(api):
    repo = "factory-tester/cards"
    api.create_repo(repo)
    bad = (
        "---\nlicense: not-a-license\nmodel-index:\n- name: x\n  results:\n  - task: {}\n    metrics: []\n---\n# card\n"
    )
    with pytest.raises(ValueError, match="Invalid metadata") as error:
        api.upload_file(path_or_fileobj=bad.encode(), path_in_repo="README.md", repo_id=repo)
    assert '"license" must be one of the Hub licenses' in str(error.value)
    assert "task.type" in str(error.value) and "metrics" in str(error.value)
    good = "---\nlicense: mit\nbase_model: Qwen/Qwen2.5-7B-Instruct\n---\n# card\n"
    api.upload_file(path_or_fileobj=good.encode(), path_in_repo="README.md", repo_id=repo)
    assert api.model_info(repo).card_data.license == "mit"


def test_private_repos_and_stale_parents_are_refused(api, hub_env):
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    repo = "factory-org/secret"
    api.create_repo(repo, private=True)
    assert api.model_info(repo).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo, token=False)
    parent = api.model_info(repo).sha
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo)
    with pytest.raises(HfHubHTTPError, match="412"):
        api.create_commit(repo, [CommitOperationAdd("b.txt", b"b")], commit_message="stale", parent_commit=parent)
    assert api.list_repo_files(repo) == [".gitattributes", "a.txt"]


def test_faults_hit_the_nth_matching_request(api, hub_env):
    from huggingface_hub.errors import HfHubHTTPError

    hub_env.inject(r"^GET /api/whoami-v2", "error", nth=2, status=503)
    hub_env.inject(r"^GET /api/whoami-v2", "drop", nth=3)
    assert api.whoami()["name"] == "factory-tester"
    with pytest.raises(HfHubHTTPError) as error:
        api.whoami()
    assert error.value.response.status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        api.whoami()
    assert api.whoami()["name"] == "factory-tester"
    assert [r[2] for r in hub_env.requests] == [200, 503, None, 200]
