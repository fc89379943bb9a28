"""Batched transformers engine vs one-question-at-a-time `generate`, same model, same run.

For each model: the same prompts (teacher prompts of quick-start questions; random token ids for
the random Qwen-shaped model) are decoded greedily up to --new-tokens, first one prompt at a time
with plain `model.generate` (the baseline), then by `factory.engines.hf.HFEngine` with --batch rows
per forward (length-bucketed, left-padded, KV cache). Greedy decoding makes both produce the same
tokens, so the work is identical; the script checks that and prints generated tokens/s of each side
and their ratio. --cache static and --compile apply to both sides (compiled decoding needs the
static cache and, in transformers, a GPU); one untimed warm-up call per side comes first.
The headline, last, is the last model's ratio.

    python bench/generate.py                                  # CPU: tiny and SmolLM2-135M, batch 16
    python bench/generate.py --device cuda --dtype bfloat16 --models qwen0.5b-random \\
        --batch 32 --questions 32 --new-tokens 128 [--cache static --compile]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import load_models, models_parser, run_over_models  # noqa: E402

from factory.engines import Sampling  # noqa: E402
from factory.engines.hf import HFEngine  # noqa: E402


def load(name: str, device: str, dtype: torch.dtype):
    """(model, tokenizer): common.load_models; a random model stops at the tokenizer's eos."""
    (model,), tokenizer = load_models(name, device, dtype, count=1)
    if name == "qwen0.5b-random":  # prompts are random ids; only pad/eos ids and decoding are needed
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def prompts_for(name: str, tokenizer, model, count: int, prompt_tokens: int) -> list[list[int]]:
    if name == "qwen0.5b-random":
        generator = torch.Generator().manual_seed(0)
        return torch.randint(100, model.config.vocab_size, (count, prompt_tokens), generator=generator).tolist()
    from factory.data import load_rows
    from factory.formats import teacher_prompt_ids
    from factory.recipe import DataSource

    rows = load_rows(DataSource(source="quickstart", format="quickstart", split="train", limit=count))
    return [teacher_prompt_ids(tokenizer, row["question"], row["solution"]) for row in rows]


def one_at_a_time(model, tokenizer, prompts, new_tokens: int, cache: str, compile_: bool) -> list[list[int]]:
    """The baseline: plain `generate`, one unpadded prompt per call, stopping at eos."""
    from transformers import CompileConfig

    outputs = []
    eos = tokenizer.eos_token_id
    options = {"cache_implementation": "static"} if cache == "static" else {}
    if compile_:
        options["compile_config"] = CompileConfig(fullgraph=True, dynamic=False)
    for ids in prompts:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids], device=model.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
                do_sample=False,
                max_new_tokens=new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                **options,
            )
        generated = out[0, len(ids) :].tolist()
        outputs.append(generated[: generated.index(eos) + 1] if eos in generated else generated)
    return outputs


def timed(function):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def bench_model(name: str, args) -> float:
    dtype = getattr(torch, args.dtype)
    model, tokenizer = load(name, args.device, dtype)
    prompts = prompts_for(name, tokenizer, model, args.questions, args.prompt_tokens)
    engine = HFEngine(model, tokenizer, batch_size=args.batch, cache=args.cache, compile=args.compile, progress=False)
    greedy = Sampling(temperature=0, max_new_tokens=args.new_tokens)
    one_at_a_time(model, tokenizer, prompts[:1], 4, args.cache, args.compile)  # warm-up, untimed
    engine.generate(prompts[: args.batch], Sampling(temperature=0, max_new_tokens=4))

    baseline, baseline_s = timed(
        lambda: one_at_a_time(model, tokenizer, prompts, args.new_tokens, args.cache, args.compile)
    )
    batched, batched_s = timed(lambda: engine.generate(prompts, greedy))
    batched_ids = [row[0].token_ids for row in batched]
    baseline_tokens, batched_tokens = sum(map(len, baseline)), sum(map(len, batched_ids))
    same = sum(a == b for a, b in zip(baseline, batched_ids))
    base_rate, batch_rate = baseline_tokens / baseline_s, batched_tokens / batched_s
    ratio = batch_rate / base_rate
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(
        f"\n{name} on {args.device} ({args.dtype}), {len(prompts)} prompts of {mean_prompt:.0f} tokens on average, "
        f"up to {args.new_tokens} new tokens, cache {args.cache}{', compiled' if args.compile else ''}"
    )
    print(
        f"  {'one at a time (generate)':<28}{baseline_tokens:>8} tokens {baseline_s:>8.2f} s {base_rate:>10.1f} tokens/s"
    )
    print(
        f"  {f'HFEngine batch {args.batch}':<28}{batched_tokens:>8} tokens {batched_s:>8.2f} s {batch_rate:>10.1f} tokens/s"
    )
    print(f"  identical completions: {same}/{len(prompts)}; ratio {ratio:.2f}")
    return ratio


def main() -> None:
    parser = models_parser(__doc__)
    parser.add_argument("--batch", type=int, default=16, help="rows per forward of the batched engine")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length of the random model")
    parser.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    parser.add_argument("--compile", action="store_true", help="compiled decoding (needs --cache static)")
    run_over_models(
        parser,
        bench_model,
        lambda args: f", HFEngine batch {args.batch} vs one-at-a-time generate on {args.device}, generated tokens/s",
    )


if __name__ == "__main__":
    main()
