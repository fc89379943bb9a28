"""Several machines, one run: machine rank 0 runs the pipeline, the others only join its training workers.

With `launch.num_machines > 1` the same `factory run` starts on every machine, with its own
`launch.machine_rank`, all with the same `--run-dir` on a filesystem they share. Machine 0 plans, takes
the run lock, writes every artifact and publishes; a machine of rank > 0 never plans or writes an
artifact: it follows machine 0's run through files in `runs/<recipe>/machines/` and starts its part of
each multi-machine training world (`accelerate launch --machine_rank K`) when machine 0 announces one.

The files, each written atomically:
- `session.json` (machine 0, at the start of a run that has work): a fresh session id, its `launch:`.
- `rank-K.json` (machine K, once it sees the session): proof that machine K reads the folder machine 0
  writes. Machine 0 starts no stage before every rank has joined, and a machine that sees no session
  stops, both after `launch.join_timeout_s`, naming the folder: a run directory that is not shared
  fails in minutes, not after a stage.
- `launch-N.json` (machine 0, before it launches the N-th training world): the worker module and its
  job file; every machine runs the same world, the collectives keep them in step.
- `done.json` (machine 0, at the end, also on failure): the followers return.
- `lead.json` (machine 0, for its run's whole life): a claim (factory.claims) whose heartbeat tells the
  followers that machine 0 is alive; a session whose claim went stale (machine 0 killed) is never joined,
  and a follower of one stops instead of waiting forever.

A run of several machines always opens a session, even with nothing to run (it then ends at once): the
machines still meet, so a run directory that is not shared shows up on the first run, and a follower
started beside a fully cached run returns instead of waiting for a session that never comes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from factory.artifacts import write_json_atomic
from factory.claims import Claims
from factory.errors import UserError
from factory.recipe import Launch

T = TypeVar("T")
FOLDER = "machines"
SESSION = "session.json"
DONE = "done.json"
LEAD_CLAIM = "lead"  # machine 0's claim on the session folder: its heartbeat (factory.claims)
POLL_S = 1.0
# launch: keys every machine must agree on (machine_rank is each machine's own)
SHARED_LAUNCH = ("preset", "num_processes", "num_machines", "main_process_ip", "main_process_port")
# machine 0's open session while `lead` runs the pipeline: `launch.run_worker` announces each world through it,
# so no stage has to carry the session to its worker launch
_SESSION: ContextVar[Lead | None] = ContextVar("factory_machines_session", default=None)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _stamp() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class Lead:
    """Machine 0's side: open a session, wait for the other machines, announce each training world."""

    def __init__(self, recipe_dir: Path, launch: Launch):
        self.folder = recipe_dir / FOLDER
        self.launch = launch
        self.session = uuid.uuid4().hex
        self.launched = 0

    def clear(self) -> None:
        """What an earlier run left (its session, launches, joins, a dead lead's claim) goes first."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)

    def open(self) -> None:
        """The session the followers join (after the lead's claim exists, so a new session is never stale)."""
        write_json_atomic(
            self.folder / SESSION,
            {"session": self.session, "launch": self.launch.model_dump(mode="json"), **_stamp()},
        )

    def wait_for_machines(self, log: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> None:
        if missing := self._missing():
            log(f"machines: waiting for machine ranks {missing} to join through {self.folder}")
        _poll(
            lambda: not self._missing() or None,
            self.launch.join_timeout_s,
            lambda: UserError(
                f"launch.num_machines={self.launch.num_machines}: machine ranks {self._missing()} did not join "
                f"within launch.join_timeout_s={self.launch.join_timeout_s} s. Start `factory run` with the same "
                f"recipe and --set launch.machine_rank=K on each machine, with a --run-dir that every machine shares "
                f"(this machine writes {self.folder}; a machine that cannot see it never joins)"
            ),
            sleep,
        )
        log(f"machines: all {self.launch.num_machines} machines joined")

    def _missing(self) -> list[int]:
        joined = (_read(self.folder / f"rank-{rank}.json") for rank in range(1, self.launch.num_machines))
        return [rank for rank, entry in enumerate(joined, 1) if not entry or entry.get("session") != self.session]

    def announce(self, module: str, job_file: Path) -> None:
        """Tell the other machines to start their part of the world machine 0 launches next."""
        entry = {"session": self.session, "module": module, "job_file": str(Path(job_file).resolve())}
        write_json_atomic(self.folder / f"launch-{self.launched}.json", entry)
        self.launched += 1

    def close(self, error: BaseException | None) -> None:
        entry = {"session": self.session, "ok": error is None, "error": type(error).__name__ if error else None}
        write_json_atomic(self.folder / DONE, entry)


@contextmanager
def lead(recipe_dir: Path, launch: Launch, has_work: bool, log: Callable[[str], None]) -> Iterator[Lead | None]:
    """Machine 0's session around a run (None on one machine): the other machines join before any stage
    starts; with nothing to run, the session ends as soon as they have."""
    if launch.num_machines == 1:
        yield None
        return
    session = Lead(recipe_dir, launch)
    session.clear()
    with Claims(session.folder).hold(LEAD_CLAIM, f"machine 0's run ({session.session[:8]})", log):
        session.open()
        error: BaseException | None = None
        token = _SESSION.set(session)
        try:
            session.wait_for_machines(log)
            yield session if has_work else None
        except BaseException as exc:
            error = exc
            raise
        finally:
            _SESSION.reset(token)
            session.close(error)


def announce(launch: Launch, module: str, job_file: Path) -> None:
    """Before machine 0 starts a world that spans machines: tell the others (`launch.run_worker` calls this)."""
    if launch.num_machines == 1:
        return
    session = _SESSION.get()
    if session is None:
        raise RuntimeError(
            f"{module}: a {launch.num_machines}-machine world started outside `factory run` on machine 0; "
            "the other machines would never join it"
        )
    session.announce(module, job_file)


def follow(
    recipe_dir: Path,
    launch: Launch,
    run_world: Callable[[Launch, str, Path], None],
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Machine K > 0: join machine 0's session and run every training world it announces, until it is done.

    Returns the number of worlds this machine ran."""
    folder = recipe_dir / FOLDER
    while True:
        session = _wait_for_session(folder, launch, log, sleep)
        write_json_atomic(folder / f"rank-{launch.machine_rank}.json", {"session": session, **_stamp()})
        log(f"machines: machine {launch.machine_rank} joined session {session[:8]} in {folder}")
        ran = _follow_session(folder, session, launch, run_world, log, sleep)
        if ran is not None:
            return ran
        log("machines: machine 0 started a new session (it was restarted); joining that one")


def _follow_session(
    folder: Path,
    session: str,
    launch: Launch,
    run_world: Callable[[Launch, str, Path], None],
    log: Callable[[str], None],
    sleep: Callable[[float], None],
) -> int | None:
    """The number of worlds run once machine 0 is done, or None when a new session replaced this one."""
    ran = 0
    while True:
        entry = _read(folder / f"launch-{ran}.json")
        if entry and entry["session"] == session:
            log(f"machines: machine {launch.machine_rank} runs {entry['module']} ({entry['job_file']})")
            run_world(launch, entry["module"], Path(entry["job_file"]))
            ran += 1
            continue
        done = _read(folder / DONE)
        if done and done["session"] == session:
            if not done["ok"]:
                raise RuntimeError(f"machine 0's run failed ({done['error']}); see its output")
            return ran
        current = _read(folder / SESSION)
        if current and current["session"] != session:
            return None
        if not _lead_alive(folder):
            raise RuntimeError(
                f"machine 0's run stopped without finishing (its claim {folder / LEAD_CLAIM}.json went stale); "
                "restart it, and this machine with it"
            )
        sleep(POLL_S)


def _wait_for_session(folder: Path, launch: Launch, log: Callable[[str], None], sleep: Callable[[float], None]) -> str:
    """The id of machine 0's live session (not one an earlier run finished), checked against this launch."""
    log(f"machines: machine {launch.machine_rank} waiting for machine 0's run in {folder}")

    def live_session() -> dict[str, Any] | None:
        entry, done = _read(folder / SESSION), _read(folder / DONE)
        finished = entry and done and done["session"] == entry["session"]
        return entry if entry and not finished and _lead_alive(folder) else None

    entry = _poll(
        live_session,
        launch.join_timeout_s,
        lambda: UserError(
            f"launch.machine_rank={launch.machine_rank}: no run of machine 0 appeared in {folder} within "
            f"launch.join_timeout_s={launch.join_timeout_s} s. Start machine 0's `factory run` with the same "
            "recipe, and give every machine the same --run-dir on a filesystem they share"
        ),
        sleep,
    )
    _check_same_launch(entry["launch"], launch)
    return entry["session"]


def _lead_alive(folder: Path) -> bool:
    holder = Claims(folder).read(LEAD_CLAIM)
    return holder is not None and holder.live()


def _poll(
    probe: Callable[[], T | None], timeout_s: float, error: Callable[[], Exception], sleep: Callable[[float], None]
) -> T:
    """The first value `probe()` returns other than None, asked every POLL_S; `error()` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise error()
        sleep(POLL_S)
    return found


def _check_same_launch(lead_launch: dict[str, Any], launch: Launch) -> None:
    ours = launch.model_dump(mode="json")
    differing = [key for key in SHARED_LAUNCH if lead_launch.get(key) != ours[key]]
    if differing:
        pairs = ", ".join(
            f"launch.{key}: {ours[key]!r} here, {lead_launch.get(key)!r} on machine 0" for key in differing
        )
        raise UserError(f"this machine's recipe differs from machine 0's: {pairs}; give every machine the same launch:")
