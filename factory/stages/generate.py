"""The generate stage (RLT.md, pipeline step 3): the teacher's explanations for every training question,
scored with the RLT reward, checked, and written as the traces dataset.

Flow: load the questions (`stages.generate.limit` first rows of `data.train`) and drop those sharing
an n-gram with an eval set; generate `n` explanations per question with vLLM or transformers
(factory.engines), prompt = the teacher format with the solution prefilled, stop at the closing
explanation tag or end of turn; score each with the RLT reward (teacher = the generating model,
student = `models.student`); check; keep the best-rewarded passing candidate per question.

Scale and resumption: the work is done in chunks written as parquet parts under `work/`
(see generate_worker). `factory run` does whatever is left (vLLM: one worker process per group of
`launch.tensor_parallel_size` GPUs; transformers: in process) and then merges; a scheduler can
spread the work first with `factory generate-shard RECIPE --shard i/n` on many nodes (shard
count default `stages.generate.shards`), after which `factory run` only merges. Shard count and
index, batch size, engine memory share are not in the fingerprint: they change how the work is
spread, not what is sampled (sampling is seeded per question id).

Output (the traces schema, DESIGN.md): `data/train-*.parquet` (config `default`, one row per
question) and `data/candidates/train-*.parquet` (config `candidates`, every candidate), histograms
of reward and explanation length (PNG + CSV), and every QA figure in the artifact metrics.

Columns (`_features` holds the exact types):

    id                   str    stable per question (hash of its text, factory.data)
    question, solution   str    from the training set
    explanation          str    the teacher's text before the closing tag (decoded explanation ids)
    prompt, completion   list of {role, content}: the student format (system + user / assistant),
                                conversational prompt-completion rows for TRL's SFTTrainer
    reward, r_ss_mean, r_ss_min, kl_mean, kl_max, penalty   float   the RLT reward and its parts
    closed               bool   the explanation closed its tag
    explanation_tokens   int    explanation ids scored; completion_tokens: all generated ids
    solution_tokens      int    solution ids the student was scored on
    finish_reason        str    "stop" (tag or end of turn) | "length" (hit max_new_tokens)
    candidate_index      int    0..n-1
    teacher              str    repo@revision of a base teacher, stage@fingerprint of an artifact
    temperature, top_p, seed    the sampling settings (each question samples with a seed derived
                                from `seed` and its id, engines.base.prompt_seed)
    answer_leaked        bool   QA flag: the explanation states the answer as a boxed result
    reward_truncated     bool   QA flag: the reward cut the explanation to fit reward.max_length
    selected, drop_reason       candidates config only: kept for `default`; why dropped ("" = passed)

- hard checks (rows dropped, counted): question contaminated by an eval set; empty explanation;
  explanation never closed (`drop_unclosed`); answer stated as a boxed result (`drop_leaked`);
  a question with no passing candidate is dropped;
- figures: closed rate, truncation rate (hit `max_new_tokens`), answer leak and mention rates,
  explanation length distribution, reward statistics of all and of the selected candidates.

Before vs after RL (`stages.generate.before_rl`): when the teacher was trained by RL in this recipe
(the `initial_teacher` input, what teacher_rl started from, differs from `teacher`), a second pass
generates with the initial teacher on the same questions with the same settings and per-question
seeds, scored with the same reward student and checked the same way, in its own work folder
(`work/before_rl/`, resumable likewise), and writes config `before_rl` (`data/before_rl/`, the
`default` schema; its `teacher` column names the initial teacher). Its figures go under the
`before_rl` metrics key (same structure as the main pass's `qa` and `reward`), with
`reward_gain_vs_before_rl` = selected reward mean after RL minus before, and
`reward_before_after_rl.png` (+ CSV) overlays the two passes' reward histograms.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from factory.errors import UserError
from factory.hub.content import BEFORE_RL
from factory.stages.base import (
    Problem,
    Stage,
    StageContext,
    StageResult,
    eval_set_problems,
    recipe_slice,
    register,
    vllm_problems,
)

if TYPE_CHECKING:
    from factory.pipeline import Plan
    from factory.recipe import Recipe
    from factory.stages.base import ResolvedInput
    from factory.stages.generate_worker import Job, Questions

# What determines the traces; throughput knobs (batch_size, shards, gpu_memory_utilization) are left out.
CONFIG_PATHS = (
    "stages.generate.engine",
    "stages.generate.n",
    "stages.generate.temperature",
    "stages.generate.top_p",
    "stages.generate.max_new_tokens",
    "stages.generate.seed",
    "stages.generate.limit",
    "stages.generate.decontaminate_ngram",
    "stages.generate.drop_unclosed",
    "stages.generate.drop_leaked",
    "stages.generate.before_rl",
    "formats.teacher_system",
    "formats.student_system",
    "reward.kl_coef",
    "reward.alpha",
    "reward.kl_estimator",
    "reward.teacher_temperature",
    "reward.student_temperature",
    "reward.missing_tag_penalty",
    "reward.max_length",
    "data.eval",
)
SPLIT = "train"
ROWS_PER_FILE = 50_000
MAIN_WORK = "work"  # the main pass's work folder; the initial teacher's is work/before_rl/


@register
class GenerateStage(Stage):
    name = "generate"
    consumes = ("teacher", "initial_teacher", "reward_student", "train_data")
    version = 1

    def config(self, recipe: "Recipe") -> dict[str, Any]:
        return recipe_slice(recipe, *CONFIG_PATHS)

    def check(self, recipe: "Recipe") -> list[Problem]:
        """The eval sets (read to decontaminate), the engine; sampling settings that disagree with the reward or RL."""
        settings, rl, reward = recipe.stages.generate, recipe.stages.teacher_rl, recipe.reward
        problems = eval_set_problems(recipe) + vllm_problems(settings.engine == "vllm", "stages.generate.engine")
        if settings.temperature != reward.teacher_temperature:
            message = (
                f"{settings.temperature} differs from reward.teacher_temperature = {reward.teacher_temperature}: the "
                "reward that ranks the candidates takes the teacher's log-probabilities at another temperature "
                "than the one they were sampled at"
            )
            problems.append(Problem("stages.generate.temperature", message, warning=True))
        if rl.enabled and settings.max_new_tokens > rl.max_completion_length:
            message = (
                f"{settings.max_new_tokens} is more than the RL teacher learned to explain in "
                f"(stages.teacher_rl.max_completion_length = {rl.max_completion_length})"
            )
            problems.append(Problem("stages.generate.max_new_tokens", message, warning=True))
        return problems

    def estimate(self, recipe: "Recipe") -> dict[str, float]:
        """Upper bound: every candidate runs to max_new_tokens; scoring = one forward of both models;
        twice with the before-RL pass."""
        from factory.models import estimate_parameters

        settings = recipe.stages.generate
        limits = [x for x in (settings.limit, recipe.data.train.limit) if x is not None]
        if not limits:
            return {}
        passes = 2 if settings.before_rl and recipe.stages.teacher_rl.enabled else 1
        tokens = passes * min(limits) * settings.n * settings.max_new_tokens
        teacher, student = estimate_parameters(recipe.models.teacher), estimate_parameters(recipe.models.student)
        if teacher is None or student is None:
            return {"tokens": float(tokens)}
        return {"tokens": float(tokens), "flops": float(2 * teacher * tokens + 2 * (teacher + student) * tokens)}

    def run(self, ctx: StageContext) -> StageResult:
        from factory.engines.base import gpu_groups, resolve_kind
        from factory.stages.generate_worker import WorkDir, checked_tokenizers, load_questions, run_job

        recipe = ctx.recipe
        kind = resolve_kind(recipe.stages.generate.engine, "stages.generate.engine")
        questions = load_questions(recipe, log=ctx.log)
        groups = gpu_groups(recipe.launch.tensor_parallel_size) if kind == "vllm" else [[]]
        student = ctx.inputs["reward_student"]
        passes = teacher_passes(ctx.inputs, recipe, ctx.log)
        for teacher, work in passes:
            job = _job_fields(teacher, student, ctx.out_dir, kind, recipe, work)
            if len(groups) > 1:
                checked_tokenizers(teacher.model_source(), student.model_source())
                _run_groups(groups, job, WorkDir(ctx.out_dir, work), ctx.log)
                run_job(_job(job, shards=[], num_shards=len(groups), score_all=True), ctx.log, questions)
            else:
                run_job(_job(job, shards=[0], num_shards=1, score_all=True), ctx.log, questions)
        result, after = merge(recipe, questions, ctx.out_dir, teacher_label(ctx.inputs["teacher"]))
        if len(passes) > 1:
            merge_before_rl(recipe, questions, ctx.out_dir, teacher_label(passes[1][0]), after, result, ctx.log)
        result.metrics["engine"] = kind  # "auto" in the recipe: what this machine resolved it to
        return result


def teacher_passes(
    inputs: dict[str, "ResolvedInput"], recipe: "Recipe", log: Callable[[str], None]
) -> list[tuple["ResolvedInput", str]]:
    """(teacher, work folder) of each generation pass: the teacher's, then the initial teacher's when
    `before_rl` is on and RL changed the teacher in this recipe."""
    teacher, passes = inputs["teacher"], [(inputs["teacher"], MAIN_WORK)]
    if recipe.stages.generate.before_rl:
        initial = inputs["initial_teacher"]
        if initial.fingerprint == teacher.fingerprint:
            log("generate: stages.generate.before_rl: no teacher_rl stage changed the teacher here; no before_rl config")
        else:
            passes.append((initial, f"{MAIN_WORK}/{BEFORE_RL}"))
    return passes


# ------------------------------------------------------------------------------------ workers


def _job_fields(
    teacher: "ResolvedInput", student: "ResolvedInput", out_dir: Path, kind: str, recipe: "Recipe", work: str
) -> dict[str, Any]:
    from factory.stages.generate_worker import source_json

    return {
        "recipe": recipe.model_dump(mode="json", exclude_unset=True),  # keeps which keys the user set
        "teacher": source_json(teacher.model_source()),
        "student": source_json(student.model_source()),
        "out_dir": str(out_dir),
        "engine": kind,
        "work": work,
    }


def _job(fields: dict[str, Any], **more: Any) -> "Job":
    from factory.stages.generate_worker import Job

    return Job(**fields, **more)


def _run_groups(groups: list[list[int]], fields: dict[str, Any], work: Any, log: Callable[[str], None]) -> None:
    """Data parallelism: one worker process (one vLLM engine) per GPU group, shard g of G each."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else None
    processes = []
    for group, devices in enumerate(groups):
        job_file = _job(fields, shards=[group], num_shards=len(groups)).save(work.root / "jobs" / f"group{group}.json")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(names[d] if names else str(d) for d in devices)}
        log(f"generate: worker {group} on GPUs {env['CUDA_VISIBLE_DEVICES']}")
        command = [sys.executable, "-m", "factory.stages.generate_worker", str(job_file)]
        processes.append(subprocess.Popen(command, env=env))
    codes = [process.wait() for process in processes]
    failed = {group: code for group, code in enumerate(codes) if code != 0}
    if failed:
        raise RuntimeError(
            f"generate workers failed (group: exit code) {failed}; finished chunks are kept, run again to resume"
        )


def teacher_label(item: "ResolvedInput") -> str:
    """The `teacher` column: repo@resolved revision of a base model, stage@fingerprint of an artifact."""
    if item.artifact_dir is not None or item.model is None:
        return item.describe()
    return f"{item.model.source}@{item.resolved_revision or item.model.revision or 'unresolved'}"


# ------------------------------------------------------------------------------------ shard CLI


def run_shard(plan: "Plan", shard: str, log: Callable[[str], None] = print) -> str:
    """`factory generate-shard`: generate and score one shard (of each pass) into the stage's artifact folder.

    The stage is not completed here; `factory run` completes it (finishing anything left, then
    merging). `shard` is "i" (of `stages.generate.shards`) or "i/n".
    """
    from factory.artifacts import is_complete
    from factory.engines.base import resolve_kind
    from factory.stages.generate_worker import load_questions, run_job

    index, count = _parse_shard(shard, plan.recipe.stages.generate.shards)
    planned = plan.stage("generate")
    if planned.status == "cached":
        return f"generate is complete already ({planned.artifact_dir}); nothing to do"
    if not planned.will_run:
        raise UserError(f"generate is {planned.status}: {planned.reason}")
    for item in planned.inputs.values():
        if item.artifact_dir is not None and not is_complete(item.artifact_dir):
            raise UserError(
                f"generate needs the {item.role!r} artifact {item.artifact_dir.name}, which is not complete; "
                "run the upstream stages first (factory run RECIPE --only STAGE)"
            )
    planned.artifact_dir.mkdir(parents=True, exist_ok=True)
    kind = resolve_kind(plan.recipe.stages.generate.engine, "stages.generate.engine")
    questions = load_questions(plan.recipe, log=log)
    for teacher, work in teacher_passes(planned.inputs, plan.recipe, log):
        fields = _job_fields(teacher, planned.inputs["reward_student"], planned.artifact_dir, kind, plan.recipe, work)
        run_job(_job(fields, shards=[index], num_shards=count), log=log, questions=questions)
    return f"generate shard {index}/{count} done in {planned.artifact_dir}; `factory run` merges when all shards are done"


def _parse_shard(shard: str, default_count: int) -> tuple[int, int]:
    text, _, count_text = shard.partition("/")
    try:
        index, count = int(text), int(count_text) if count_text else default_count
    except ValueError:
        raise UserError(f"--shard {shard!r}: write I or I/N, e.g. --shard 3/8") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {shard!r}: the index must be in 0..{count - 1} (stages.generate.shards = {default_count})")
    return index, count


# ------------------------------------------------------------------------------------ merge


def _features(candidates: bool):
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    columns = {
        "id": Value("string"),
        "question": Value("string"),
        "solution": Value("string"),
        "explanation": Value("string"),
        "prompt": List(message),
        "completion": List(message),
        **{name: Value("float64") for name in ("reward", "r_ss_mean", "r_ss_min", "kl_mean", "kl_max", "penalty")},
        "closed": Value("bool"),
        "explanation_tokens": Value("int64"),
        "completion_tokens": Value("int64"),
        "solution_tokens": Value("int64"),
        "finish_reason": Value("string"),
        "candidate_index": Value("int64"),
        "teacher": Value("string"),
        "temperature": Value("float64"),
        "top_p": Value("float64"),
        "seed": Value("int64"),
        "answer_leaked": Value("bool"),
        "reward_truncated": Value("bool"),
    }
    if candidates:
        columns.update(selected=Value("bool"), drop_reason=Value("string"))
    return Features(columns)


def _drop_reason(candidate: dict[str, Any], settings: Any) -> str:
    if not candidate["explanation"].strip():
        return "empty"
    if settings.drop_unclosed and not candidate["closed"]:
        return "unclosed"
    if settings.drop_leaked and candidate["answer_leaked"]:
        return "leaked"
    return ""


def _read_candidates(work: Any, kept: set[str]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Scored rows grouped by question id (only the questions still kept); duplicates removed."""
    import pyarrow.parquet as pq

    from factory.stages.generate_worker import SCORED

    grouped: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    for part in work.parts(SCORED):
        for row in pq.read_table(part).to_pylist():
            key = (row["id"], row["candidate_index"])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if row["id"] in kept:
                grouped.setdefault(row["id"], []).append(row)
    return grouped, duplicates


@dataclass
class Selection:
    """One pass's candidates after the checks, and the one kept per question."""

    candidates: list[dict[str, Any]]
    selected: list[dict[str, Any]]
    reasons: Counter  # drop reason ("" = passed) -> candidates
    mentioned: int  # candidates that mention the final answer
    no_passing: int  # questions without a passing candidate
    duplicates: int
    gains: list[float]  # per selected question: its reward minus the mean of its n candidates


def select(recipe: "Recipe", questions: "Questions", work: Any, teacher: str) -> Selection:
    """Check every scored candidate of one pass (its `WorkDir`) and keep the best passing one per question."""
    from factory.formats import student_messages
    from factory.qa import answer_leaked, answer_mentioned, final_answer

    settings = recipe.stages.generate
    work.remove_temporaries()
    kept = questions.kept
    grouped, duplicates = _read_candidates(work, {row["id"] for row in kept})
    missing = [row["id"] for row in kept if len(grouped.get(row["id"], [])) < settings.n]
    if missing:
        raise RuntimeError(
            f"{len(missing)} questions lack scored candidates in {work.root} after the workers ran (e.g. {missing[:3]})"
        )

    sampling = {"teacher": teacher, "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}
    chosen = Selection([], [], Counter(), 0, 0, duplicates, [])
    for question in kept:
        answer = final_answer(question["solution"], question.get("answer"))
        candidates = sorted(grouped[question["id"]], key=lambda c: c["candidate_index"])
        for candidate in candidates:
            messages = student_messages(
                question["question"], candidate["explanation"], question["solution"], recipe.formats.student_system
            )
            candidate.update(
                question=question["question"], solution=question["solution"], prompt=messages[:2],
                completion=messages[2:], answer_leaked=answer_leaked(candidate["explanation"], answer), **sampling,
            )  # fmt: skip
            candidate["drop_reason"] = _drop_reason(candidate, settings)
            candidate["selected"] = False
            chosen.reasons[candidate["drop_reason"]] += 1
            chosen.mentioned += answer_mentioned(candidate["explanation"], answer)
        passing = [c for c in candidates if not c["drop_reason"]]
        if passing:
            best = max(passing, key=lambda c: (c["reward"], -c["candidate_index"]))
            best["selected"] = True
            chosen.selected.append(best)
            chosen.gains.append(best["reward"] - sum(c["reward"] for c in candidates) / len(candidates))
        else:
            chosen.no_passing += 1
        chosen.candidates.extend(candidates)
    return chosen


def merge(recipe: "Recipe", questions: "Questions", out_dir: Path, teacher: str) -> tuple[StageResult, Selection]:
    """The main pass: check, select one per question, write both configs, plots and figures."""
    from factory.stages.generate_worker import WorkDir

    settings = recipe.stages.generate
    chosen = select(recipe, questions, WorkDir(out_dir, MAIN_WORK), teacher)
    if not chosen.selected:
        dropped = ", ".join(f"{count} {reason}" for reason, count in sorted(chosen.reasons.items()) if reason)
        raise UserError(
            f"generate: no explanation of {len(chosen.candidates)} candidates passed the checks ({dropped}); "
            "raise stages.generate.max_new_tokens, or relax stages.generate.drop_unclosed / drop_leaked"
        )
    _write_configs(out_dir, "data", {"": (chosen.selected, False), "candidates": (chosen.candidates, True)})
    files = {"data": "data", "candidates": "data/candidates", **_plots(out_dir, chosen.candidates, chosen.selected)}
    metrics = _figures(questions, chosen, settings.n)
    qa = metrics["qa"]
    summary = (
        f"{len(chosen.selected)} traces from {len(questions.rows)} questions (n={settings.n}): closed {qa['closed_rate']:.0%}, "
        f"truncated {qa['truncation_rate']:.0%}, leaked {qa['answer_leak_rate']:.0%}, "
        f"{qa['contaminated_questions']} contaminated, {chosen.no_passing} without a passing candidate; "
        f"selected reward mean {metrics['reward']['selected']['mean']:.3f}"
    )
    return StageResult(metrics=metrics, files=files, summary=summary), chosen


def merge_before_rl(
    recipe: "Recipe", questions: "Questions", out_dir: Path, teacher: str, after: Selection, result: StageResult,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """The initial teacher's pass: config `before_rl`, its figures and the before/after comparison, into `result`."""
    from factory.stages.generate_worker import WorkDir

    before = select(recipe, questions, WorkDir(out_dir, f"{MAIN_WORK}/{BEFORE_RL}"), teacher)
    figures = _figures(questions, before, recipe.stages.generate.n)
    for shared in ("questions", "candidates_per_question"):  # properties of the questions, not of the teacher
        figures.pop(shared)
    for shared in ("contaminated_questions", "contaminated_by_eval_set"):
        figures["qa"].pop(shared)
    result.metrics[BEFORE_RL] = figures
    result.files.update(_comparison_plot(out_dir, before.candidates, after.candidates))
    if not before.selected:
        log(f"generate: before_rl: no explanation of the initial teacher ({teacher}) passed the checks; no before_rl config")
        result.summary += f"; before RL: no passing explanation of {len(before.candidates)}"
        return
    _write_configs(out_dir, f"data/{BEFORE_RL}", {"": (before.selected, False)})
    result.files[BEFORE_RL] = f"data/{BEFORE_RL}"
    mean_after, mean_before = result.metrics["reward"]["selected"]["mean"], figures["reward"]["selected"]["mean"]
    result.metrics["reward_gain_vs_before_rl"] = mean_after - mean_before
    result.summary += f"; before RL ({teacher}) {mean_before:.3f} -> after {mean_after:.3f}"


def _write_configs(out_dir: Path, dest: str, configs: dict[str, tuple[list[dict[str, Any]], bool]]) -> None:
    """Write each config (sub-folder of `dest` -> rows, with the candidate flags) aside, then swap `dest` in whole."""
    import shutil

    from datasets import Dataset

    staging = out_dir / f"{Path(dest).name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for sub, (rows, with_flags) in configs.items():
        folder = staging / sub
        features = _features(with_flags)
        dataset = Dataset.from_list([{name: row[name] for name in features} for row in rows], features=features)
        shards = max(1, math.ceil(len(dataset) / ROWS_PER_FILE))
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(shards):
            part = dataset.shard(shards, index, contiguous=True)
            part.to_parquet(str(folder / f"{SPLIT}-{index:05d}-of-{shards:05d}.parquet"))
    final = out_dir / dest
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def _plots(out_dir: Path, candidates: list[dict[str, Any]], selected: list[dict[str, Any]]) -> dict[str, str]:
    from factory.qa import histogram

    files = {}
    for key, label in (("reward", "RLT reward"), ("explanation_tokens", "explanation length (tokens)")):
        name = f"{key}_hist"
        histogram(
            out_dir / f"{name}.png", out_dir / f"{name}.csv",
            {"all candidates": [c[key] for c in candidates], "selected": [c[key] for c in selected]},
            xlabel=label, title=f"Traces: {label}",
        )  # fmt: skip
        files[name] = f"{name}.png"
        files[f"{name}_csv"] = f"{name}.csv"
    return files


def _comparison_plot(out_dir: Path, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, str]:
    """Reward histograms of every candidate of both passes: same questions, same seeds, teacher before vs after RL."""
    from factory.qa import histogram

    name = "reward_before_after_rl"
    histogram(
        out_dir / f"{name}.png", out_dir / f"{name}.csv",
        {"before RL": [c["reward"] for c in before], "after RL": [c["reward"] for c in after]},
        xlabel="RLT reward (all candidates)", title="Teacher before vs after RL, same questions",
    )  # fmt: skip
    return {name: f"{name}.png", f"{name}_csv": f"{name}.csv"}


def _rate(count: int, total: int) -> float:
    return count / total if total else 0.0


def _figures(questions: "Questions", chosen: Selection, n: int) -> dict[str, Any]:
    from factory.qa import summary

    candidates, selected, reasons = chosen.candidates, chosen.selected, chosen.reasons
    total = len(candidates)
    by_set = Counter(name for names in questions.contaminated.values() for name in names)
    reward_all, reward_selected = summary([c["reward"] for c in candidates]), summary([c["reward"] for c in selected])
    return {
        "rows": len(selected),
        "questions": len(questions.rows),
        "candidates_per_question": n,
        "qa": {
            "candidates": total,
            "closed_rate": _rate(sum(c["closed"] for c in candidates), total),
            "truncation_rate": _rate(sum(c["finish_reason"] == "length" for c in candidates), total),
            "answer_leak_rate": _rate(sum(c["answer_leaked"] for c in candidates), total),
            "answer_mention_rate": _rate(chosen.mentioned, total),
            "scoring_cut_rate": _rate(sum(c["reward_truncated"] for c in candidates), total),
            "contaminated_questions": len(questions.contaminated),
            "contaminated_by_eval_set": dict(sorted(by_set.items())),
            "dropped_candidates": {reason: reasons[reason] for reason in ("empty", "unclosed", "leaked")},
            "questions_without_passing_candidate": chosen.no_passing,
            "duplicates_removed": chosen.duplicates,
            "explanation_tokens": summary([c["explanation_tokens"] for c in candidates]),
            "selected_explanation_tokens": summary([c["explanation_tokens"] for c in selected]),
        },
        "reward": {
            "candidates": reward_all,
            "selected": reward_selected,
            # per question: the kept candidate's reward minus the mean of its n candidates
            "best_of_n_gain": summary(chosen.gains)["mean"],
            "selected_components": {
                key: summary([c[key] for c in selected])["mean"] for key in ("r_ss_mean", "r_ss_min", "kl_mean", "kl_max", "penalty")
            },
        },
    }
