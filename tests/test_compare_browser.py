"""The compare app as `factory compare` serves it: the CLI process answers gradio_client on the given port.

The page itself is driven in a real Chromium by tests/test_compare_space_repo.py, on the Space as the Hub
runs it (the same app.py): one browser session for the whole suite.
"""

from __future__ import annotations

import sys

import pytest
from test_compare import _free_port, explanation, serving, traces  # noqa: F401 - `traces` is a fixture


@pytest.fixture(scope="module")
def cli_app(traces, tmp_path_factory):
    """`factory compare base rlt --port N` running in a subprocess; yields (url, gradio_client Client)."""
    port, votes = _free_port(), tmp_path_factory.mktemp("votes") / "votes.jsonl"
    command = [
        sys.executable,
        "-m",
        "factory.cli",
        "compare",
        f"base={traces['base']}",
        f"rlt={traces['rlt']}",
        "--port",
        str(port),
        "--votes",
        str(votes),
    ]
    with serving(command, port) as client:
        yield f"http://127.0.0.1:{port}/", client


def test_cli_serves_the_app_on_the_given_port(cli_app):
    _, client = cli_app
    shown = client.predict("q042", 0, 1, [], api_name="/go_to")  # [] : explanations unmarked
    assert (
        "q042" in shown[2]
        and shown[5] == explanation("base", 42).strip()
        and shown[6] == explanation("rlt", 42).strip()
    )
