"""Distillation throughput: BFD packing vs padded batches, on a length-skewed trace set, in one run.

The same student-format rows (most explanations short, a few long, as real traces are) go through
`factory.stages.distill_worker.build_trainer` (what the distill stage trains with) twice, each for
one epoch of TRL SFT: padded (batches of --batch examples padded to the longest, TRL's default
collator) and packed (best-fit-decreasing rows of up to --max-length tokens, padding-free,
--pack-rows rows per step). Both see the same tokens and the same supervised tokens (checked).
Throughput is real (non-padding) tokens per second of training; on CUDA, MFU = 6 x parameters x
tokens/s / --peak-tflops. Runs alternate and the best of --repeats counts (a shared machine's load
hits both alike). The headline, last, is packed over padded tokens/s.

Packing pays what padding costs: on CPU the attention over a packed row is computed with a block
mask (no varlen kernel), so the gain tracks the padding share of the padded run (printed); on GPU,
--attn flash_attention_2 gives packed rows varlen attention.

    python bench/distill.py                                         # CPU, tiny random model
    python bench/distill.py --device cuda --dtype bfloat16 --model qwen0.5b-random \\
        --rows 2048 --max-length 4096 --batch 8                     # GPU (not run on the dev machine)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import build_model, build_tokenizer  # noqa: E402

from factory.formats import StudentFormat  # noqa: E402
from factory.models import load_tokenizer  # noqa: E402
from factory.recipe import Recipe  # noqa: E402
from factory.stages import distill_worker  # noqa: E402
from factory.stages.distill import student_rows, tokenised_rows  # noqa: E402
from factory.worker_job import WorkerJob, write_rows  # noqa: E402

WORDS = "add the units then tens carry one so the total is nine seven twelve hence we check again".split()


def skewed_rows(count: int, short: int, long: int, long_share: float, seed: int) -> list[dict[str, str]]:
    """Trace rows whose explanations are ~`short` words, or ~`long` words for a `long_share` of them."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        words = long if rng.random() < long_share else short
        words = max(1, int(words * rng.uniform(0.6, 1.2)))
        rows.append(
            {
                "id": str(index),
                "question": f"Question {index}: what is {index} + {index % 7}?",
                "solution": f"So the answer is \\boxed{{{index + index % 7}}}.",
                "explanation": " ".join(rng.choice(WORDS) for _ in range(words)),
            }
        )
    return rows


def save_model(name: str, folder: Path) -> int:
    """A random model of the named shape with the tiny ChatML tokenizer; returns its parameter count."""
    tokenizer = build_tokenizer()
    if name == "tiny":
        model = build_model(len(tokenizer), hidden_size=256, layers=4)
    else:  # Qwen2.5-0.5B shapes; the tokenizer's ids are a subset of its vocabulary
        from common import qwen05b_config
        from transformers import Qwen2ForCausalLM

        config = qwen05b_config(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run_once(job: WorkerJob) -> dict:
    """One epoch of training from the saved model: time, tokens, and positions computed (with padding)."""
    trainer = distill_worker.build_trainer(job)
    counts = distill_worker.token_counts(trainer.train_dataset)
    positions = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())
    output = trainer.train()
    return {
        **counts,
        "positions": positions,
        "seconds": output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "rows": len(trainer.train_dataset),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "qwen0.5b-random"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (flash_attention_2 on GPU)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--short", type=int, default=20, help="words of a short explanation (~230 tokens a row)")
    parser.add_argument("--long", type=int, default=650, help="words of a long explanation (~2,100 tokens a row)")
    parser.add_argument("--long-share", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="examples per padded batch")
    parser.add_argument("--pack-rows", type=int, default=1, help="packed rows of max-length tokens per step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM)")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        assert torch.cuda.is_available(), "--device cuda but no GPU is visible"
    else:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        params = save_model(args.model, folder / "model")
        rows = skewed_rows(args.rows, args.short, args.long, args.long_share, seed=0)
        pairs = student_rows(rows, StudentFormat())
        tokenizer = load_tokenizer(str(folder / "model"))
        jobs = {}
        for mode, packing, per_device in (("padded", False, args.batch), ("packed", True, args.pack_rows)):
            out = folder / mode
            distill = {
                "epochs": 1,
                "global_batch_size": per_device,
                "per_device_batch_size": per_device,
                "max_length": args.max_length,
                "packing": packing,
                "bf16": args.dtype == "bfloat16",
                "warmup_ratio": 0.0,
                "save_steps": 10**9,
                "learning_rate": 1e-4,
            }
            recipe = Recipe.model_validate(
                {
                    "name": "bench",
                    "models": {
                        role: {"source": str(folder / "model")} for role in ("teacher", "student", "distill_base")
                    },
                    "data": {"train": {"source": "quickstart", "format": "quickstart"}},
                    "stages": {"teacher_rl": {"enabled": False}, "evaluate": {"enabled": False}, "distill": distill},
                }
            )
            write_rows(out, tokenised_rows(pairs, tokenizer, recipe.stages.distill))
            jobs[mode] = WorkerJob(
                worker=distill_worker.__name__,
                out_dir=out,
                run_name=f"bench-{mode}",
                recipe=recipe,
                models={"base": {"source": str(folder / "model")}},
                counts={},
                title=mode,
                attn_implementation=args.attn,
            )
        results: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved, best of each: a shared machine's load hits both alike
            for mode, job in jobs.items():
                result = run_once(job)
                if mode not in results or result["seconds"] < results[mode]["seconds"]:
                    results[mode] = result
        for result in results.values():
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
        padded, packed = results["padded"], results["packed"]
        assert packed["supervised_tokens"] == padded["supervised_tokens"], "packing changed the supervised tokens"
        print(
            f"model={args.model} ({params / 1e6:.1f}M params) device={args.device} dtype={args.dtype} attn={args.attn} "
            f"rows={args.rows} max_length={args.max_length} tokens={padded['tokens']} "
            f"supervised={padded['supervised_tokens']}"
        )
        for mode, result in results.items():
            line = (
                f"{mode:>6}: {result['rows']} sequences, {result['steps']} steps, "
                f"{1 - result['tokens'] / result['positions']:.0%} padding, {result['seconds']:.2f} s, "
                f"{result['tokens_per_s']:,.0f} tokens/s"
            )
            if args.device == "cuda":
                line += f", MFU {6 * params * result['tokens_per_s'] / (args.peak_tflops * 1e12):.1%}"
            print(line)
        ratio = packed["tokens_per_s"] / padded["tokens_per_s"]
        print(f"packed vs padded training tokens/s ({args.device}): ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
