"""Claims on shared work: which process, on which machine, is doing a piece of it right now.

`factory generate-shard` on many nodes and `factory run` share one artifact folder (a shared file
system). A claim is a file `<folder>/<name>.json`, written aside and hard-linked into place (atomic,
and refused when the name exists, on local file systems and NFS alike), naming its holder (what, host, pid) and a heartbeat that a daemon thread of the
holder rewrites every `HEARTBEAT_S` seconds. A claim is live while its heartbeat is younger than
`STALE_S` and, on the holder's own machine, its process still runs; otherwise anyone may take it over
(the holder died: kill -9, a lost node). A file lock would not do: flock is per machine on most
shared file systems and dies with no trace of who held it.

Taking over renames the stale file away (atomic: of two claimants only one moves it) and checks that
what it moved is the claim it judged stale; a live claim moved by a race is put back. Clocks of the
machines sharing a folder must agree to well within `STALE_S`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.errors import UserError

HEARTBEAT_S = 30.0
STALE_S = 300.0


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, as its file says."""

    name: str
    what: str
    host: str
    pid: int
    token: str
    heartbeat: float
    claimed: float = 0.0  # when the claim was made; the heartbeat moves, this does not

    def precedes(self, other: Holder) -> bool:
        """Whether this claim was made before `other` (ties broken by name): the earlier claim keeps the
        questions both cover, whatever order the two processes read each other's claims in."""
        return (self.claimed, self.name) < (other.claimed, other.name)

    def live(self, now: float | None = None) -> bool:
        if (now or time.time()) - self.heartbeat > STALE_S:
            return False
        return self.host != socket.gethostname() or process_running(self.pid)

    def describe(self) -> str:
        return f"{self.what} (host {self.host}, pid {self.pid}, heartbeat {time.time() - self.heartbeat:.0f} s ago)"


def process_running(pid: int) -> bool:
    """Whether `pid` is a running process on this machine (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: the signal test is all there is
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Claims:
    """The claim files of one folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> Holder | None:
        return _load(self.path(name), name)

    def holders(self) -> dict[str, Holder]:
        """Every claim in the folder, live or stale."""
        if not self.folder.is_dir():
            return {}
        found = {
            path.name[: -len(".json")]: self.read(path.name[: -len(".json")]) for path in self.folder.glob("*.json")
        }
        return {name: holder for name, holder in found.items() if holder is not None}

    def live(self) -> dict[str, Holder]:
        now = time.time()
        return {name: holder for name, holder in self.holders().items() if holder.live(now)}

    def take_over(self, stale: Holder) -> bool:
        """Remove `stale`'s claim file, if it still is that claim; True when this call removed it."""
        moved = self.folder / f".{stale.name}.{uuid.uuid4().hex}.taken"
        try:
            os.rename(self.path(stale.name), moved)
        except FileNotFoundError:
            return False
        found = _load(moved, stale.name)
        if found is not None and found.token != stale.token:  # a claim made since we looked: put it back
            try:
                os.link(moved, self.path(stale.name))
            except FileExistsError:
                pass
            moved.unlink(missing_ok=True)
            return False
        moved.unlink(missing_ok=True)
        return True

    @contextmanager
    def hold(self, name: str, what: str, log: Callable[[str], None] = print) -> Iterator[Holder]:
        """Claim `name` for the life of the block (taking over a stale claim, logged); a UserError naming
        the holder when a live process has it."""
        holder = self._create(name, what, log)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(holder, stop, log), daemon=True, name=f"claim-{name}")
        beat.start()
        try:
            yield holder
        finally:
            stop.set()
            beat.join()
            current = self.read(name)
            if current is not None and current.token == holder.token:
                self.path(name).unlink(missing_ok=True)

    def _create(self, name: str, what: str, log: Callable[[str], None]) -> Holder:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lost race with another claimant: look again
            now = time.time()
            holder = Holder(name, what, socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now)
            tmp = self._write_aside(holder)
            try:
                os.link(tmp, self.path(name))
                return holder
            except FileExistsError:
                current = self.read(name)
                if current is None:
                    continue
                if current.live():
                    raise UserError(
                        f"{name} in {self.folder} is claimed by {current.describe()}; wait for it to finish"
                    ) from None
                if self.take_over(current):
                    log(f"taking over the stale claim {name} of {current.describe()}")
            finally:
                tmp.unlink(missing_ok=True)
        raise UserError(f"{name} in {self.folder}: other processes keep claiming it at the same time; try again")

    def _beat(self, holder: Holder, stop: threading.Event, log: Callable[[str], None]) -> None:
        while not stop.wait(HEARTBEAT_S):
            current = self.read(holder.name)
            if current is None or current.token != holder.token:
                by = current.describe() if current else "its file was removed"
                log(f"warning: the claim {holder.name} of this process was taken over: {by}")
                return
            os.replace(
                self._write_aside(Holder(**{**asdict(holder), "heartbeat": time.time()})), self.path(holder.name)
            )

    def _write_aside(self, holder: Holder) -> Path:
        """The claim's content in a file of its own, complete on disk, to be linked or renamed into place."""
        tmp = self.folder / f".{holder.name}.{holder.token}.{time.monotonic_ns()}.tmp"
        with tmp.open("w") as file:
            file.write(json.dumps(asdict(holder)))
            file.flush()
            os.fsync(file.fileno())
        return tmp


def _load(path: Path, name: str) -> Holder | None:
    """The claim in `path`; None when there is none. A file that does not parse (a disk error) is judged by
    its age alone."""
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        try:
            return Holder(name, f"an unreadable claim file {path}", "?", 0, "", path.stat().st_mtime)
        except FileNotFoundError:
            return None
