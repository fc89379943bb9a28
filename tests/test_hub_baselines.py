"""evaluate's distilled baselines on the Hub: each a model repo of its own, `{recipe}-student-before-rl` /
`-student-reference`, its card saying what it is; the student's card (with the report) keeps the student's
lineage; a baseline stage that found nothing to train on is not published."""

from __future__ import annotations

from publishing import (
    BEFORE_RL_REPO,
    STUDENT_REPO,
    baseline_artifact,
    report_artifact,
    student_artifact,
    teacher_artifact,
    traces_artifact,
    upstream,
)


def test_baseline_student_is_a_version_of_its_own_repo(store, hub_env, tmp_path, tiny_model_dir):
    from huggingface_hub import ModelCard, hf_hub_download

    from factory.artifacts import mark_complete, read_meta

    teacher = teacher_artifact(tmp_path / "rl", tiny_model_dir)
    traces = traces_artifact(tmp_path / "traces", ["q1", "q2"], {"temperature": 0.7, "n": 2}, teacher)
    student = student_artifact(tmp_path / "student", tiny_model_dir, traces)
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
