"""What the benches that compare models share: the random model the GPU benches build (no download;
Qwen2.5-0.5B-Instruct's shape, as factory's memory plan knows it, factory.memory.KNOWN_CONFIGS), the models
a bench is run on, its common options, and the run over those models that ends in the headline."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from factory.memory import KNOWN_CONFIGS

QWEN_05B = KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]
MODELS = ("tiny", "smollm2", "qwen0.5b-random")


def qwen05b_config(**overrides: Any):
    """A transformers Qwen2Config of that shape; `overrides` set token ids and the like."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**QWEN_05B, "max_position_embeddings": 32768, **overrides})


def load_models(name: str, device: str, dtype: Any, count: int) -> tuple[list[Any], Any]:
    """`count` models of one of MODELS in eval mode, and their tokenizer. The random ones are built offline
    (tiny: seeds 0, 1, ...; the Qwen shape on the device itself: seconds instead of a minute on CPU) and
    share the tiny ChatML tokenizer, whose ids lie inside every vocabulary here."""
    import torch
    from tiny import build_model, build_tokenizer

    if name == "tiny":
        tokenizer = build_tokenizer()
        models = [build_model(len(tokenizer), seed=seed) for seed in range(count)]
    elif name == "smollm2":
        from factory.models import load_causal_lm, load_tokenizer

        source = "packaged:smollm2-135m-instruct"
        tokenizer = load_tokenizer(source)
        models = [load_causal_lm(source, dtype="float32") for _ in range(count)]
    elif name == "qwen0.5b-random":
        from transformers import Qwen2ForCausalLM

        tokenizer = build_tokenizer()
        with torch.device(device):
            models = [Qwen2ForCausalLM(qwen05b_config()) for _ in range(count)]
    else:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return [model.to(device=device, dtype=dtype).eval() for model in models], tokenizer


def models_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a bench run on several models (--models, --device, --dtype, --threads); `doc`'s first
    line is its description."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help=f"comma list: {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a busy shared machine)")
    return parser


def run_over_models(
    parser: argparse.ArgumentParser, bench_model: Callable[[str, Any], float], measured: Callable[[Any], str]
) -> None:
    """Parse the options, run `bench_model` on each of --models (--threads CPU threads when given, torch
    seeded) and print the headline, last: the last model's ratio, `measured(args)` saying of what."""
    import torch

    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = args.models.split(",")
    ratios = {name: bench_model(name, args) for name in models}
    print(f"\nheadline: {models[-1]}{measured(args)} ratio={ratios[models[-1]]:.2f}")
