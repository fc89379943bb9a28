"""evaluate's distilled baselines on the Hub: each a model repo of its own, `{recipe}-student-before-rl` /
`-student-reference`, its card saying what it is; the student's card (with the report) keeps the student's
lineage; a baseline stage that found nothing to train on is not published."""

from __future__ import annotations

import shutil
from pathlib import Path

from publishing import STUDENT_REPO, base_ref, finish, model_artifact, report_artifact, traces_artifact, upstream

BEFORE_RL_REPO = STUDENT_REPO + "-before-rl"


def baseline_artifact(folder: Path, model_dir: Path | None, traces: Path, metrics: dict) -> Path:
    """What stage distill_before_rl leaves: the student's settings, the traces' before_rl config."""
    folder.mkdir(parents=True)
    if model_dir is not None:
        shutil.copytree(model_dir, folder / "model")
    inputs = [upstream(traces, "traces"), base_ref("distill_base")]
    return finish(folder, "model", "distill_before_rl", "student_before_rl", {"epochs": 3}, inputs, metrics)


def test_baseline_student_is_a_version_of_its_own_repo(store, hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import ModelCard, hf_hub_download

    from factory.artifacts import mark_complete, read_meta

    teacher = model_artifact(
        tmp_path / "rl", tiny_model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")]
    )
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7, "n": 2}, teacher)
    student = model_artifact(
        tmp_path / "student",
        tiny_model_dir,
        "distill",
        {"epochs": 3},
        [upstream(traces, "traces"), base_ref("distill_base")],
    )
    baseline = baseline_artifact(
        tmp_path / "baseline", tiny_model_dir, traces, {"rows": 2, "baseline": "before_rl_traces"}
    )
    report = report_artifact(tmp_path / "report", upstream(student, "student"), accuracy=23.3)
    meta = read_meta(report)  # the report also consumed the baseline's student, by its role
    meta.inputs.append(upstream(baseline, "student_before_rl"))
    mark_complete(report, meta)
    refs = [store.publish(a) for a in (teacher, traces, student, baseline, report)]
    assert [(r.repo, r.revision) for r in refs[2:]] == [
        (STUDENT_REPO, "v1"),
        (BEFORE_RL_REPO, "v1"),
        (STUDENT_REPO, "v2"),
    ]

    card = ModelCard.load(hf_hub_download(BEFORE_RL_REPO, "README.md", revision="v1"))
    assert "a baseline student, not an RLT one" in card.text and "teacher before RL" in card.text
    assert "student-before-rl" in card.data.tags and "distill-before-rl" in card.data.tags
    assert f'from_pretrained("{BEFORE_RL_REPO}", revision="v1")' in card.text
    student_card = ModelCard.load(hf_hub_download(STUDENT_REPO, "README.md", revision="v2")).text
    assert (
        "| before_rl_traces: distilled with the same settings on the traces of the teacher before RL | 20 | 20 |"
        in student_card
    )
    assert BEFORE_RL_REPO not in student_card  # the report's lineage is the student's, not the baseline's

    empty = baseline_artifact(tmp_path / "empty", None, traces, {"skipped": "the traces have no before_rl config"})
    assert store.publish(empty) is None
    assert [v.tag for v in store._versions(store.target("student_before_rl"))] == ["v1"]
