"""The Hub token never shows: an unexpected Hub answer is one message without it, and a bug's traceback and
logs are scrubbed.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bad_inputs import GOOD, base_recipe, jsonl, write
from commands import factory, python

ROOT = Path(__file__).resolve().parent.parent


OTHERS_TOKEN = "hf_SomeoneElsesToken" + "x" * 14  # the shape of a real token: hf_ and 34 characters


class EchoingHub(BaseHTTPRequestHandler):
    """A Hub endpoint that answers every request 418 with the request's headers in the body."""

    def _answer(self):
        body = json.dumps({"error": f"unexpected; you sent {dict(self.headers)!r}; also try {OTHERS_TOKEN}"}).encode()
        self.send_response(418)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def echoing_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hub_env(tmp_path: Path, endpoint: str, token: str | None) -> dict[str, str]:
    """A real process's environment: online against `endpoint`, the token in HF_TOKEN or else in the login cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    home = tmp_path / "hf-home"
    write(home / "token", "loginCacheSecret0123456789")
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", COLUMNS="200", NO_COLOR="1")
    if token:
        env["HF_TOKEN"] = token
    return env


HUB_COMMANDS = {
    "plan resolves a Hub model": (["plan", "RECIPE", "--run-dir", "RUNS"], "the Hub answered HTTP 418 to GET"),
    "run --push checks the token": (
        ["run", "LOCAL", "--push", "--run-dir", "RUNS"],
        "the Hub answered HTTP 418 to GET",
    ),
    "score downloads a Hub model": (
        ["score", "--teacher", "org/teacher", "--student", "org/teacher", "--data", "DATA"],
        "answered HTTP 418",
    ),
}


@pytest.mark.parametrize("token", ["hf_writeTokenOfTheUser9876", None], ids=["HF_TOKEN", "login cache"])
@pytest.mark.parametrize("command", HUB_COMMANDS)
def test_unexpected_hub_status_is_one_message_without_the_token(tmp_path, echoing_hub, tiny_model_dir, command, token):
    secret = token or "loginCacheSecret0123456789"
    local = base_recipe(tiny_model_dir).replace("name: bad", "name: bad\nhub: {namespace: someone}")
    files = {
        "RECIPE": write(
            tmp_path / "hub.yaml", base_recipe(tmp_path).replace(f"{{source: {tmp_path}}}", "{source: org/teacher}")
        ),
        "LOCAL": write(tmp_path / "local.yaml", local + "stages: {teacher_rl: {enabled: false}}\n"),
        "DATA": write(tmp_path / "rows.jsonl", jsonl(GOOD)),
        "RUNS": tmp_path / "runs",
    }
    argv, expected = HUB_COMMANDS[command]
    argv = [str(files.get(arg, arg)) for arg in argv]
    result = factory(*argv, env=hub_env(tmp_path, echoing_hub, token), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and expected in output
    assert secret not in output and OTHERS_TOKEN not in output
    error = next(line for line in output.splitlines() if line.startswith("error:"))
    print(f"hub | {command} ({'HF_TOKEN' if token else 'login cache'}) | 2 | {error[:160]}")


BUG = """
import logging, sys
import factory.recipe
TOKEN = sys.argv[1]
def broken(*args, **kwargs):
    logging.getLogger("factory.test").warning("the server said %s", "authorization: Bearer " + TOKEN)
    raise RuntimeError("request failed; headers: {'authorization': 'Bearer " + TOKEN + "'}")
factory.recipe.load_recipe = broken
sys.argv = ["factory", "validate", "any.yaml"]
from factory.cli import main
main()
"""


def test_a_bugs_traceback_and_logs_are_scrubbed(tmp_path):
    env = hub_env(tmp_path, "http://127.0.0.1:9", "plainTokenValue-XYZ")
    result = python("-c", BUG, "plainTokenValue-XYZ", env=env, cwd=ROOT)
    assert result.returncode == 1  # a bug keeps its traceback...
    assert "Traceback" in result.stderr and "RuntimeError: request failed" in result.stderr
    assert "plainTokenValue-XYZ" not in result.stderr + result.stdout  # ...without the token
    assert result.stderr.count("Bearer ***") == 2
