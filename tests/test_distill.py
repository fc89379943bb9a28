"""Student distillation: what is supervised (token by token), packing, resume, the stage end to end."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny import TINY_DISTILL

from factory.errors import UserError
from factory.formats import DEFAULT_STUDENT_SYSTEM, StudentFormat, student_messages
from factory.recipe import Recipe
from factory.stages import distill_worker
from factory.stages.base import ResolvedInput
from factory.stages.distill import DistillStage, distill_model, student_rows, tokenised_rows, trace_rows
from factory.worker_job import WorkerJob, write_rows

CLOSING_TEMPLATE = (  # ChatML as SmolLM2 / Qwen2.5 render it: every turn, the last too, ends with <|im_end|>
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_recipe(model: Path, **distill) -> Recipe:
    off = {"enabled": False}
    return Recipe.model_validate(
        {
            "name": "distill-test",
            "models": {k: {"source": str(model)} for k in ("teacher", "student", "distill_base")},
            "data": {"train": {"source": "quickstart", "format": "quickstart", "limit": 12}},
            "stages": {
                "teacher_sft": off,
                "teacher_rl": off,
                "generate": off,
                "evaluate": off,
                "distill": {**TINY_DISTILL, **distill},
            },
        }
    )


def skewed_rows(count: int = 10) -> list[dict[str, str]]:
    """Trace rows of very different lengths (packing has something to pack)."""
    rows = []
    for i in range(count):
        steps = " ".join(f"step {j}: add {j} to the total." for j in range(1 + (i % 4) * 6))
        rows.append(
            {
                "id": f"q{i}",
                "question": f"What is {i} + {i * 3}?",
                "solution": f"\\boxed{{{4 * i}}}",
                "explanation": steps,
            }
        )
    return rows


def job_for(tmp_path: Path, model: Path, rows, *, packing: bool, max_length: int = 256) -> WorkerJob:
    """A distill worker job and its rows, as the stage writes them, for a trainer built without training."""
    from factory.models import load_tokenizer

    recipe = make_recipe(model, packing=packing, max_length=max_length)
    out = tmp_path / f"job-{model.name}-{packing}-{max_length}"
    write_rows(
        out, tokenised_rows(student_rows(rows, StudentFormat()), load_tokenizer(str(model)), recipe.stages.distill)
    )
    return WorkerJob(
        worker="factory.stages.distill_worker",
        out_dir=out,
        run_name="test",
        recipe=recipe,
        models={"base": {"source": str(model)}},
        counts={"rows": len(rows)},
        title="test",
    )


@pytest.fixture
def closing_model_dir(tmp_path, tiny_student_dir) -> Path:
    """The tiny model with a template that closes the last turn too, like the real model families."""
    folder = tmp_path / "closing"
    shutil.copytree(tiny_student_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CLOSING_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize("template", ["tiny", "closing"])
def test_only_completion_tokens_are_supervised(tmp_path, tiny_student_dir, closing_model_dir, template):
    """Token by token: a token is supervised exactly when it lies in the assistant turn's text."""
    model = tiny_student_dir if template == "tiny" else closing_model_dir
    rows = skewed_rows(4)
    trainer = distill_worker.build_trainer(job_for(tmp_path, model, rows, packing=False, max_length=2048))
    tokenizer = trainer.processing_class
    assert len(trainer.train_dataset) == len(rows)
    for row, example in zip(rows, trainer.train_dataset):
        messages = student_messages(row["question"], row["explanation"], row["solution"])
        prompt_text = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full_text.startswith(prompt_text)
        encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
        assert example["input_ids"] == encoded["input_ids"]
        for token_id, label, (start, _) in zip(example["input_ids"], example["labels"], encoded["offset_mapping"]):
            if start < len(prompt_text):
                assert label == -100, f"prompt token {tokenizer.decode([token_id])!r} is supervised"
            else:
                assert label == token_id, f"completion token {tokenizer.decode([token_id])!r} is not supervised"
        supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
        completion_text = tokenizer.decode(supervised)
        assert DEFAULT_STUDENT_SYSTEM not in completion_text and row["question"] not in completion_text
        assert completion_text.startswith(messages[2]["content"])
        if template == "closing":  # the end-of-turn token is supervised: the student learns to stop
            assert completion_text == messages[2]["content"] + "<|im_end|>\n"
            assert supervised.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1


@pytest.fixture
def qwen_model_dir(tmp_path, tiny_student_dir, request) -> Path:
    """The tiny model with Qwen2.5-Instruct's real tokenizer (its ids go beyond the model's vocabulary, which
    preparing a dataset never looks at)."""
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_student_dir, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    request.getfixturevalue("qwen_tokenizer").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("template", ["tiny", "closing", "qwen"])
def test_stage_tokenisation_is_trls(tmp_path, tiny_student_dir, closing_model_dir, request, template, packing):
    """The rows the stage tokenises once give the trainer the dataset TRL made from the conversational
    prompt/completion rows on every rank (the worker's input before the Arrow hand-over): the same ids and
    labels, truncated at max_length or packed alike."""
    from datasets import Dataset
    from trl import SFTTrainer

    from factory.models import load_tokenizer

    model = {"tiny": tiny_student_dir, "closing": closing_model_dir}.get(template)
    model = model or request.getfixturevalue("qwen_model_dir")
    long_prompt = {
        "id": "long",
        "question": "What is 1 + 1? " * 80,
        "solution": "\\boxed{2}",
        "explanation": "1 + 1 = 2.",
    }
    rows = [*skewed_rows(10), long_prompt]  # cut without packing, the long prompt leaves no label: TRL drops it
    uncut = make_recipe(model, packing=True).stages.distill
    pairs = student_rows(rows, StudentFormat())
    lengths = sorted(len(r["input_ids"]) for r in tokenised_rows(pairs, load_tokenizer(str(model)), uncut))
    max_length = lengths[0] + lengths[1]  # the two shortest fit in a packed row; the longest are cut
    assert lengths[-1] > max_length
    job = job_for(tmp_path, model, rows, packing=packing, max_length=max_length)
    ours = distill_worker.build_trainer(job).train_dataset
    conversational = Dataset.from_list(student_rows(rows, StudentFormat()))
    args = distill_worker.sft_config(job.model_copy(update={"out_dir": tmp_path / "trl"}))
    args.dataset_kwargs = None  # TRL prepares the conversational rows, as the worker had it do before
    trls = SFTTrainer(
        model=str(model),
        args=args,
        train_dataset=conversational,
        processing_class=load_tokenizer(str(model)),
    ).train_dataset
    columns = ["input_ids", "labels", "seq_lengths"] if packing else ["input_ids", "labels"]
    assert ours.select_columns(columns).to_list() == trls.select_columns(columns).to_list()
    trained = [len(ids) for ids in ours["input_ids"]]
    assert (len(trained) < 11) if packing else (len(trained) == 10 and max(trained) == max_length)  # packed, or cut


def _supervised_from_loader(trainer) -> Counter:
    counts: Counter = Counter()
    for batch in trainer.get_train_dataloader():
        ids, labels = batch["input_ids"], batch["labels"]
        counts.update(ids[labels != -100].tolist())
    return counts


def test_packing_changes_no_supervised_token(tmp_path, tiny_student_dir):
    rows = skewed_rows(10)
    padded = distill_worker.build_trainer(job_for(tmp_path, tiny_student_dir, rows, packing=False, max_length=512))
    packed = distill_worker.build_trainer(job_for(tmp_path, tiny_student_dir, rows, packing=True, max_length=512))
    assert len(packed.train_dataset) < len(padded.train_dataset) == 10  # sequences really were packed
    counts = distill_worker.token_counts(padded.train_dataset)
    assert distill_worker.token_counts(packed.train_dataset) == counts
    # through the collators too (padding-free packing masks each sequence's first position)
    from_padded, from_packed = _supervised_from_loader(padded), _supervised_from_loader(packed)
    assert sum(from_packed.values()) == sum(from_padded.values()) == counts["supervised_tokens"]
    assert from_packed == from_padded  # the same supervised tokens, not just as many


def test_token_counts_follow_a_filtered_view_across_batches(monkeypatch):
    """TRL's filter leaves a view over the whole table: only the view's rows count, batch after batch."""
    from datasets import Dataset

    labels = [[-100] * (i % 3) + list(range(i % 5 + 1)) for i in range(25)]
    dataset = Dataset.from_dict({"labels": labels}).filter(lambda row: len(row["labels"]) % 2 == 0)
    kept = [row for row in labels if len(row) % 2 == 0]
    monkeypatch.setattr(distill_worker, "COUNT_BATCH_ROWS", 4)
    assert distill_worker.token_counts(dataset) == {
        "tokens": sum(map(len, kept)),
        "supervised_tokens": sum(label != -100 for row in kept for label in row),
    }


def test_packed_loss_equals_per_sequence_losses(tmp_path, tiny_student_dir):
    """Packed sequences must not attend to each other: one packed forward gives the same token losses
    as each sequence on its own (this is what makes BFD packing safe on CPU/SDPA, not only FlashAttention)."""
    rows = skewed_rows(6)
    packed = distill_worker.build_trainer(job_for(tmp_path, tiny_student_dir, rows, packing=True, max_length=512))
    model = packed.model.eval()
    batch = next(iter(packed.get_train_dataloader()))
    with torch.no_grad():
        packed_loss = model(**{k: batch[k] for k in ("input_ids", "labels", "position_ids")}).loss
        total, count = 0.0, 0
        starts = batch["cu_seq_lens_q"].tolist()
        for start, end in zip(starts[:-1], starts[1:]):
            ids, labels = batch["input_ids"][:, start:end], batch["labels"][:, start:end]
            tokens = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * tokens
            count += tokens
    assert len(starts) > 2  # more than one sequence in the packed row
    assert packed_loss.item() == pytest.approx(total / count, rel=1e-5)


def test_trace_rows_from_a_generate_artifact(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "generate-x" / "data"
    (data / "candidates").mkdir(parents=True)
    table = pa.table(
        {
            "id": ["a", "b"],
            "question": ["Q1", "Q2"],
            "solution": ["\\boxed{1}", "\\boxed{2}"],
            "explanation": ["E1", "E2"],
            "reward": [0.5, -0.1],
            "closed": [True, True],
        }
    )
    pq.write_table(table, data / "train-00000.parquet")
    pq.write_table(pa.concat_tables([table, table]), data / "candidates" / "train-00000.parquet")
    from factory.stages.base import ResolvedInput

    traces = ResolvedInput(role="traces", fingerprint="f", artifact_dir=tmp_path / "generate-x")
    rows = trace_rows(traces, print)
    assert [(r["id"], r["explanation"]) for r in rows] == [("a", "E1"), ("b", "E2")]  # candidates not read
    prompt, completion = student_rows(rows, StudentFormat("SYS"))[0].values()
    assert [m["role"] for m in prompt] == ["system", "user"] and prompt[0]["content"] == "SYS"
    assert completion == [student_messages("Q1", "E1", "\\boxed{1}", StudentFormat("SYS"))[2]]

    pq.write_table(table.drop(["explanation"]), data / "train-00000.parquet")
    with pytest.raises(UserError, match="explanation"):
        trace_rows(traces, print)


def test_reference_thoughts_are_required_without_generate(tmp_path):
    from factory.recipe import DataSource
    from factory.stages.base import ResolvedInput

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "Q", "solution": "S"}) + "\n")
    source = DataSource(source=str(path), format="jsonl")
    with pytest.raises(UserError, match="data.train.thought_column"):
        trace_rows(ResolvedInput(role="traces", fingerprint="f", data=source), print)
    path.write_text(json.dumps({"question": "Q", "solution": "S", "reasoning": "R"}) + "\n")
    source = DataSource(source=str(path), format="jsonl", thought_column="reasoning")
    rows = trace_rows(ResolvedInput(role="traces", fingerprint="f", data=source), print)
    assert rows[0]["explanation"] == "R"


def test_global_batch_must_divide(tiny_student_dir):
    """The stage's own rule, in its preflight check (tests/test_preflight.py: through the CLI)."""
    recipe = make_recipe(tiny_student_dir, global_batch_size=6, per_device_batch_size=4)
    assert [p.key for p in DistillStage().check(recipe)] == ["stages.distill.global_batch_size"]
    assert DistillStage().check(make_recipe(tiny_student_dir, global_batch_size=8, per_device_batch_size=4)) == []


class Crash(Exception):
    pass


def test_resumes_from_the_last_checkpoint(tmp_path, tiny_student_dir, monkeypatch):
    from transformers import TrainerCallback

    recipe = make_recipe(tiny_student_dir, max_steps=4, save_steps=2, global_batch_size=2, per_device_batch_size=2)
    base = ResolvedInput(role="distill_base", fingerprint="b", model=recipe.models.distill_base)
    rows = skewed_rows(8)
    build = distill_worker.build_trainer

    class CrashAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Crash("killed at step 3")

    def crashing(job):
        trainer = build(job)
        trainer.add_callback(CrashAtStep3())
        return trainer

    out = tmp_path / "distill-art"
    monkeypatch.setattr(distill_worker, "build_trainer", crashing)
    with pytest.raises(Crash):
        distill_model(rows=rows, base=base, recipe=recipe, out_dir=out, log=print, run_name="t")
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "result.json").exists()
    monkeypatch.setattr(distill_worker, "build_trainer", build)
    metrics = distill_model(rows=rows, base=base, recipe=recipe, out_dir=out, log=print, run_name="t")
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    with (out / "loss_curve.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4]  # history survives the resume
    assert not (out / "checkpoints").exists()  # dropped once the model is saved
    # a finished folder is not trained again
    monkeypatch.setattr(distill_worker, "build_trainer", crashing)
    assert distill_model(rows=rows, base=base, recipe=recipe, out_dir=out, log=print, run_name="t") == metrics


def test_distill_stage_end_to_end(tmp_path, tiny_student_dir):
    """Through the pipeline: quickstart reference thoughts (generate disabled) -> student artifact."""
    from factory.artifacts import read_meta
    from factory.pipeline import execute, make_plan

    recipe = make_recipe(tiny_student_dir, epochs=2)
    plan = make_plan(recipe, tmp_path / "runs", {"distill": DistillStage()})
    planned = plan.stage("distill")
    assert planned.status == "run" and planned.inputs["traces"].data.source == "quickstart"
    execute(plan, "test.yaml", log=lambda *_: None)
    folder = planned.artifact_dir
    meta = read_meta(folder)
    assert meta.kind == "model" and meta.role == "student"
    assert meta.files["model"] == "model" and (folder / "model" / "model.safetensors").is_file()
    assert (folder / "model" / "tokenizer_config.json").is_file()
    assert not (folder / "model" / "training_args.bin").exists()  # no pickle is published
    assert (folder / "loss_curve.png").stat().st_size > 1000
    with (folder / "loss_curve.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    # 12 rows, packed into sequences of up to 256 tokens, batch 4, 2 epochs
    assert meta.metrics["rows"] == 12 and meta.metrics["packing"] is True
    assert meta.metrics["steps"] == len(losses) == 2 * -(-meta.metrics["sequences"] // 4)
    assert losses[-1] < losses[0]  # lr 1e-3 on a tiny random model: the loss goes down
    assert 0 < meta.metrics["supervised_tokens"] < meta.metrics["tokens"]
    # cached on the second plan
    assert make_plan(recipe, tmp_path / "runs", {"distill": DistillStage()}).stage("distill").status == "cached"


def test_rows_the_cut_leaves_without_a_label_are_a_user_error_naming_max_length(tmp_path, tiny_student_dir):
    """Every prompt longer than max_length: nothing to learn, said before any worker starts, key named."""
    from factory.stages.base import ResolvedInput
    from factory.stages.distill import distill_model

    recipe = make_recipe(tiny_student_dir, max_length=16, packing=False)  # packed rows are cut, never dropped
    base = ResolvedInput(role="distill_base", fingerprint="b", model=recipe.models.distill_base)
    rows = [{**row, "question": "add these numbers: " + " plus ".join(map(str, range(40)))} for row in skewed_rows()]
    with pytest.raises(UserError, match=r"stages.distill.max_length: each of the 10 trace rows has a prompt of 16"):
        distill_model(rows=rows, base=base, recipe=recipe, out_dir=tmp_path / "out", log=print, run_name="t")
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "job.json").exists()
