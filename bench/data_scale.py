"""Paper-size distillation data on one rank: the JSONL-to-Python-lists path against the Arrow hand-over, in one run.

A synthetic trace set with Bespoke-Stratos lengths (17k rows by default: question 100-300 tokens, thought
log-normal around 5k tokens, 2k-16k, solution 50-400; text drawn from common words, about one token
each) goes through both hand-overs of the distill stage, each step in a fresh subprocess whose peak RSS
(ru_maxrss) is reported:

- old (before factory.worker_job): the stage wrote the conversational prompt/completion rows as JSON
  Lines; every rank read them into Python lists, built `datasets.Dataset.from_list` and let TRL's
  SFTTrainer tokenise them (what `distill_worker.build_trainer` did).
- new: the stage tokenises once (`distill.tokenised_rows`) and streams `rows/rows.arrow`
  (`worker_job.write_rows`); every rank opens it memory-mapped (`distill_worker.build_trainer` today).

Both ranks build the real trainer with the recipe's `stages.distill` settings (max_length 16384, as in
recipes/aime.yaml) on a tiny random model with the same tokenizer (Qwen2.5's from tests/qwen_tokenizer.py,
else the tiny one), and the two trainers' datasets must hold the same tokens and supervised tokens
(checked). The last line is the peak RSS ratio old / new of a rank.

    python bench/data_scale.py                       # 17,000 rows (~85M tokens): minutes, ~10 GB free memory
    python bench/data_scale.py --rows 500            # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
WORDS = (
    "the of and to in is that for it as with was on be by this are from or an at which but not have we "
    "so if then there can all its one two three four five six seven eight nine ten number sum product "
    "check again wait let me think about step next first second value equal equation solve answer root "
    "square side angle triangle circle area length total each case both since because therefore thus "
    "hence now we get find given known part term factor prime divide multiply add subtract count ways"
).split()


def lengths(rng: random.Random, median_thought: int) -> tuple[int, int, int]:
    """Token counts of question, thought and solution of one Stratos-like row."""
    thought = rng.lognormvariate(math.log(median_thought), 0.6)  # mean ~ 1.2 x median
    low, high = 0.48 * median_thought, 3.8 * median_thought  # 2k-16k tokens around the default median
    return rng.randint(100, 300), int(min(max(thought, low), high)), rng.randint(50, 400)


def write_traces(scratch: Path, rows: int, median_thought: int, seed: int) -> int:
    """`traces.jsonl`: the trace rows as the distill stage reads them (id, question, solution, explanation), and
    `sft_rows.jsonl`: what the stage wrote before the Arrow hand-over (conversational prompt/completion rows);
    returns the number of words written (about the tokens)."""
    from factory.formats import StudentFormat
    from factory.stages.distill import student_rows

    rng = random.Random(seed)
    corpus = [rng.choice(WORDS) for _ in range(200_000)]
    corpus += corpus  # a slice never wraps

    def text(count: int) -> str:
        start = rng.randrange(len(corpus) // 2)
        return " ".join(corpus[start : start + count])

    words = 0
    with (scratch / "traces.jsonl").open("w") as traces, (scratch / "sft_rows.jsonl").open("w") as old_rows:
        for index in range(rows):
            question, thought, solution = lengths(rng, median_thought)
            words += question + thought + solution
            row = {
                "id": str(index),
                "question": f"Problem {index}: {text(question)}?",
                "solution": f"{text(solution)} so the answer is \\boxed{{{index}}}.",
                "explanation": text(thought),
            }
            traces.write(json.dumps(row) + "\n")
            old_rows.write(json.dumps(student_rows([row], StudentFormat())[0]) + "\n")
    return words


def save_model(folder: Path, tokenizer_name: str) -> str:
    """A tiny random Qwen2 model with the chosen tokenizer (its vocabulary); returns the tokenizer's name."""
    sys.path.insert(0, str(TESTS))
    from tiny import build_model, build_tokenizer

    if tokenizer_name == "qwen":
        from qwen_tokenizer import build_qwen_tokenizer, ranks_file

        path = ranks_file()
        tokenizer = build_qwen_tokenizer(path) if path else None
        if tokenizer is None:
            print("Qwen's BPE ranks are missing (pip install --no-deps dashscope==2.0.2): the tiny tokenizer it is")
            tokenizer, tokenizer_name = build_tokenizer(), "tiny"
    else:
        tokenizer = build_tokenizer()
    build_model(len(tokenizer), hidden_size=16, layers=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer_name


# ------------------------------------------------------------------------------- child processes


def job(scratch: Path, mode: str, max_length: int, packing: bool):
    from factory.recipe import Recipe
    from factory.worker_job import WorkerJob

    model = str(scratch / "model")
    distill = {"max_length": max_length, "packing": packing, "bf16": False, "per_device_batch_size": 1}
    distill["global_batch_size"] = 1
    recipe = Recipe.model_validate(
        {
            "name": "data-scale",
            "models": {role: {"source": model} for role in ("teacher", "student", "distill_base")},
            "data": {"train": {"source": "quickstart", "format": "quickstart"}},
            "stages": {"teacher_rl": {"enabled": False}, "evaluate": {"enabled": False}, "distill": distill},
        }
    )
    return WorkerJob(
        worker="factory.stages.distill_worker",
        out_dir=scratch / mode,
        run_name=mode,
        recipe=recipe,
        models={"base": {"source": model}},
        counts={},
    )


def read_traces(scratch: Path) -> list[dict[str, str]]:
    with (scratch / "traces.jsonl").open() as handle:
        return [json.loads(line) for line in handle]


def old_rank(scratch: Path, settings: dict) -> dict:
    """A rank before the Arrow hand-over: JSON Lines -> Python lists -> Dataset.from_list -> TRL tokenises."""
    from datasets import Dataset
    from trl import SFTTrainer

    from factory.models import load_tokenizer, resolve_model_path
    from factory.stages import distill_worker
    from factory.training import head_on_labelled_positions

    worker_job = job(scratch, "old", **settings)
    started = time.perf_counter()
    head_on_labelled_positions()  # as every worker does
    with (scratch / "sft_rows.jsonl").open() as handle:
        rows = [json.loads(line) for line in handle if line.strip()]  # training.read_rows
    args = distill_worker.sft_config(worker_job)
    args.dataset_kwargs = None  # TRL prepares (tokenises, cuts) the conversational rows, as it did then
    trainer = SFTTrainer(
        model=str(resolve_model_path(worker_job.models["base"])),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(worker_job.models["base"]),
    )
    return {"seconds": time.perf_counter() - started, **distill_worker.token_counts(trainer.train_dataset)}


def new_stage(scratch: Path, settings: dict) -> dict:
    """The stage today: tokenise once, stream the rows into Arrow."""
    from factory.formats import StudentFormat
    from factory.models import load_tokenizer
    from factory.stages.distill import student_rows, tokenised_rows
    from factory.worker_job import write_rows

    worker_job = job(scratch, "new", **settings)
    started = time.perf_counter()
    pairs = student_rows(read_traces(scratch), StudentFormat())
    tokenizer = load_tokenizer(worker_job.models["base"])
    count = write_rows(worker_job.out_dir, tokenised_rows(pairs, tokenizer, worker_job.recipe.stages.distill))
    size = worker_job.rows_file.stat().st_size
    return {"seconds": time.perf_counter() - started, "rows": count, "file_bytes": size}


def new_rank(scratch: Path, settings: dict) -> dict:
    """A rank today: the Arrow rows opened memory-mapped; TRL truncates (or packs) them, tokenising nothing."""
    from factory.stages import distill_worker

    started = time.perf_counter()
    trainer = distill_worker.build_trainer(job(scratch, "new", **settings))
    return {"seconds": time.perf_counter() - started, **distill_worker.token_counts(trainer.train_dataset)}


STEPS = {"old_rank": old_rank, "new_stage": new_stage, "new_rank": new_rank}


def child(step: str, scratch: Path, settings: dict) -> dict:
    """Run one step in a fresh interpreter; its figures and its peak RSS."""
    command = [sys.executable, __file__, "--child", step, "--scratch", str(scratch), "--settings", json.dumps(settings)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # a negative code is a signal: -9 is likely the kernel's OOM killer
        raise SystemExit(f"{step} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(step: str, scratch: Path, settings: dict) -> None:
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # what any step imports, loaded before its clock starts: the times are the work's, not the imports'
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import trl.data_utils  # noqa: F401
    import trl.kernels.chunked_logprob  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    figures = STEPS[step](scratch, settings)
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(figures))


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=17_000, help="trace rows (Bespoke-Stratos: ~17k)")
    parser.add_argument("--thought-tokens", type=int, default=4_200, help="median thought length (mean ~1.2x)")
    parser.add_argument("--max-length", type=int, default=16_384, help="stages.distill.max_length")
    parser.add_argument("--packing", action="store_true", help="stages.distill.packing (BFD)")
    parser.add_argument("--tokenizer", choices=["qwen", "tiny"], default="qwen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.scratch, args.settings)
        return
    settings = {"max_length": args.max_length, "packing": args.packing}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        tokenizer = save_model(scratch / "model", args.tokenizer)
        words = write_traces(scratch, args.rows, args.thought_tokens, args.seed)
        print(
            f"{args.rows} rows, ~{words / args.rows:,.0f} words a row ({words / 1e6:.1f}M in all), tokenizer {tokenizer}, "
            f"max_length {args.max_length}, packing {'bfd' if args.packing else 'off'}; traces "
            f"{(scratch / 'traces.jsonl').stat().st_size / 2**20:,.0f} MiB of JSON Lines"
        )
        figures = {step: child(step, scratch, settings) for step in STEPS}
        old, new = figures["old_rank"], figures["new_rank"]
        if (old["tokens"], old["supervised_tokens"]) != (new["tokens"], new["supervised_tokens"]):
            raise SystemExit(f"the two paths trained on different tokens: old {old}, new {new}")
        print(f"tokens trained on: {new['tokens']:,} ({new['supervised_tokens']:,} supervised), the same on both paths")
        print(
            f"old rank:  JSONL -> lists -> from_list -> TRL tokenises, {old['seconds']:.1f} s, "
            f"peak RSS {old['peak_rss_mb']:,.0f} MiB (every rank)"
        )
        stage = figures["new_stage"]
        print(
            f"new stage: tokenised once into {stage['file_bytes'] / 2**20:,.0f} MiB of Arrow in {stage['seconds']:.1f} s, "
            f"peak RSS {stage['peak_rss_mb']:,.0f} MiB (once)"
        )
        print(
            f"new rank:  Arrow memory-mapped, TRL tokenises nothing, {new['seconds']:.1f} s, "
            f"peak RSS {new['peak_rss_mb']:,.0f} MiB (every rank)"
        )
        print(f"peak RSS per rank, old / new: ratio={old['peak_rss_mb'] / new['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
