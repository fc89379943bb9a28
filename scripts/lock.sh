#!/usr/bin/env bash
# Refresh the resolved locks: the core set, and core + the `gpu` extra (vLLM, DeepSpeed) for
# linux x86_64 with CUDA. uv resolves from package metadata only, so no CUDA wheel is downloaded;
# this proves the gpu extra resolves together with the pinned core set.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python -m pip install -q uv
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet)
uv pip compile pyproject.toml "${common[@]}" -o locks/core-linux-x86_64.txt
uv pip compile pyproject.toml --extra gpu "${common[@]}" -o locks/gpu-linux-x86_64.txt
grep -E '^(torch|transformers|trl|vllm|deepspeed|datasets|accelerate|gradio|huggingface-hub)==' locks/gpu-linux-x86_64.txt
