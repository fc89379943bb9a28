"""Teacher warm-up SFT (RLT.md "Training pipeline", step 1): the teacher format, loss on the explanation only.

Each row with a reference `thought` becomes one sequence: the teacher prompt exactly as teacher RL
will generate from it (`formats.teacher_prompt_ids`: system, question, assistant turn prefilled with
the solution and the opened explanation tag), followed by the target `thought + \n\n<|end_of_explanation|>
+ eos` (`formats.teacher_target`: the reference's padding, so no token straddles the closing tag). Labels are -100 over the prompt (question and prefilled solution) and the token ids over the
target, so the teacher learns to write, close and end its explanation and nothing else. Rows without a
thought are skipped with a count; so are rows whose prompt alone fills `max_length` (nothing left to
supervise). Longer targets are cut at `max_length`. The rows (input_ids, labels) go to the worker
(`teacher_sft_worker`, through factory.worker.run_training) as one memory-mapped Arrow file; it trains
with TRL's SFTTrainer on them and refuses any batch without a supervised token.
"""

from __future__ import annotations

from typing import Any

from factory.errors import UserError
from factory.formats import teacher_prompt_ids, teacher_target
from factory.roles import Role
from factory.stages.base import Stage, StageContext, StageResult, register, thought_problems
from factory.stages.handoff import IGNORE
from factory.training import check_sft_settings
from factory.worker import run_training
from factory.worker_job import WorkerJob, model_of

WORKER = "factory.stages.teacher_sft_worker"


def sft_example(tokenizer: Any, row: dict[str, str], system: str | None, max_length: int) -> dict[str, Any] | None:
    """{'id', 'input_ids', 'labels', 'truncated'} of one row, or None when truncation leaves no supervised token."""
    prompt = teacher_prompt_ids(tokenizer, row["question"], row["solution"], system)
    full = tokenizer(teacher_target(row["thought"]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    target = full[: max(0, max_length - len(prompt))]
    if not target:
        return None
    return {
        "id": row["id"],
        "input_ids": prompt + target,
        "labels": [IGNORE] * len(prompt) + target,
        "truncated": len(target) < len(full),
    }


def sft_examples(
    rows: list[dict[str, str]], tokenizer: Any, system: str | None, max_length: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Examples of the rows that have a thought, and the counts of what was skipped and why."""
    examples, counts = [], {"rows": len(rows), "skipped_no_thought": 0, "skipped_prompt_too_long": 0, "truncated": 0}
    for row in rows:
        if not row.get("thought"):
            counts["skipped_no_thought"] += 1
            continue
        example = sft_example(tokenizer, row, system, max_length)
        if example is None:
            counts["skipped_prompt_too_long"] += 1
            continue
        counts["truncated"] += example["truncated"]
        examples.append(example)
    counts["examples"] = len(examples)
    counts["supervised_tokens"] = sum(sum(label != IGNORE for label in e["labels"]) for e in examples)
    return examples, counts


@register
class TeacherSFT(Stage):
    name = "teacher_sft"
    consumes = (Role.TEACHER, Role.TRAIN_DATA)
    produces = Role.TEACHER
    sections = ("stages.teacher_sft", "formats.teacher_system")
    version = 2  # 2: the reference layout (padded solution in the prompt, padded targets)

    def check(self, recipe):
        problems = check_sft_settings(recipe.stages.teacher_sft, "stages.teacher_sft", recipe.launch.world_size)
        return problems + thought_problems(recipe, "stages.teacher_sft")

    def estimate(self, recipe):
        """Upper bound from max_length: every sequence counted full; unknown without max_steps or a row limit."""
        from factory.models import estimate_parameters

        sft = recipe.stages.teacher_sft
        if sft.max_steps:
            tokens = sft.max_steps * sft.global_batch_size * sft.max_length
        elif recipe.data.train.limit:
            tokens = recipe.data.train.limit * sft.epochs * sft.max_length
        else:
            return {}
        params = estimate_parameters(recipe.models.teacher)
        return {"tokens": tokens, "flops": 6 * params * tokens} if params else {"tokens": tokens}

    def memory(self, recipe):
        """The teacher trained on rows of up to max_length tokens (factory.memory.sft_memory)."""
        from factory.memory import sft_memory

        settings = recipe.stages.teacher_sft
        return sft_memory(recipe.models.teacher, settings, recipe.launch, "stages.teacher_sft")

    def run(self, ctx: StageContext) -> StageResult:
        result = run_training(ctx.out_dir, ctx.recipe.launch, lambda: self.prepare(ctx))
        return StageResult(
            metrics=result,
            files={"model": "model", "loss_curve_csv": "loss_curve.csv", "loss_curve_png": "loss_curve.png"},
            summary=(
                f"{result['examples']} examples, {result['steps']} steps, loss {result['first_loss']:.3f} -> "
                f"{result['last_loss']:.3f}"
            ),
        )

    def prepare(self, ctx: StageContext) -> tuple[WorkerJob, list[dict[str, Any]]]:
        """The worker's job and rows: the train rows with a thought, tokenised (user errors raised here)."""
        from factory.data import load_rows
        from factory.models import load_tokenizer

        recipe, sft = ctx.recipe, ctx.recipe.stages.teacher_sft
        teacher = ctx.inputs["teacher"]
        rows = load_rows(ctx.inputs["train_data"].data, log=ctx.log)
        tokenizer = load_tokenizer(teacher.model_source())
        examples, counts = sft_examples(rows, tokenizer, recipe.formats.teacher_system, sft.max_length)
        if not examples:
            raise UserError(
                f"data.train: none of the {len(rows)} rows can be used for teacher SFT ({counts['skipped_no_thought']} "
                f"have no thought (data.train.thought_column), {counts['skipped_prompt_too_long']} have a prompt "
                f"longer than stages.teacher_sft.max_length={sft.max_length}); disable stages.teacher_sft "
                "or fix the data"
            )
        ctx.log(
            f"teacher_sft: {counts['examples']} of {counts['rows']} rows, {counts['supervised_tokens']} supervised "
            f"tokens; skipped {counts['skipped_no_thought']} without a thought, "
            f"{counts['skipped_prompt_too_long']} with a prompt over max_length; {counts['truncated']} truncated"
        )
        job = WorkerJob.of_stage(ctx, self.name, WORKER, models={"teacher": model_of(teacher)}, counts=counts)
        return job, [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
