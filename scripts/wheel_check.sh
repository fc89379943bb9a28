#!/usr/bin/env bash
# The wheel is self-contained: build it from a copy of the working tree, install it (--no-deps) into a fresh venv
# outside the source tree, and from an empty folder run the bundled recipes by name (`factory plan aime`,
# `factory validate quickstart-students`, whose `extends:` resolves inside the package), build a two-process
# `accelerate launch` command whose preset lies in the installed package, write the compare Space as the Hub
# deploy does, and serve `factory compare` until GET / answers 200.
# The fresh venv takes its dependencies from the active environment's site-packages through a .pth line
# (its .pth files, the editable install of factory among them, are not run), so nothing is downloaded.
# Run it locally, without pytest: `. .venv/bin/activate && bash scripts/wheel_check.sh` (about a minute).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
START=$SECONDS
say() { echo "wheel_check ($((SECONDS - START)) s): $*"; }

# 1. Build from a copy of what the wheel is made of (links kept), so no build/ or egg-info output left in the
#    checkout can reach the wheel.
mkdir "$WORK/src" "$WORK/dist" "$WORK/run"
(cd "$ROOT" && cp -a pyproject.toml README.md factory recipes spaces "$WORK/src/")
ISOLATION="--no-build-isolation"   # the active setuptools, when new enough: no download
python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null || ISOLATION=""
python -m pip wheel -q --no-deps $ISOLATION -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/*.whl)"
say "built $(basename "$WHEEL")"

# 2. A fresh venv; the wheel alone is installed in it, the dependencies are the active environment's.
DEPS="$(python -c 'import sysconfig; print(*{sysconfig.get_path(k) for k in ("purelib", "platlib")}, sep="\n")')"
python -m venv --without-pip "$WORK/venv"
PY="$WORK/venv/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo "$DEPS" > "$SITE/factory_wheel_check_deps.pth"
python -m pip --python "$PY" install -q --no-deps --no-index "$WHEEL"
say "installed into $SITE"

# 3. From an empty folder outside the source tree.
cd "$WORK/run"
export GRADIO_ANALYTICS_ENABLED=False NO_COLOR=1 COLUMNS=200
FACTORY="$WORK/venv/bin/factory"
"$PY" - "$SITE" <<'EOF'
import sys
from pathlib import Path

import factory

assert Path(factory.__file__).is_relative_to(sys.argv[1]), f"factory imported from {factory.__file__}, not the wheel"
EOF
"$FACTORY" plan aime --run-dir "$WORK/runs" > plan.txt 2>&1 || { cat plan.txt >&2; exit 1; }
grep -q "teacher_rl" plan.txt
say "factory plan aime: ok"
"$FACTORY" validate quickstart-students
if "$FACTORY" validate no-such-recipe 2> unknown.txt; then echo "an unknown recipe name was accepted" >&2; exit 1; fi
grep -q "bundled: aime, four-gpu, one-gpu, quickstart, quickstart-students" unknown.txt

"$PY" - "$SITE" <<'EOF'
import sys
import tempfile
from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file

from factory.compare import write_space
from factory.launch import accelerate_command
from factory.recipe import Launch

site = Path(sys.argv[1])
command = accelerate_command(Launch(preset="ddp", num_processes=2), "factory.worker", ["job.json"])
preset = Path(command[command.index("--config_file") + 1])
assert preset.is_file() and preset.is_relative_to(site), preset
assert command[command.index("--num_processes") + 1] == "2", command
assert load_config_from_file(str(preset)).distributed_type == "MULTI_GPU"  # accelerate reads the shipped preset
print("launch:", " ".join(command))
with tempfile.TemporaryDirectory() as folder:  # what the Hub Space deploy uploads
    files = sorted(p.name for p in write_space(folder, ["a=org/a@v1", "b=org/b@v1"]).iterdir())
space = ["app.py", "compare_data.py", "compare_render.py", "compare_sources.py", "compare_votes.py"]
assert files == sorted([*space, "README.md", "requirements.txt", "sources.json"]), files
EOF
say "two-process launch command and the Space's files: ok"

for side in a b; do
  for i in 0 1 2; do
    printf '{"id": "q%d", "question": "What is %d + %d?", "solution": "\\\\boxed{%d}", ' "$i" "$i" "$i" "$((2 * i))"
    printf '"explanation": "%s adds", "reward": %d.5}\n' "$side" "$i"
  done > "$side.jsonl"
done
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$FACTORY" compare a.jsonl b.jsonl --port "$PORT" --votes votes.jsonl > compare.log 2>&1 &
SERVER=$!
ANSWERED=""
for _ in $(seq 120); do
  if "$PY" -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)' \
    "http://127.0.0.1:$PORT/" 2>/dev/null; then ANSWERED=1; break; fi
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 1
done
if [ -z "$ANSWERED" ]; then cat compare.log >&2; echo "factory compare did not serve its page" >&2; exit 1; fi
say "factory compare served its page on port $PORT"
