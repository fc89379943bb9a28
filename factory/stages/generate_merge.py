"""The generate stage's merge: every scored candidate of a pass checked, the best-rewarded passing one kept
per question, both configs written in the traces schema, histograms and QA figures. Split from
factory.stages.generate, which generates and scores (claims, shards, workers) and calls `merge` last.

Output (the traces schema, DESIGN.md): `data/train-*.parquet` (config `default`, one row per
question) and `data/candidates/train-*.parquet` (config `candidates`, every candidate), histograms
of reward and explanation length (PNG + CSV), and every QA figure in the artifact metrics.

Columns (`_features` holds the exact types):

    id                   str    stable per question (hash of its text, factory.data)
    question, solution   str    from the training set
    explanation          str    the teacher's text before the closing tag (decoded explanation ids)
    prompt, completion   list of {role, content}: the student format (system + user / assistant),
                                conversational prompt-completion rows for TRL's SFTTrainer
    reward, its components   float  the reward in use (rewards.build; RLT: r_ss_mean, r_ss_min, kl_mean, kl_max,
                                penalty; a sum: rlt.kl_mean, ...), each feature marked id "reward_component"
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
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import UserError
from factory.hub.content import BEFORE_RL
from factory.stages.base import StageResult

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.stages.generate_worker import Questions

SPLIT = "train"
ROWS_PER_FILE = 50_000
MAIN_WORK = "work"  # the main pass's work folder; the initial teacher's is work/before_rl/
REWARD_COMPONENT = "reward_component"  # the feature id that marks a reward component column


def _features(candidates: bool, components: tuple[str, ...]):
    """The traces schema; `components` are the reward's (last: "reward"), written reward first."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    columns = {
        "id": Value("string"),
        "question": Value("string"),
        "solution": Value("string"),
        "explanation": Value("string"),
        "prompt": List(message),
        "completion": List(message),
        **{name: Value("float64", id=REWARD_COMPONENT) for name in ("reward", *components[:-1])},
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


def _read_candidates(work: Any, kept: set[str]) -> tuple[dict[str, list[dict[str, Any]]], Counter]:
    """Scored rows grouped by question id (only the questions still kept), each (question, candidate) once:
    the first read, parts in name order; and how many rows each part had that were read already."""
    import pyarrow.parquet as pq

    from factory.stages.generate_worker import SCORED

    grouped: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    discarded: Counter = Counter()
    for part in work.parts(SCORED):
        for row in pq.read_table(part).to_pylist():
            key = (row["id"], row["candidate_index"])
            if key in seen:
                discarded[part.name] += 1
                continue
            seen.add(key)
            if row["id"] in kept:
                grouped.setdefault(row["id"], []).append(row)
    return grouped, discarded


@dataclass
class Selection:
    """One pass's candidates after the checks, and the one kept per question."""

    candidates: list[dict[str, Any]]
    selected: list[dict[str, Any]]
    reasons: Counter  # drop reason ("" = passed) -> candidates
    mentioned: int  # candidates that mention the final answer
    no_passing: int  # questions without a passing candidate
    duplicates: int  # rows discarded: their question and candidate were read from another part already
    gains: list[float]  # per selected question: its reward minus the mean of its n candidates


def select(recipe: Recipe, questions: Questions, work: Any, teacher: str, log: Callable[[str], None]) -> Selection:
    """Check every scored candidate of one pass (its `WorkDir`) and keep the best passing one per question.
    Every kept question has exactly `n` candidates; what was discarded on the way is logged."""
    from factory.data.student import student_format_of
    from factory.formats import student_messages
    from factory.qa import answer_leaked, answer_mentioned, final_answer

    settings = recipe.stages.generate
    torn = work.remove_temporaries()
    if torn:
        log(f"generate: merge of {work.root}: removed {torn} temporary files that killed writers left")
    kept = questions.kept
    grouped, discarded = _read_candidates(work, {row["id"] for row in kept})
    if discarded:
        parts = ", ".join(f"{name} ({count})" for name, count in sorted(discarded.items()))
        log(
            f"generate: merge of {work.root}: discarded {sum(discarded.values())} duplicate rows, candidates another "
            f"part holds already (a question generated twice, e.g. by a run and a shard): {parts}"
        )
    wrong = [row["id"] for row in kept if len(grouped.get(row["id"], [])) != settings.n]
    if wrong:
        raise RuntimeError(
            f"{len(wrong)} questions do not have exactly {settings.n} scored candidates in {work.root} after the "
            f"workers ran (e.g. {wrong[:3]})"
        )

    sampling = {"teacher": teacher, "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}
    fmt = student_format_of(recipe)
    chosen = Selection([], [], Counter(), 0, 0, sum(discarded.values()), [])
    for question in kept:
        answer = final_answer(question["solution"], question.get("answer"))
        candidates = sorted(grouped[question["id"]], key=lambda c: c["candidate_index"])
        for candidate in candidates:
            messages = student_messages(question["question"], candidate["explanation"], question["solution"], fmt)
            candidate.update(
                question=question["question"],
                solution=question["solution"],
                prompt=messages[:2],
                completion=messages[2:],
                answer_leaked=answer_leaked(candidate["explanation"], answer),
                **sampling,
            )
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


def merge(
    recipe: Recipe, questions: Questions, out_dir: Path, teacher: str, log: Callable[[str], None]
) -> tuple[StageResult, Selection]:
    """The main pass: check, select one per question, write both configs, plots and figures."""
    from factory.rewards.build import notes_of
    from factory.stages.generate_worker import WorkDir

    settings = recipe.stages.generate
    chosen = select(recipe, questions, WorkDir(out_dir, MAIN_WORK), teacher, log)
    if not chosen.selected:
        dropped = ", ".join(f"{count} {reason}" for reason, count in sorted(chosen.reasons.items()) if reason)
        raise UserError(
            f"generate: no explanation of {len(chosen.candidates)} candidates passed the checks ({dropped}); "
            "raise stages.generate.max_new_tokens, or relax stages.generate.drop_unclosed / drop_leaked"
        )
    notes = notes_of(recipe.reward)
    components = tuple(notes)
    configs = {"": (chosen.selected, False), "candidates": (chosen.candidates, True)}
    _write_configs(out_dir, "data", configs, components)
    files = {"data": "data", "candidates": "data/candidates", **_plots(out_dir, chosen.candidates, chosen.selected)}
    metrics = _figures(questions, chosen, settings.n, components)
    qa = metrics["qa"]
    summary = (
        f"{len(chosen.selected)} traces from {len(questions.rows)} questions (n={settings.n}): closed {qa['closed_rate']:.0%}, "
        f"truncated {qa['truncation_rate']:.0%}, leaked {qa['answer_leak_rate']:.0%}, "
        f"{qa['contaminated_questions']} contaminated, {chosen.no_passing} without a passing candidate; "
        f"selected reward mean {metrics['reward']['selected']['mean']:.3f}"
    )
    if chosen.duplicates:
        summary += f"; merge discarded {chosen.duplicates} duplicate rows"
    return StageResult(metrics=metrics, files=files, summary=summary, columns=notes), chosen


def merge_before_rl(
    recipe: Recipe,
    questions: Questions,
    out_dir: Path,
    teacher: str,
    after: Selection,
    result: StageResult,
    log: Callable[[str], None],
) -> None:
    """The initial teacher's pass: config `before_rl`, its figures and the before/after comparison, into `result`."""
    from factory.qa import paired_bootstrap
    from factory.rewards.build import components_of
    from factory.stages.generate_worker import WorkDir

    components = components_of(recipe.reward)
    before = select(recipe, questions, WorkDir(out_dir, f"{MAIN_WORK}/{BEFORE_RL}"), teacher, log)
    figures = _figures(questions, before, recipe.stages.generate.n, components)
    for shared in ("questions", "candidates_per_question"):  # properties of the questions, not of the teacher
        figures.pop(shared)
    for shared in ("contaminated_questions", "contaminated_by_eval_set"):
        figures["qa"].pop(shared)
    result.metrics[BEFORE_RL] = figures
    result.files.update(_comparison_plot(out_dir, before.candidates, after.candidates))
    if not before.selected:
        log(
            f"generate: before_rl: no explanation of the initial teacher ({teacher}) passed the checks; no before_rl config"
        )
        result.summary += f"; before RL: no passing explanation of {len(before.candidates)}"
        return
    _write_configs(out_dir, f"data/{BEFORE_RL}", {"": (before.selected, False)}, components)
    result.files[BEFORE_RL] = f"data/{BEFORE_RL}"
    mean_after, mean_before = result.metrics["reward"]["selected"]["mean"], figures["reward"]["selected"]["mean"]
    result.metrics["reward_gain_vs_before_rl"] = mean_after - mean_before
    result.metrics["reward_gain_vs_before_rl_paired"] = paired_bootstrap(
        {row["id"]: row["reward"] for row in before.selected}, {row["id"]: row["reward"] for row in after.selected}
    )
    result.summary += f"; before RL ({teacher}) {mean_before:.3f} -> after {mean_after:.3f}"


def _write_configs(
    out_dir: Path, dest: str, configs: dict[str, tuple[list[dict[str, Any]], bool]], components: tuple[str, ...]
) -> None:
    """Write each config (sub-folder of `dest` -> rows, with the candidate flags) aside, then swap `dest` in whole."""
    import shutil

    from datasets import Dataset

    staging = out_dir / f"{Path(dest).name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for sub, (rows, with_flags) in configs.items():
        folder = staging / sub
        features = _features(with_flags, components)
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
            out_dir / f"{name}.png",
            out_dir / f"{name}.csv",
            {"all candidates": [c[key] for c in candidates], "selected": [c[key] for c in selected]},
            xlabel=label,
            title=f"Traces: {label}",
        )
        files[name] = f"{name}.png"
        files[f"{name}_csv"] = f"{name}.csv"
    return files


def _comparison_plot(out_dir: Path, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, str]:
    """Reward histograms of every candidate of both passes: same questions, same seeds, teacher before vs after RL."""
    from factory.qa import histogram

    name = "reward_before_after_rl"
    histogram(
        out_dir / f"{name}.png",
        out_dir / f"{name}.csv",
        {"before RL": [c["reward"] for c in before], "after RL": [c["reward"] for c in after]},
        xlabel="RLT reward (all candidates)",
        title="Teacher before vs after RL, same questions",
    )
    return {name: f"{name}.png", f"{name}_csv": f"{name}.csv"}


def _rate(count: int, total: int) -> float:
    return count / total if total else 0.0


def _figures(questions: Questions, chosen: Selection, n: int, components: tuple[str, ...]) -> dict[str, Any]:
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
            "selected_components": {key: summary([c[key] for c in selected])["mean"] for key in components[:-1]},
        },
    }
