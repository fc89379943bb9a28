"""What the bad-input tests share: the CLI run in-process and its exit-2 check, recipe and data builders.

Used by tests/test_bad_inputs.py (the table of mistakes), test_bad_inputs_files.py (limits, outputs,
full disk, what loads) and test_bad_inputs_secrets.py (the Hub token scrubbed).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from factory.cli import app


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, no traceback, every fragment in the output; returns the message's first line."""
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    lines = output.strip().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("error:") or "Invalid value" in line), 0)
    detail = lines[at + 1].strip() if at + 1 < len(lines) and lines[at].endswith((":", "not valid", "errors)")) else ""
    return f"{lines[at]} {detail}".strip()


def base_recipe(model: Path) -> str:
    """Eight lines, valid: what a case appends starts on line 9."""
    return (
        f"name: bad\nmodels:\n  teacher: {{source: {model}}}\n  student: {{source: {model}}}\n"
        f"  distill_base: {{source: {model}}}\ndata:\n  train: {{source: quickstart, format: quickstart}}\n"
        "  eval: [{name: e, source: quickstart, format: quickstart, split: eval}]\n"
    )


def only_sft(model: Path, data: str, fmt: str) -> str:
    """A recipe whose one stage reads `data` first: data errors surface before any training."""
    thought = "" if fmt == "stratos" else ", thought_column: thought"
    return (
        f"name: bad\nmodels:\n  teacher: {{source: {model}}}\n  student: {{source: {model}}}\n"
        f"  distill_base: {{source: {model}}}\ndata:\n  train: {{source: {data}, format: {fmt}{thought}}}\nstages:\n"
        "  teacher_rl: {enabled: false}\n  generate: {enabled: false}\n  distill: {enabled: false}\n"
        "  evaluate: {enabled: false}\n"
    )


def bomb(levels: int = 9) -> str:
    """Billion laughs: nine aliases of nine aliases..., 9**9 strings once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


GOOD = {"question": "What is 2 + 2?", "solution": "\\boxed{4}", "explanation": "Two and two make four."}
