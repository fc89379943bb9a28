"""bench/data_scale.py at toy size: both hand-overs run in their own processes and train on the same tokens."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def test_data_scale_bench_runs_small(repo_root):
    command = [sys.executable, "bench/data_scale.py", "--rows", "12", "--thought-tokens", "120"]
    command += ["--max-length", "1024", "--tokenizer", "tiny"]
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "the same on both paths" in next(line for line in lines if line.startswith("tokens trained on"))
    rss = {
        name: float(value.replace(",", ""))
        for name, value in re.findall(r"(old rank|new rank).*peak RSS ([\d,]+)", done.stdout)
    }
    assert set(rss) == {"old rank", "new rank"} and min(rss.values()) > 100  # MiB: the interpreter alone is more
    ratio = re.fullmatch(r"peak RSS per rank, old / new: ratio=([\d.]+)", lines[-1])
    assert ratio and float(ratio.group(1)) == pytest.approx(rss["old rank"] / rss["new rank"], abs=0.02)
