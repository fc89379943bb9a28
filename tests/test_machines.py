"""Several machines, one run: only machine 0 plans, writes and publishes; the others join its training worlds.

The protocol is tested with threads and a recorded `run_world`; then two real `factory run` processes on this
host play machine 0 and machine 1 of a two-machine gloo world that warms up a tiny teacher.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_teacher_sft import write_recipe

from factory import claims, machines
from factory.errors import UserError
from factory.recipe import Launch


def launch(rank: int = 0, **changes) -> Launch:
    settings = {"preset": "ddp", "num_machines": 2, "main_process_ip": "127.0.0.1", "join_timeout_s": 5}
    return Launch(**{**settings, **changes, "machine_rank": rank})


def follower(recipe_dir: Path, rank_launch: Launch, worlds: list, outcome: dict) -> threading.Thread:
    def run() -> None:
        try:
            outcome["ran"] = machines.follow(
                recipe_dir, rank_launch, lambda lch, module, job: worlds.append((lch.machine_rank, module, job)), print
            )
        except Exception as exc:  # the test thread reports it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(machines, "POLL_S", 0.02)


def test_machine_0_waits_for_the_others_then_each_world_it_announces_runs_on_them(tmp_path):
    worlds: list = []
    outcome: dict = {}
    thread = follower(tmp_path, launch(1), worlds, outcome)
    with machines.lead(tmp_path, launch(0), has_work=True, log=print):
        machines.announce(launch(0), "factory.stages.teacher_sft_worker", tmp_path / "a" / "job.json")
        machines.announce(launch(0), "factory.stages.distill_worker", tmp_path / "b" / "job.json")
    thread.join(timeout=10)
    assert outcome == {"ran": 2}
    assert worlds == [
        (1, "factory.stages.teacher_sft_worker", (tmp_path / "a" / "job.json").resolve()),
        (1, "factory.stages.distill_worker", (tmp_path / "b" / "job.json").resolve()),
    ]


def test_one_machine_opens_no_session_and_a_run_with_nothing_to_do_still_meets_the_others(tmp_path):
    with machines.lead(tmp_path, Launch(), has_work=True, log=print) as session:
        assert session is None
    assert not (tmp_path / machines.FOLDER).exists()
    outcome: dict = {}
    thread = follower(tmp_path, launch(1), [], outcome)
    with machines.lead(tmp_path, launch(0), has_work=False, log=print) as session:
        assert session is None  # nothing to announce
    thread.join(timeout=10)
    assert outcome == {"ran": 0}  # the follower of a fully cached run returns at once


def test_a_follower_of_a_killed_machine_0_stops_and_its_stale_session_is_never_joined(tmp_path, monkeypatch):
    outcome: dict = {}
    thread = follower(tmp_path, launch(1), [], outcome)
    with machines.lead(tmp_path, launch(0), has_work=True, log=print):
        monkeypatch.setattr(claims, "STALE_S", -1.0)  # machine 0's heartbeat now reads as stale: as if killed
        thread.join(timeout=10)
        assert "machine 0's run stopped without finishing" in str(outcome["error"])
        with pytest.raises(UserError, match="no run of machine 0 appeared"):
            machines.follow(tmp_path, launch(1, join_timeout_s=1), lambda *a: None, print)


def test_a_machine_that_never_joins_stops_machine_0_before_any_stage_naming_the_folder(tmp_path):
    with pytest.raises(UserError, match=r"machine ranks \[1\] did not join within launch.join_timeout_s=1 s"):
        with machines.lead(tmp_path, launch(0, join_timeout_s=1), has_work=True, log=print):
            pytest.fail("no stage may start")
    assert json.loads((tmp_path / machines.FOLDER / machines.DONE).read_text())["ok"] is False


def test_a_machine_that_sees_no_run_of_machine_0_stops_saying_the_run_dir_must_be_shared(tmp_path):
    with pytest.raises(UserError, match="no run of machine 0 appeared in .* same --run-dir on a filesystem"):
        machines.follow(tmp_path, launch(1, join_timeout_s=1), lambda *a: None, print)


def test_a_finished_session_is_not_joined_and_a_restarted_machine_0_is(tmp_path):
    """What an earlier run left must not make a machine follow a run that is over."""
    first = follower(tmp_path, launch(1), [], {})
    with machines.lead(tmp_path, launch(0), has_work=True, log=print):
        pass
    first.join(timeout=10)
    worlds: list = []
    outcome: dict = {}
    thread = follower(tmp_path, launch(1), worlds, outcome)
    time.sleep(0.3)
    assert thread.is_alive() and not worlds  # the finished session is not followed
    with machines.lead(tmp_path, launch(0), has_work=True, log=print):
        machines.announce(launch(0), "m", tmp_path / "job.json")
    thread.join(timeout=10)
    assert outcome == {"ran": 1} and worlds == [(1, "m", (tmp_path / "job.json").resolve())]


def test_machines_disagreeing_on_the_launch_are_refused_naming_the_keys(tmp_path):
    session = machines.Lead(tmp_path, launch(0))
    with claims.Claims(session.folder).hold(machines.LEAD_CLAIM, "machine 0", print):
        session.open()
        with pytest.raises(UserError, match=r"launch.num_processes: 2 here, 1 on machine 0"):
            machines.follow(tmp_path, launch(1, num_processes=2), lambda *a: None, print)


def test_a_failed_run_on_machine_0_ends_the_others_with_an_error(tmp_path):
    outcome: dict = {}
    thread = follower(tmp_path, launch(1), [], outcome)
    with pytest.raises(RuntimeError, match="boom"):
        with machines.lead(tmp_path, launch(0), has_work=True, log=print):
            raise RuntimeError("boom")
    thread.join(timeout=10)
    assert "failed (RuntimeError)" in str(outcome["error"])


def test_a_world_over_machines_launched_outside_a_run_is_refused():
    with pytest.raises(RuntimeError, match="outside `factory run` on machine 0"):
        machines.announce(launch(0), "m", Path("job.json"))


# ----------------------------------------------------------------------------- two real machines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_on_localhost_train_one_teacher_and_machine_0_alone_writes_and_publishes(
    tmp_path, tiny_model_dir, tiny_student_dir
):
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir)
    runs = tmp_path / "runs"
    port = free_port()
    overrides = [
        "launch.preset=ddp",
        "launch.num_machines=2",
        "launch.main_process_ip=127.0.0.1",
        f"launch.main_process_port={port}",
        "launch.join_timeout_s=120",
        "stages.teacher_sft.per_device_batch_size=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def machine(rank: int) -> subprocess.Popen:
        sets = [arg for item in [*overrides, f"launch.machine_rank={rank}"] for arg in ("--set", item)]
        command = [sys.executable, "-m", "factory.cli", "run", str(recipe), "--run-dir", str(runs), *sets]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    one = machine(1)  # the follower first: it waits for machine 0's session
    zero = machine(0)
    out_zero, _ = zero.communicate(timeout=400)
    out_one, _ = one.communicate(timeout=60)
    assert zero.returncode == 0, out_zero[-4000:]
    assert one.returncode == 0, out_one[-4000:]
    assert "machine 1: ran its part of 1 training world(s)" in out_one

    recipe_dir = runs / "sft"
    artifacts = list((recipe_dir / "artifacts").iterdir())
    assert [path.name.split("-")[0] for path in artifacts] == ["teacher_sft"]  # one artifact
    artifact = artifacts[0]
    ranks = [json.loads(path.read_text()) for path in sorted((artifact / "logs" / "ranks").glob("*.json"))]
    assert sorted((r["process_index"], r["machine_rank"]) for r in ranks) == [(0, 0), (1, 1)]
    assert {r["steps"] for r in ranks} == {3}  # both machines trained the same steps
    assert json.loads((artifact / "result.json").read_text())["steps"] == 3
    manifest = json.loads((recipe_dir / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["teacher_sft"] and manifest["stages"]["teacher_sft"]["published"]
    versions = [path.name for path in (recipe_dir / "store").rglob("v*") if path.is_symlink() or path.is_dir()]
    assert versions == ["v1"], versions  # one publish, by machine 0
    assert "teacher_sft: 4 examples, 3 steps" in out_zero and "examples" not in out_one  # machine 0 ran the stage
