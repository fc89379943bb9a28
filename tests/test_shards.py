"""Shards and runs of the generate stage coordinate through claims: a shard claimed by a live process
is not generated again by a run (the run waits for it), a dead holder's claim is taken over with its
finished rows kept, and the merge keeps every question's candidates exactly once, saying what it discarded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from generating import kept_ids, plan_for, read, write_recipe

from factory.artifacts import is_complete, read_meta
from factory.claims import STALE_S, Claims, Holder, process_running
from factory.errors import UserError
from factory.pipeline import execute
from factory.recipe import load_recipe
from factory.stages import generate

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def put_claim(claims: Claims, name: str, host: str, pid: int, age: float) -> None:
    """A claim file as another process would have left it."""
    claims.folder.mkdir(parents=True, exist_ok=True)
    holder = Holder(name, "another process", host, pid, f"token-{host}-{pid}", time.time() - age)
    claims.path(name).write_text(json.dumps(asdict(holder)))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_claim_is_exclusive_while_its_holder_lives_and_taken_over_when_stale(tmp_path):
    claims, logs = Claims(tmp_path / "claims"), []
    with claims.hold("s1of2", "generate-shard 1/2") as own:
        assert claims.live() == {"s1of2": own}
        with pytest.raises(
            UserError, match=rf"s1of2 in .* is claimed by generate-shard 1/2 \(host .*, pid {os.getpid()}"
        ):
            with claims.hold("s1of2", "a second process"):
                pass
        with claims.hold("s0of2", "generate-shard 0/2"):  # another shard is free
            assert sorted(claims.live()) == ["s0of2", "s1of2"]
    assert claims.holders() == {}  # released

    here = socket.gethostname()
    put_claim(claims, "s1of2", here, dead_pid(), age=1)  # this machine, process gone: stale at once
    assert claims.live() == {}
    with claims.hold("s1of2", "the next claimant", logs.append) as own:
        assert claims.read("s1of2") == own
    assert any("taking over the stale claim s1of2" in line for line in logs)

    put_claim(claims, "s1of2", "node-b", 1, age=5)  # another machine: live while its heartbeat is fresh
    with pytest.raises(UserError, match=r"claimed by another process \(host node-b, pid 1, heartbeat 5 s ago\)"):
        with claims.hold("s1of2", "here"):
            pass
    put_claim(claims, "s1of2", "node-b", 1, age=STALE_S + 1)  # ... and stale once it is older than STALE_S
    with claims.hold("s1of2", "here", logs.append):
        pass
    assert "node-b" in logs[-1]

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, not yet reaped: not running
    deadline = time.monotonic() + 30
    while process_running(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_running(zombie.pid) and process_running(os.getpid())
    zombie.wait()


def shard_process(recipe: Path, runs: Path, repo_root: Path) -> subprocess.Popen:
    """`factory generate-shard RECIPE --shard 1/2` in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "factory.cli",
        "generate-shard",
        str(recipe),
        "--shard",
        "1/2",
        "--run-dir",
        str(runs),
    ]
    return subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, what: str, child: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child is None or child.poll() is None, (
            f"the shard process ended before {what}: {child.stderr.read()[-2000:]}"
        )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def part_ids(folder: Path, prefix: str) -> set[str]:
    return {
        i for part in folder.glob(f"{prefix}*.parquet") for i in pq.read_table(part, columns=["id"])["id"].to_pylist()
    }


def shard_ids(recipe: Path, index: int, count: int) -> set[str]:
    from factory.stages.generate_worker import load_questions

    return {row["id"] for row in load_questions(load_recipe(recipe), log=lambda m: None).owned(index, count)}


@pytest.fixture
def two_candidates(tmp_path, tiny_model_dir, tiny_student_dir, data_dir):
    """write(limit, **generate) -> (recipe, runs, artifact): a recipe whose generate stage keeps two candidates
    a question (drop_unclosed off), its run folder, and the folder of its generate artifact."""

    def write(limit: int, **generate) -> tuple[Path, Path, Path]:
        settings = {"n": 2, "drop_unclosed": False, **generate}
        recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir, data_dir, limit=limit, **settings)
        runs = tmp_path / "runs"
        return recipe, runs, plan_for(recipe, runs).stage("generate").artifact_dir

    return write


def test_a_run_waits_for_a_shard_claimed_by_a_live_process(two_candidates, repo_root, monkeypatch):
    recipe, runs, artifact = two_candidates(limit=8, batch_size=2)
    claim = artifact / "work" / "claims" / "s1of2.json"
    child = shard_process(recipe, runs, repo_root)
    wait_for(claim.is_file, "its claim", child)
    os.kill(child.pid, signal.SIGSTOP)  # alive, holding shard 1/2, generating nothing while the run starts
    monkeypatch.setattr(generate, "WAIT_S", 0.2)
    logs: list[str] = []
    runner = threading.Thread(target=lambda: execute(plan_for(recipe, runs), str(recipe), log=logs.append))
    runner.start()
    try:
        wait_for(
            lambda: any("generate: waiting for s1of2: generate-shard 1/2" in line for line in logs), "the run to wait"
        )
        generated = artifact / "work" / "generated"
        assert part_ids(generated, "") == part_ids(generated, "s0of1-") == shard_ids(recipe, 0, 2)  # the rest, only
        assert runner.is_alive()
    finally:
        os.kill(child.pid, signal.SIGCONT)
    assert child.wait(timeout=300) == 0, child.stderr.read()[-3000:]
    runner.join(timeout=300)
    assert not runner.is_alive() and is_complete(artifact)
    assert any("generate: s1of2 ended (generate-shard 1/2)" in line for line in logs)
    assert part_ids(generated, "s1of2-") == shard_ids(recipe, 1, 2) and not part_ids(generated, "s0of1-") & shard_ids(
        recipe, 1, 2
    )
    candidates = read(artifact / "data" / "candidates")
    ids = kept_ids(recipe)
    assert [row["id"] for row in read(artifact / "data")] == ids
    assert sorted((c["id"], c["candidate_index"]) for c in candidates) == sorted((i, j) for i in ids for j in range(2))
    assert read_meta(artifact).metrics["qa"]["duplicates_removed"] == 0
    assert not claim.exists() and not (artifact / "work" / "claims" / "run.json").exists()


def test_a_dead_holders_shard_is_taken_over_keeping_its_rows_and_the_merge_is_exact(two_candidates, repo_root):
    recipe, runs, artifact = two_candidates(limit=16, batch_size=1)
    generated, scored = artifact / "work" / "generated", artifact / "work" / "scored"
    child = shard_process(recipe, runs, repo_root)
    wait_for(lambda: len(list(generated.glob("s1of2-*.parquet"))) >= 2, "two finished chunks", child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = {part.name: part.stat().st_mtime_ns for part in generated.glob("s1of2-*.parquet")}
    mine = shard_ids(recipe, 1, 2)
    assert 2 <= len(before) < len(mine), "the shard finished before it could be killed"
    assert (artifact / "work" / "claims" / "s1of2.json").is_file()  # the dead holder's claim stays behind

    logs: list[str] = []
    assert "generate shard 1/2 done" in generate.run_shard(plan_for(recipe, runs), 1, 2, log=logs.append)
    assert any(line.startswith("taking over the stale claim s1of2 of generate-shard 1/2") for line in logs)
    after = {part.name: part.stat().st_mtime_ns for part in generated.glob("s1of2-*.parquet")}
    assert {name: after[name] for name in before} == before  # the finished chunks were kept, not redone
    assert part_ids(generated, "s1of2-") == part_ids(scored, "s1of2-") == mine
    assert len(after) == len(mine)  # one chunk a question: each generated once

    # the same shard's rows written twice (as by a holder that lost its claim and kept going): the merge drops one copy
    twice = sorted(scored.glob("s1of2-*.parquet"))[0]
    again = twice.with_name(f"{twice.stem}-again.parquet")
    shutil.copy(twice, again)
    read_second = max(twice.name, again.name)  # parts are read in name order; the second copy's rows are dropped
    logs.clear()
    execute(plan_for(recipe, runs), str(recipe), log=logs.append)
    assert is_complete(artifact)
    extra = pq.read_metadata(twice).num_rows
    assert read_meta(artifact).metrics["qa"]["duplicates_removed"] == extra == 2
    assert any(f"discarded {extra} duplicate rows" in line and f": {read_second} ({extra})" in line for line in logs)
    assert any(
        line.startswith("[done] generate") and f"merge discarded {extra} duplicate rows" in line for line in logs
    )
    ids = kept_ids(recipe)
    candidates = read(artifact / "data" / "candidates")
    assert [row["id"] for row in read(artifact / "data")] == ids
    assert sorted((c["id"], c["candidate_index"]) for c in candidates) == sorted((i, j) for i in ids for j in range(2))
    assert part_ids(generated, "s0of1-") == shard_ids(recipe, 0, 2)  # the run did the rest


def test_a_shard_started_during_a_run_leaves_its_questions_to_the_run(two_candidates):
    recipe, runs, artifact = two_candidates(limit=8)
    plan = plan_for(recipe, runs)
    claims, logs = generate.shard_claims(artifact), []
    put_claim(claims, "s0of2", socket.gethostname(), dead_pid(), age=1)  # a dead shard's: removed on the way
    with claims.hold("run", "factory run of gen-test"):  # a live run, this process
        message = generate.run_shard(plan, 1, 2, log=logs.append)
        assert sorted(claims.holders()) == ["run"]  # s1of2 released, s0of2 removed
    assert "4 of its questions are claimed by run: factory run of gen-test" in message
    assert any(line.startswith("generate: removed the stale claim s0of2 of another process") for line in logs)
    assert not list((artifact / "work" / "generated").glob("*.parquet")) and claims.holders() == {}


def test_a_claim_made_later_never_takes_an_earlier_claims_questions(tmp_path):
    """Whatever order two processes read each other's claims in (a shard paused between claiming and reading
    sees the run's later claim), the earlier claim keeps the questions both cover."""
    claims = Claims(tmp_path)
    with claims.hold("s1of2", "generate-shard 1/2") as shard, claims.hold("run", "factory run") as run:
        assert shard.precedes(run) and not run.precedes(shard)
        assert generate.other_claims(claims, shard, print) == {}
        assert set(generate.other_claims(claims, run, print)) == {"s1of2"}
