"""Publishing from the CLI and the local store: the local store holds what the Hub holds, `factory push`
publishes a finished run, `factory run --push` publishes as it goes; neither writes twice nor shows the token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from publishing import (
    RUN_RECIPE,
    TEACHER_REPO,
    TRACES_REPO,
    assert_token_absent,
    make_recipe,
    model_artifact,
    payload_stages,
    report_artifact,
    teacher_artifact,
    traces_artifact,
    upstream,
    writes,
)

from factory.hub import LocalStore, open_store
from factory.recipe import recipe_to_dict

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------- local store


def test_local_store_holds_what_the_hub_holds(store, hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import HfApi

    teacher = teacher_artifact(tmp_path / "teacher", tiny_model_dir)
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7}, teacher)
    local = open_store(make_recipe(), tmp_path / "runs", push=False, log=lambda _: None)
    assert isinstance(local, LocalStore)
    local_refs = [local.publish(teacher), local.publish(traces)]
    hub_refs = [store.publish(teacher), store.publish(traces)]
    assert [(r.repo, r.revision, r.store) for r in local_refs] == [
        (TEACHER_REPO, "v1", "local"),
        (TRACES_REPO, "v1", "local"),
    ]
    api = HfApi()
    for local_ref, hub_ref in zip(local_refs, hub_refs):
        folder = Path(local_ref.url)
        assert folder == tmp_path / "runs" / "tiny" / "store" / f"{local_ref.repo_type}s" / local_ref.repo / "v1"
        local_files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        hub_files = set(api.list_repo_files(hub_ref.repo, repo_type=hub_ref.repo_type, revision="v1")) - {
            ".gitattributes"
        }
        assert local_files == hub_files
        record = json.loads((folder / "factory.json").read_text())
        assert (
            record["fingerprint"]
            == json.loads(
                Path(
                    api.hf_hub_download(hub_ref.repo, "factory.json", repo_type=hub_ref.repo_type, revision="v1")
                ).read_text()
            )["fingerprint"]
        )
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
    teacher = teacher_artifact(artifacts / "teacher_rl-1", tiny_model_dir)
    traces = traces_artifact(artifacts / "generate-1", ["q1", "q2"], {"temperature": 0.7}, teacher)
    student = model_artifact(
        artifacts / "distill-1", tiny_model_dir, "distill", {"epochs": 3}, [upstream(traces, "traces")]
    )
    report = report_artifact(artifacts / "evaluate-1", upstream(student, "student"), accuracy=50.0)
    local = LocalStore(make_recipe(namespace=None), recipe_dir / "store", log=lambda _: None)
    stages = {}
    for name, folder in (("teacher_rl", teacher), ("generate", traces), ("distill", student), ("evaluate", report)):
        ref = local.publish(folder)
        meta = json.loads((folder / "artifact.json").read_text())
        stages[name] = {
            "fingerprint": meta["fingerprint"],
            "status": "complete",
            "artifact_dir": str(folder.relative_to(recipe_dir)),
            "published": ref.to_manifest(),
        }
    manifest = {"recipe_name": "tiny", "recipe": recipe_to_dict(make_recipe(namespace=None)), "stages": stages}
    (recipe_dir / "manifest.json").write_text(json.dumps(manifest))

    command = [
        sys.executable,
        "-m",
        "factory.cli",
        "push",
        str(tmp_path / "runs"),
        "--set",
        "hub.namespace=factory-org",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "COLUMNS": "400"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    published = json.loads((recipe_dir / "manifest.json").read_text())["stages"]
    assert {
        s: (e["published"]["repo"], e["published"]["revision"], e["published"]["store"]) for s, e in published.items()
    } == {
        "teacher_rl": ("factory-org/tiny-teacher", "v1", "hub"),
        "generate": ("factory-org/tiny-traces", "v1", "hub"),
        "distill": ("factory-org/tiny-student", "v1", "hub"),
        "evaluate": ("factory-org/tiny-student", "v2", "hub"),
    }
    assert published["generate"]["published"]["url"] == f"{hub_env.endpoint}/datasets/factory-org/tiny-traces/tree/v1"
    record = json.loads(
        hub_env.hub.read_blob(hub_env.repo("factory-org/tiny-student").resolve("v2").files["factory.json"].sha256)
    )
    assert [(e["repo"], e["revision"]) for e in record["lineage"]] == [
        ("factory-org/tiny-teacher", "v1"),
        ("factory-org/tiny-traces", "v1"),
        ("factory-org/tiny-student", "v1"),
    ]

    since = len(hub_env.requests)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already published") == 4 and writes(hub_env, since) == []

    env["HF_TOKEN"] = "hf_" + "y" * 30
    rejected = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert rejected.returncode == 2 and "was rejected" in rejected.stderr and "Traceback" not in rejected.stderr
    outputs = "".join(p.stdout + p.stderr for p in (first, second, rejected))
    assert_token_absent(hub_env.token, outputs, tmp_path)


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

    tags = {
        repo: sorted(hub_env.repo(f"factory-org/tiny-{repo}", t).tags)
        for repo, t in (("teacher", "model"), ("traces", "dataset"), ("student", "model"))
    }
    assert tags == {"teacher": ["v1"], "traces": ["v1"], "student": ["v1", "v2"]}
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    published = {stage: (e["published"]["repo"], e["published"]["revision"]) for stage, e in manifest["stages"].items()}
    assert published == {
        "teacher_sft": ("factory-org/tiny-teacher", "v1"),
        "generate": ("factory-org/tiny-traces", "v1"),
        "distill": ("factory-org/tiny-student", "v1"),
        "evaluate": ("factory-org/tiny-student", "v2"),
    }
    since = len(hub_env.requests)
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0, again.output
    assert writes(hub_env, since) == []
    assert_token_absent(hub_env.token, result.output + again.output, tmp_path)
