"""The loopback Hub over HTTP: a threaded HTTP/1.1 server on 127.0.0.1 that answers through the router,
records every request, and injects faults.

Faults: `inject()` makes the Nth matching request fail with a 5xx, drop its connection before handling
it, or handle it and drop the connection before answering (the response is lost). A bug of this server
answers 500 and is kept in `crashes`, which the `hub_server` fixture turns into a test failure.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .routes import Router
from .storage import Hub, HubError, Repo, User


@dataclass
class Fault:
    """What happens to the matching requests: 'error' (a 5xx), 'drop' (no answer), 'drop_after' (handled, no answer)."""

    pattern: re.Pattern
    kind: str
    status: int
    skip: int
    times: int

    def take(self, request_line: str) -> bool:
        if self.times <= 0 or not self.pattern.search(request_line):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        self.times -= 1
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Quiet: the request log is kept on the HubServer instead of stderr."""

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self, method: str) -> None:
        owner: HubServer = self.server.owner
        body = self._read_body()
        fault = owner._take_fault(f"{method} {self.path}")
        if fault is not None and fault.kind == "drop":
            return self._drop(method)
        if fault is not None and fault.kind == "error":
            return self._send(method, fault.status, {}, {"error": "injected server error"})
        try:
            status, headers, payload = owner.router.handle(method, self.path, self.headers, body)
        except HubError as exc:
            status, headers, payload = exc.status, {}, {"error": str(exc)}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            if exc.extra.get("message_header"):
                headers["X-Error-Message"] = str(exc)
            if exc.extra.get("repo_commit"):
                headers["X-Repo-Commit"] = exc.extra["repo_commit"]
            if exc.extra.get("content_range"):
                headers["Content-Range"] = exc.extra["content_range"]
            for key in ("url", "errors"):
                if key in exc.extra:
                    payload[key] = exc.extra[key]
        except Exception as exc:  # a bug of this server: answer 500 and keep it for the fixture to report
            owner.crashes.append(f"{method} {self.path}: {traceback.format_exc()}")
            status, headers, payload = 500, {}, {"error": f"loopback hub bug: {exc!r}"}
        if fault is not None and fault.kind == "drop_after":
            return self._drop(method)
        self._send(method, status, headers, payload)

    def _send(self, method: str, status: int, headers: dict[str, str], payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not isinstance(payload, bytes):
            headers.setdefault("Content-Type", "application/json")
        self.server.owner._log(method, self.path, status)  # before answering: the client may look right after
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _drop(self, method: str) -> None:
        self.server.owner._log(method, self.path, None)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HubServer


class HubServer:
    """The loopback Hub running in a thread. `endpoint` goes into HF_ENDPOINT, `token` into HF_TOKEN."""

    def __init__(self, storage: Path, user: str = "factory-tester", orgs: tuple[str, ...] = ("factory-org",)):
        self.hub = Hub(storage)
        self.router = Router(self.hub)
        self.token = "hf_loopback" + hashlib.sha256(str(storage).encode()).hexdigest()[:24]
        self.read_token = self.token + "read"
        self.user = user
        self.hub.tokens[self.token] = User(user, "write", orgs)
        self.hub.tokens[self.read_token] = User(user, "read", orgs)
        self.requests: list[tuple[str, str, int | None]] = []  # (method, path, status); None = dropped
        self.crashes: list[str] = []  # tracebacks of this server's own bugs
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.hub.endpoint = self.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, match: str, kind: str = "error", *, nth: int = 1, times: int = 1, status: int = 500) -> None:
        """From the `nth` request matching the regex `match` ("METHOD /path?query") on, fault `times` requests."""
        if kind not in ("error", "drop", "drop_after"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._faults_lock:
            self._faults.append(Fault(re.compile(match), kind, status, nth - 1, times))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, request_line: str) -> Fault | None:
        with self._faults_lock:
            fired = [f for f in self._faults if f.take(request_line)]  # each fault counts every matching request
        return fired[0] if fired else None

    def _log(self, method: str, path: str, status: int | None) -> None:
        with self._faults_lock:
            self.requests.append((method, path, status))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """Direct access to a repo's commits and refs, for assertions."""
        return self.hub.repos[(repo_type, repo_id)]
