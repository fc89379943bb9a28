"""A user's mistakes with files, through the real CLI: an alias bomb and a 100,000-key recipe refused in bounded
time and memory, outputs that would destroy an input refused, a full disk named (the rerun resumes), and
the inputs that do load.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from bad_inputs import GOOD, assert_user_error, base_recipe, bomb, cli, jsonl, only_sft, parquet_bytes, write
from publishing import RUN_RECIPE, payload_stages

PY = sys.executable


# ------------------------------------------------------------------------------------ limits


LIMITS = """
import json, sys, time, tracemalloc
from factory.errors import UserError
from factory.recipe import load_recipe
for path in sys.argv[1:]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load_recipe(path)
        message = None
    except UserError as exc:
        message = str(exc)
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"path": path, "seconds": seconds, "peak_mb": peak / 2**20, "message": message}))
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"max_rss_mb": peak_kb / 1024}))  # not ru_maxrss: Linux carries the parent's over fork and exec
"""


def base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return "k" + digits


def test_alias_bomb_and_100000_keys_are_refused_in_bounded_time_and_memory(tmp_path, tiny_model_dir):
    laughs = write(tmp_path / "laughs.yaml", base_recipe(tiny_model_dir) + bomb())
    wide = write(
        tmp_path / "wide.yaml", base_recipe(tiny_model_dir) + "".join(f"{base36(i)}: 0\n" for i in range(100_000))
    )
    assert wide.stat().st_size < 1 << 20  # refused for its keys, not its size
    result = subprocess.run([PY, "-c", LIMITS, str(laughs), str(wide)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    *loads, rss = [json.loads(line) for line in result.stdout.splitlines()]
    for load in loads:
        print(
            f"{Path(load['path']).name}: {load['seconds']:.2f} s, peak {load['peak_mb']:.1f} MB traced; {load['message']}"
        )
        assert "more than 10000 YAML nodes" in load["message"]
        assert load["seconds"] < 5 and load["peak_mb"] < 500
    print(f"max RSS of the process {rss['max_rss_mb']:.0f} MB")
    assert rss["max_rss_mb"] < 500


# ------------------------------------------------------------------------------ input kept


def test_outputs_never_overwrite_inputs(tmp_path, tiny_model_dir):
    data = write(tmp_path / "rows.jsonl", jsonl(GOOD))
    before = data.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    hard = tmp_path / "hard.jsonl"
    os.link(data, hard)
    for out in (data, link, hard):
        result = cli("score", "--teacher", tiny_model_dir, "--student", tiny_model_dir, "--data", data, "--out", out)
        assert_user_error(result, f"--out {out} is the data file {data}")
    assert data.read_bytes() == before

    votes = cli("compare", f"a={data}", f"b={link}#default", "--votes", hard)
    assert_user_error(votes, f"--votes {hard} is the source")
    artifact = tmp_path / "artifact"
    (artifact / "data").mkdir(parents=True)
    inside = cli("compare", str(artifact), str(data), "--votes", artifact / "votes.jsonl")
    assert_user_error(inside, "--votes", "is inside the source")
    assert data.read_bytes() == before and not (artifact / "votes.jsonl").exists()

    folder = tmp_path / "dataset"
    write(folder / "train.jsonl", jsonl({**GOOD, "thought": "t"}))
    recipe = write(tmp_path / "r.yaml", only_sft(tiny_model_dir, str(folder), "hub"))
    assert_user_error(cli("plan", recipe, "--run-dir", folder / "runs"), "--run-dir", "is inside data.train")
    assert_user_error(cli("run", recipe, "--run-dir", recipe), "--run-dir", "is a file")
    assert not (folder / "runs").exists()


# ------------------------------------------------------------------------------- full disk


def test_full_disk_names_the_path_and_the_rerun_resumes(tmp_path, tiny_model_dir, monkeypatch):
    import factory.artifacts
    from factory.stages import REGISTRY, load_stages

    load_stages()
    for name, stage in payload_stages(tiny_model_dir).items():
        monkeypatch.setitem(REGISTRY, name, stage)
    write_json = factory.artifacts.write_json_atomic
    full = {"distill"}

    def filling_disk(path, data):
        if path.name == "artifact.json" and data.get("stage") in full:
            full.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json(path, data)

    monkeypatch.setattr(factory.artifacts, "write_json_atomic", filling_disk)
    recipe = write(tmp_path / "tiny.yaml", RUN_RECIPE.replace("MODEL", str(tiny_model_dir)))
    runs = tmp_path / "runs"
    first = cli("run", recipe, "--run-dir", runs)
    print(assert_user_error(first, f"no space left on the device holding {runs}", "what was finished is kept"))
    assert "generate: published" in first.output and "distill: published" not in first.output
    again = cli("run", recipe, "--run-dir", runs)
    assert again.exit_code == 0, again.output
    for line in (
        "teacher_sft: complete artifact",
        "generate: complete artifact",
        "distill: interrupted run",
        "evaluate: published",
    ):
        assert line in again.output, line  # finished stages are kept, the interrupted one resumes


def test_full_disk_while_scoring_names_the_output(tmp_path, tiny_model_dir, monkeypatch):
    import json as json_module

    import factory.score

    data = write(tmp_path / "rows.jsonl", jsonl(GOOD))
    real_dumps = json_module.dumps

    class FullDisk:
        @staticmethod
        def dumps(record, *args, **kwargs):
            if "reward" in record:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_dumps(record, *args, **kwargs)

    monkeypatch.setattr(factory.score, "json", FullDisk)
    out = tmp_path / "scores" / "out.jsonl"
    result = cli("score", "--teacher", tiny_model_dir, "--student", tiny_model_dir, "--data", data, "--out", out)
    assert_user_error(result, f"no space left on the device holding {out}", "run the same command again")


# ------------------------------------------------------------------------- what does load


def test_a_parquet_file_with_the_columns_loads_like_its_jsonl(tmp_path):
    from factory.data import load_rows
    from factory.recipe import DataSource

    rows = [{"question": f"What is {i} + 1?", "solution": f"\\boxed{{{i + 1}}}"} for i in range(3)]
    parquet = write(tmp_path / "train.parquet", parquet_bytes(rows))
    lines = write(tmp_path / "train.jsonl", jsonl(*rows))
    array = write(tmp_path / "train.json", json.dumps(rows, indent=2))
    loaded = [
        load_rows(DataSource(source=str(path), format=fmt))
        for path, fmt in ((parquet, "hub"), (lines, "jsonl"), (array, "jsonl"))
    ]
    assert loaded[0] == loaded[1] == loaded[2] and len(loaded[0]) == 3


def test_an_empty_explanation_is_scored(tmp_path, tiny_model_dir):
    data = write(tmp_path / "rows.jsonl", jsonl(GOOD, {**GOOD, "explanation": ""}))
    out = tmp_path / "out.jsonl"
    result = cli("score", "--teacher", tiny_model_dir, "--student", tiny_model_dir, "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["explanation_tokens"] for r in records][1] == 0
    assert all(r["reward"] == r["reward"] for r in records)  # finite, scored, not skipped
