"""The generate stage's worker: generate and score the explanations of some shards of the questions.

Work is kept under the artifact's `work/` folder (the before-RL pass: `work/before_rl/`, same
layout), one parquet part per finished chunk of questions, written to a temporary name and renamed
(atomic), so a worker killed at any moment (SIGKILL included) loses at most the chunk in flight,
and a part is never half there:

    work/generated/s{i}of{n}-{first id}.parquet   candidates of one chunk: ids, token ids, finish reason
    work/scored/<same name>.parquet               the same rows with the explanation text and the reward

A question is done when a generated part holds it (the parts are the index of finished ids), so a
restarted worker skips it; shard i of n owns question k (in data order) when k % n == i, less the
questions its job skips (those another live process has claimed, see factory.stages.generate). Sampling is
seeded per question id (engines.base.prompt_seed), so which shard, chunk or restart produced a row
does not change what was sampled. Phase 1 generates every chunk of the worker's shards, phase 2
scores every generated part of them; with vLLM the engine is closed between the two, so the
transformers teacher and student used for scoring get the GPU memory back.

Run as `python -m factory.stages.generate_worker JOB.json` (one process per GPU group), or call
`run_job` in process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import UserError
from factory.recipe import ModelSpec, Recipe

GENERATED, SCORED = "generated", "scored"


# ------------------------------------------------------------------------------------ questions


@dataclass
class Questions:
    """The stage's questions in data order, and those dropped by decontamination (id -> eval sets)."""

    rows: list[dict[str, str]]
    contaminated: dict[str, list[str]] = field(default_factory=dict)

    def owned(self, shard: int, num_shards: int) -> list[dict[str, str]]:
        return [
            row
            for index, row in enumerate(self.rows)
            if index % num_shards == shard and row["id"] not in self.contaminated
        ]

    @property
    def kept(self) -> list[dict[str, str]]:
        return self.owned(0, 1)


def load_questions(recipe: Recipe, log: Callable[[str], None] = print) -> Questions:
    """Training rows (first `stages.generate.limit`) and their decontamination against `data.eval`."""
    from factory.data import load_rows
    from factory.qa import Decontaminator

    settings = recipe.stages.generate
    rows = load_rows(recipe.data.train, log=log)
    if settings.limit is not None:
        rows = rows[: settings.limit]
    if not rows:
        raise UserError(f"data.train ({recipe.data.train.source}): no rows to generate explanations for")
    index = Decontaminator(
        {item.name: [row["question"] for row in load_rows(item, log=log)] for item in recipe.data.eval},
        settings.decontaminate_ngram,
    )
    contaminated = {row["id"]: found for row in rows if (found := index.match(row["question"]))}
    return Questions(rows, contaminated)


# ------------------------------------------------------------------------------------ work folder


def part_name(shard: int, num_shards: int, first_id: str) -> str:
    return f"s{shard}of{num_shards}-{first_id}"


class WorkDir:
    """The parts of an interrupted or running generate pass, under `<artifact>/<sub>/` (`work/` for the
    main pass; the initial teacher's before-RL pass has its own, see factory.stages.generate)."""

    def __init__(self, out_dir: Path, sub: str = "work"):
        self.root = Path(out_dir) / sub

    def folder(self, kind: str) -> Path:
        path = self.root / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def parts(self, kind: str) -> list[Path]:
        return sorted(self.folder(kind).glob("*.parquet"))

    def ids(self, kind: str) -> set[str]:
        import pyarrow.parquet as pq

        return {value for part in self.parts(kind) for value in pq.read_table(part, columns=["id"])["id"].to_pylist()}

    def write(self, kind: str, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write a part so that it appears whole or not at all."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.folder(kind) / f"{name}.parquet"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def remove_temporaries(self) -> int:
        """Delete the temporary files of killed writers (call when no worker runs); returns how many."""
        stale = list(self.root.glob("*/.*.tmp")) if self.root.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


# ------------------------------------------------------------------------------------ the job


@dataclass
class Job:
    """What one worker does; JSON-serialisable so a worker can run in its own process."""

    recipe: dict[str, Any]  # only the keys the user set (exclude_unset): validation restores the rest
    teacher: str | dict[str, Any]  # an artifact's model folder, or a base ModelSpec as JSON
    student: str | dict[str, Any]
    out_dir: str
    engine: str  # "hf" | "vllm" (already resolved)
    shards: list[int]
    num_shards: int
    score_all: bool = False
    work: str = "work"  # the pass's work folder, relative to out_dir
    skip: list[str] = field(default_factory=list)  # ids of questions other live processes have claimed

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Job:
        return cls(**json.loads(Path(path).read_text()))


def as_source(value: str | dict[str, Any]) -> ModelSpec | str:
    return ModelSpec(**value) if isinstance(value, dict) else value


def source_json(source: ModelSpec | str) -> str | dict[str, Any]:
    return source.model_dump(mode="json") if isinstance(source, ModelSpec) else str(source)


def _dtype(source: ModelSpec | str) -> str:
    return source.dtype if isinstance(source, ModelSpec) else "auto"


def sampling_of(recipe: Recipe):
    from factory.engines import Sampling
    from factory.formats import EXPLANATION_CLOSE

    return Sampling.of(recipe.stages.generate, recipe.stages.generate.n, EXPLANATION_CLOSE)


def run_job(job: Job, log: Callable[[str], None] = print, questions: Questions | None = None) -> None:
    """Generate, then score, every unfinished chunk of the job's shards but its skipped questions (and,
    with `score_all`, every generated part still unscored, whichever worker generated it). The caller
    holds the claim on the shards (factory.stages.generate)."""
    recipe = Recipe.model_validate(job.recipe)
    teacher, student = as_source(job.teacher), as_source(job.student)
    tokenizers = checked_tokenizers(teacher, student)
    questions = questions or load_questions(recipe, log=log)
    work = WorkDir(Path(job.out_dir), job.work)
    teacher_model = None
    skip = set(job.skip)
    if any(_todo(questions, work, shard, job.num_shards, skip) for shard in job.shards):
        from factory.engines import load_engine

        settings = recipe.stages.generate
        engine = load_engine(
            job.engine,
            teacher,
            recipe.launch,
            _dtype(teacher),
            batch_size=settings.batch_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
        for shard in job.shards:
            generate_shard(engine, recipe, questions, work, shard, job.num_shards, log, skip)
        if engine.kind == "hf":
            teacher_model = engine.model  # the same weights score the explanations
        else:
            engine.close()
    prefixes = [(part_name(shard, job.num_shards, ""),) for shard in job.shards]
    if not any(_unscored(work, prefix) for prefix in prefixes) and not (job.score_all and _unscored(work, ("",))):
        return
    reward = load_reward(recipe, teacher, student, tokenizers, teacher_model)
    for prefix in prefixes:
        score_parts(reward, questions, work, _unscored(work, prefix))
    if job.score_all:  # parts of shard jobs that died between their two phases; rescoring one twice is harmless
        score_parts(reward, questions, work, _unscored(work, ("",)))


def _todo(questions: Questions, work: WorkDir, shard: int, num_shards: int, skip: set[str]) -> list[dict[str, str]]:
    done = work.ids(GENERATED) | skip
    return [row for row in questions.owned(shard, num_shards) if row["id"] not in done]


def _unscored(work: WorkDir, prefixes: tuple[str, ...]) -> list[Path]:
    scored = {path.name for path in work.parts(SCORED)}
    return [path for path in work.parts(GENERATED) if path.name.startswith(prefixes) and path.name not in scored]


def generate_shard(
    engine: Any,
    recipe: Recipe,
    questions: Questions,
    work: WorkDir,
    shard: int,
    num_shards: int,
    log: Callable[[str], None] = print,
    skip: set[str] = frozenset(),
) -> int:
    """Phase 1 for one shard (but the `skip`ped questions); returns the number of questions generated now."""
    from tqdm.auto import tqdm

    from factory.engines import prompt_seed
    from factory.formats import split_completion_ids, teacher_prompt_ids

    settings, tokenizer = recipe.stages.generate, engine.tokenizer
    sampling = sampling_of(recipe)
    todo = _todo(questions, work, shard, num_shards, skip)
    chunks = [todo[start : start + settings.batch_size] for start in range(0, len(todo), settings.batch_size)]
    if todo:
        log(f"generate: shard {shard}/{num_shards}: {len(todo)} questions to do in {len(chunks)} chunks")
    for chunk in tqdm(chunks, desc=f"generate s{shard}/{num_shards}", unit="chunk", disable=not chunks):
        prompts = [
            teacher_prompt_ids(tokenizer, row["question"], row["solution"], recipe.formats.teacher_system)
            for row in chunk
        ]
        outputs = engine.generate(prompts, sampling, seeds=[prompt_seed(settings.seed, row["id"]) for row in chunk])
        rows = []
        for row, prompt, candidates in zip(chunk, prompts, outputs):
            for index, completion in enumerate(candidates):
                explanation_ids, closed = split_completion_ids(tokenizer, completion.token_ids)
                rows.append(
                    {
                        "id": row["id"],
                        "candidate_index": index,
                        "completion_ids": list(completion.token_ids),
                        "explanation_ids": list(explanation_ids),
                        "closed": closed,
                        "finish_reason": completion.finish_reason,
                        "prompt_tokens": len(prompt),
                    }
                )
        work.write(GENERATED, part_name(shard, num_shards, chunk[0]["id"]), rows)
    return len(todo)


def checked_tokenizers(teacher: ModelSpec | str, student: ModelSpec | str) -> tuple[Any, Any]:
    """Both tokenizers, refused unless they share the vocabulary (checked before any model loads)."""
    from factory.formats import check_same_vocabulary
    from factory.models import load_tokenizer

    tokenizers = load_tokenizer(teacher), load_tokenizer(student)
    check_same_vocabulary(*tokenizers)
    return tokenizers


def load_reward(
    recipe: Recipe,
    teacher: ModelSpec | str,
    student: ModelSpec | str,
    tokenizers: tuple[Any, Any],
    teacher_model: Any = None,
):
    """The recipe's reward (factory.rewards.build); loads the models not already loaded."""
    from factory.data.student import student_format_of
    from factory.models import resolve_model_path
    from factory.rewards.build import build_reward

    teacher_model = teacher_model if teacher_model is not None else _load_lm(teacher)
    same = resolve_model_path(student) == resolve_model_path(teacher)
    return build_reward(
        recipe.reward,
        teacher_model=teacher_model,
        student_model=teacher_model if same else _load_lm(student),
        tokenizer=tokenizers[0],
        student_tokenizer=tokenizers[1],
        teacher_system=recipe.formats.teacher_system,
        student_format=student_format_of(recipe),
    )


def _load_lm(source: ModelSpec | str):
    from factory.engines.hf import placement
    from factory.models import load_causal_lm

    device, dtype = placement(None, _dtype(source))
    return load_causal_lm(source, dtype=dtype, device=device)


def score_parts(reward: Any, questions: Questions, work: WorkDir, parts: list[Path]) -> None:
    """Phase 2: the reward (a `rewards.base.Reward`) of every candidate of `parts`, written as scored parts
    with one column per component."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from factory.rewards.base import RewardItem

    by_id = {row["id"]: row for row in questions.rows}
    tokenizer = reward.tokenizer
    for part in tqdm(parts, desc="score", unit="chunk", disable=not parts):
        rows = pq.read_table(part).to_pylist()
        items = [
            RewardItem(by_id[r["id"]]["question"], by_id[r["id"]]["solution"], r["explanation_ids"], r["closed"])
            for r in rows
        ]
        scored = []
        for row, result in zip(rows, reward.score(items)):
            scored.append(
                {
                    **{key: value for key, value in row.items() if key != "completion_ids"},
                    "explanation": tokenizer.decode(row["explanation_ids"]),
                    "completion_tokens": len(row["completion_ids"]),
                    "explanation_tokens": len(row["explanation_ids"]),
                    "solution_tokens": result.get("solution_tokens"),  # the RLT reward's; None without it
                    "reward_truncated": bool(result["truncated"]),
                    **{key: float(result[key]) for key in reward.components},
                }
            )
        work.write(SCORED, part.stem, scored)


def main(job_file: str | Path) -> None:
    run_job(Job.load(Path(job_file)))


if __name__ == "__main__":
    main(sys.argv[1])
