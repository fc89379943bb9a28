"""Artifacts in the real format, and stages that write them without training, for the publishing tests.

A tiny saved model under model/, parquet under data/, artifact.json written by mark_complete: what the
Hub and local stores publish. Shared by tests/test_hub_publish*.py and the full-disk test of
tests/test_bad_inputs_files.py; the `store` fixture (tests/conftest.py) publishes with `make_recipe()`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

from tiny import QUICKSTART_DATA, recipe_head

from factory.artifacts import ArtifactMeta, InputRef, mark_complete
from factory.recipe import Recipe

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
TEACHER_REPO, TRACES_REPO, STUDENT_REPO = (
    "factory-tester/tiny-teacher",
    "factory-tester/tiny-traces",
    "factory-tester/tiny-student",
)
BEFORE_RL_REPO = STUDENT_REPO + "-before-rl"  # the baseline student's own repo
WRITES = ("/commit/", "/tag/", "/preupload/", "/lfs")


def make_recipe(**hub) -> Recipe:
    return Recipe.model_validate({**RECIPE, "hub": {**RECIPE["hub"], **hub}})


def png() -> bytes:
    """A valid 1x1 PNG: plots are real image files on the cards."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def finish(
    folder: Path,
    kind: str,
    stage: str,
    role: str,
    config: dict,
    inputs: list[InputRef],
    metrics: dict,
    columns: dict | None = None,
) -> Path:
    fingerprint = hashlib.sha256(json.dumps([stage, config, [i.fingerprint for i in inputs]]).encode()).hexdigest()
    meta = ArtifactMeta(kind, stage, role, fingerprint, "tiny", config, inputs, metrics, columns=columns or {})
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


def teacher_artifact(folder: Path, model_dir: Path) -> Path:
    """What stage teacher_rl leaves having trained the base teacher (learning rate 1e-6)."""
    return model_artifact(folder, model_dir, "teacher_rl", {"learning_rate": 1e-6}, [base_ref("teacher")])


def traces_artifact(folder: Path, questions: list[str], config: dict, teacher: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rewards = [0.5 + i for i in range(len(questions))]
    rows = {
        "question": questions,
        "solution": ["\\boxed{1}"] * len(questions),
        "explanation": ["because"] * len(questions),
        "reward": rewards,
    }
    (folder / "data" / "candidates").mkdir(parents=True)
    pq.write_table(pa.table(rows), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(
        pa.table({k: v * 2 for k, v in rows.items()}), folder / "data" / "candidates" / "train-00000-of-00001.parquet"
    )
    (folder / "reward_hist.png").write_bytes(png())
    metrics = {
        "reward_mean": sum(rewards) / len(rewards),
        "reward_max": max(rewards),
        "closed_tag_rate": 1.0,
        "rows": len(questions),
    }
    return finish(
        folder,
        "dataset",
        "generate",
        "traces",
        config,
        [upstream(teacher, "teacher"), base_ref("reward_student")],
        metrics,
        reward_notes(),
    )


def reward_notes() -> dict[str, str]:
    """What the default reward's components measure, as generate records them (the artifact's `columns`)."""
    from factory.recipe import Reward
    from factory.rewards.build import notes_of

    return notes_of(Reward())


def distill_inputs(traces: Path) -> list[InputRef]:
    """What a distilled student comes from: the traces, and the distill base it was trained from."""
    return [upstream(traces, "traces"), base_ref("distill_base")]


def student_artifact(folder: Path, model_dir: Path, traces: Path) -> Path:
    """What stage distill leaves: the student, distilled on `traces` for 3 epochs."""
    return model_artifact(folder, model_dir, "distill", {"epochs": 3}, distill_inputs(traces))


def baseline_artifact(folder: Path, model_dir: Path | None, traces: Path, metrics: dict) -> Path:
    """What stage distill_before_rl leaves: the student's settings, the traces' before_rl config; no model/
    where `model_dir` is None (a baseline that found nothing to train on)."""
    folder.mkdir(parents=True)
    if model_dir is not None:
        shutil.copytree(model_dir, folder / "model")
    return finish(
        folder, "model", "distill_before_rl", "student_before_rl", {"epochs": 3}, distill_inputs(traces), metrics
    )


def before_after_artifact(folder: Path, teacher: Path, after: list[float], before: list[float], config: dict) -> Path:
    """A traces artifact with configs default (after RL) and before_rl, and generate's before/after metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def rows(rewards: list[float], text: str) -> pa.Table:
        ids = [f"q{i}" for i in range(len(rewards))]
        return pa.table(
            {
                "id": ids,
                "question": [f"question {i}" for i in ids],
                "solution": ["\\boxed{1}"] * len(ids),
                "explanation": [text] * len(ids),
                "reward": rewards,
            }
        )

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
    from factory.qa import paired_bootstrap

    metrics["reward_gain_vs_before_rl_paired"] = paired_bootstrap(dict(enumerate(before)), dict(enumerate(after)))
    inputs = [upstream(teacher, "teacher"), base_ref("initial_teacher"), base_ref("reward_student")]
    return finish(folder, "dataset", "generate", "traces", config, inputs, metrics)


EVAL_REVISION = "b" * 40  # the aime24 commit the reports below evaluated
PROTOCOL = {  # as factory.stages.evaluate.protocol records it
    "system_prompt": "Your role as an assistant involves thoroughly exploring questions.",
    "temperature": 0.0,
    "top_p": 1.0,
    "n": 1,
    "max_new_tokens": 96,
    "seed": 0,
    "stop": ["end of turn (eos)", "<|end_of_solution|>"],
    "sets": {
        "aime24": {
            "kind": "math",
            "template": "skythought_math",
            "template_text": "Return your final response within \\boxed{{}}. {question}",
            "grader": {"name": "math-verify", "version": "0.8.0", "rule": "the last \\boxed{} of the completion"},
        }
    },
}


def report_artifact(folder: Path, student: InputRef, accuracy: float) -> Path:
    """What evaluate leaves: scores of the student and a baseline, the protocol, the eval set's revision."""
    folder.mkdir(parents=True)
    metrics = {
        "aime24": {"accuracy": accuracy, "mean_length": 812.0},
        "overall": accuracy,
        "baselines": {"before_rl_traces": {"aime24": 20.0, "overall": 20.0}},
        "protocol": PROTOCOL,
    }
    report = {**metrics, "eval_sets": [{"name": "aime24", "resolved_revision": EVAL_REVISION}]}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "accuracy.png").write_bytes(png())
    return finish(folder, "report", "evaluate", "report", {"temperature": 0.0}, [student], metrics)


def writes(server, since: int) -> list[tuple]:
    return [r for r in server.requests[since:] if any(w in r[1] for w in WRITES)]


def assert_token_absent(token: str, text: str, *folders: Path) -> None:
    """The token appears in no output and no file: run files, stores, caches, everything the Hub stored."""
    assert token not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert token.encode() not in path.read_bytes(), path


RUN_RECIPE = recipe_head("tiny", "MODEL") + QUICKSTART_DATA + "stages:\n  teacher_rl: {enabled: false}\n"


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
            pq.write_table(
                pa.table({"question": ["q1", "q2"], "reward": [0.5, 1.5]}),
                ctx.out_dir / "data" / "train-00000-of-00001.parquet",
            )
            return {"reward": {"selected": {"mean": 1.0}}}
        metrics = {s.name: {"accuracy": 50.0} for s in ctx.recipe.data.eval} | {"overall": 50.0}
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
            name, consumes, produces = stage_name, inputs, output
            sections = (f"stages.{stage_name}", *(("data.eval",) if stage_name == "evaluate" else ()))

            def run(self, ctx):
                return StageResult(metrics=write(self.name, ctx), summary="payload written")

        stages[stage_name] = PayloadStage()
    return stages
