"""A user's mistakes through the real CLI: exit 2, one message naming what to fix, never a traceback.

Table-driven: malformed recipes, data files, model folders and command options, each naming the
recipe key and line, the data row or the path in its message. Then the limits (an alias bomb and a
100,000-key recipe refused in bounded time and memory), outputs that would destroy an input, a full
disk (the rerun resumes), and the Hub token scrubbed from whatever a server echoes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


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


# ------------------------------------------------------------------------------------ recipes


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


def nested(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}x: 1\n"


@dataclass
class Case:
    group: str
    name: str
    make: Callable[[Path, Path], tuple[list[str], list[str]]]  # (tmp, model) -> (argv, fragments)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def validate(name: str, extra: str | bytes | Callable[[Path], str], fragments: list[str], *options: str) -> Case:
    """`factory validate` on the base recipe plus `extra` (a callable gets the model and returns the whole text)."""

    def make(tmp: Path, model: Path):
        if callable(extra):
            content: str | bytes = extra(model)
        elif isinstance(extra, bytes):
            content = base_recipe(model).encode() + extra
        else:
            content = base_recipe(model) + extra
        path = write(tmp / "recipe.yaml", content)
        return ["validate", path, *options], [f.replace("RECIPE", str(path)) for f in fragments]

    return Case("recipe", name, make)


def run_data(name: str, fmt: str, filename: str, content: str | bytes | None, fragments: list[str]) -> Case:
    """`factory run` of a teacher-SFT-only recipe on a data file (None: the file does not exist)."""

    def make(tmp: Path, model: Path):
        data = tmp / "data" / filename
        if content is not None:
            write(data, content)
        recipe = write(tmp / "recipe.yaml", only_sft(model, str(data), fmt))
        return ["run", recipe, "--run-dir", tmp / "runs"], [f.replace("DATA", str(data)) for f in fragments]

    return Case("data", name, make)


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


def score_case(name: str, fragments: list[str], rows: str | bytes | None = None, filename: str = "rows.jsonl",
               options: Callable[[Path], list[str]] = lambda tmp: [], teacher: Callable[[Path, Path], str] | None = None) -> Case:  # fmt: skip
    """`factory score` on a data file (None: absent) with extra options; `teacher` may replace the model."""

    def make(tmp: Path, model: Path):
        data = tmp / filename
        if rows is not None:
            write(data, rows)
        source = teacher(tmp, model) if teacher else str(model)
        argv = ["score", "--teacher", source, "--student", str(model), "--data", str(data), *options(tmp)]
        return argv, [f.replace("DATA", str(data)).replace("TMP", str(tmp)) for f in fragments]

    return Case("score", name, make)


def model_folder(kind: str) -> Callable[[Path, Path], str]:
    """A broken copy of the tiny model: `config-only`, `no-config` or `missing`."""

    def make(tmp: Path, model: Path) -> str:
        folder = tmp / f"model-{kind}"
        if kind == "config-only":
            write(folder / "config.json", (model / "config.json").read_text())
        elif kind == "no-config":
            write(folder / "model.safetensors", (model / "model.safetensors").read_bytes())
        return str(folder)

    return make


CASES = [
    # recipe files
    validate("empty file", lambda m: "", ["RECIPE", "the recipe is empty"]),
    validate("comments only", lambda m: "# a recipe\n\n   # nothing yet\n", ["RECIPE", "the recipe is empty"]),
    validate("not UTF-8", b"description: caf\xe9\n", ["RECIPE:9", "not UTF-8"]),
    validate("recursive alias", "description: &loop [*loop]\n", ["RECIPE:9", "alias *loop"]),
    validate("billion laughs", lambda m: base_recipe(m) + bomb(), ["RECIPE:", "more than 10000 YAML nodes"]),
    validate("nested 60 deep", lambda m: base_recipe(m) + nested(60), ["RECIPE:", "nested more than 50 levels"]),
    validate("duplicate top-level key", "name: again\n", ["duplicate key name", "RECIPE:9", "first at RECIPE:1"]),
    validate("duplicate nested key", "stages:\n  teacher_rl:\n    steps: 3\n    steps: 4\n",
             ["duplicate key stages.teacher_rl.steps", "RECIPE:12", "first at RECIPE:11"]),  # fmt: skip
    validate("duplicate eval set key", lambda m: base_recipe(m).replace("split: eval}", "split: eval, split: test}"),
             ["duplicate key data.eval.0.split", "RECIPE:8"]),  # fmt: skip
    validate(".nan where a finite number is meant", "reward:\n  kl_coef: .nan\n", ["reward.kl_coef", "RECIPE:10", "finite"]),
    validate(".inf learning rate", "stages:\n  teacher_rl:\n    learning_rate: .inf\n",
             ["stages.teacher_rl.learning_rate", "RECIPE:11", "finite"]),  # fmt: skip
    validate("-.inf penalty", "reward:\n  missing_tag_penalty: -.inf\n", ["reward.missing_tag_penalty", "RECIPE:10", "finite"]),
    validate("overflowing float", "reward:\n  alpha: 1.0e+999\n", ["reward.alpha", "RECIPE:10", "finite"]),
    validate("--set a NaN", "", ["reward.kl_coef", "--set reward.kl_coef", "finite"], "--set", "reward.kl_coef=.nan"),
    validate("section written empty", "reward:\n", ["reward (RECIPE:9)", "written with no value"]),
    validate("--set into a scalar section", "reward: 3\n", ["--set reward.kl_coef", "reward is 3", "RECIPE:9"],
             "--set", "reward.kl_coef=2"),  # fmt: skip
    validate("--set into an empty section, bad value", "reward:\n", ["reward.kl_coef (--set reward.kl_coef)"],
             "--set", "reward.kl_coef=-1"),  # fmt: skip
    validate("30 unknown keys", "".join(f"unknown_{i}: 1\n" for i in range(30)),
             ["30 errors", "unknown_0 (RECIPE:9)", "... and 10 more errors"]),  # fmt: skip
    validate("a list, not a mapping", lambda m: "- name: x\n", ["RECIPE", "a recipe is a YAML mapping"]),
    validate("YAML syntax", "stages:\n  teacher_rl: {steps: 3\n", ["RECIPE", "not valid YAML", "line 11"]),
    validate("unsafe tag", "description: !!python/object/apply:os.system [echo hi]\n", ["RECIPE", "not valid YAML"]),
    validate("extends a missing file", lambda m: "extends: nowhere.yaml\n" + base_recipe(m), ["recipe not found", "nowhere.yaml"]),
    validate("larger than 1 MiB", lambda m: base_recipe(m) + "description: " + "x" * (1 << 20) + "\n", ["RECIPE", "larger than 1 MiB"]),
    validate("--set without =", "", ["--set 'reward.kl_coef'", "KEY=VALUE"], "--set", "reward.kl_coef"),
    validate("--set an alias bomb", "", ["--set description", "more than 10000 YAML nodes"], "--set", "description=" + bomb()),
    # data files read by a recipe
    run_data("parquet without the needed columns", "hub", "train.parquet", parquet_bytes([{"problem": "q", "answer": "a"}]),
             ["DATA", "row 1", "no column 'question'"]),  # fmt: skip
    run_data("missing path, format hub", "hub", "absent.jsonl", None, ["data file not found: DATA"]),
    run_data("missing path, format stratos", "stratos", "absent.parquet", None, ["data file not found: DATA"]),
    run_data("missing path, format jsonl", "jsonl", "absent.jsonl", None, ["data file not found: DATA"]),
    run_data("not UTF-8", "jsonl", "latin.jsonl", jsonl({"question": "q", "solution": "s", "thought": "t"}).encode() + b'{"question": "caf\xe9", "solution": "s", "thought": "t"}\n',
             ["DATA line 2", "not UTF-8"]),  # fmt: skip
    run_data("empty file", "jsonl", "empty.jsonl", "", ["DATA", "no rows"]),
    run_data("blank lines only", "hub", "blank.jsonl", "\n \n\n", ["DATA", "no rows"]),
    run_data("broken JSON on line 3", "jsonl", "broken.jsonl", jsonl({"question": "a", "solution": "s", "thought": "t"}) * 2 + '{"question": \n',
             ["DATA line 3", "not valid JSON"]),  # fmt: skip
    run_data("empty question on row 2", "jsonl", "holes.jsonl", jsonl({"question": "a", "solution": "s", "thought": "t"}, {"question": " ", "solution": "s", "thought": "t"}),
             ["DATA", "row 2", "'question' must be non-empty text"]),  # fmt: skip
    run_data("a row that is a list", "jsonl", "list.jsonl", jsonl(["q", "s"]), ["DATA", "row 1", "must be an object"]),
    run_data("not a parquet file", "hub", "fake.parquet", b"PAR1 this is not parquet", ["DATA", "not a readable parquet file"]),
    run_data("JSON array with a syntax error", "jsonl", "rows.json", '[\n  {"question": "q", "solution": "s"},\n  {"question": }\n]\n',
             ["DATA line 3", "not valid JSON"]),  # fmt: skip
    # model folders
    score_case("model folder with config but no weights", ["model-config-only", "no weights"], jsonl(GOOD),
               teacher=model_folder("config-only")),  # fmt: skip
    score_case("model folder without config.json", ["model-no-config", "no config.json"], jsonl(GOOD), teacher=model_folder("no-config")),
    score_case("model folder missing", ["model folder not found", "model-missing"], jsonl(GOOD), teacher=model_folder("missing")),
    score_case("unknown packaged model", ["packaged:nope"], jsonl(GOOD), teacher=lambda tmp, model: "packaged:nope"),
    # factory score: data and options
    score_case("--out is the data file", ["--out DATA is the data file DATA"], jsonl(GOOD), options=lambda tmp: ["--out", str(tmp / "rows.jsonl")]),
    score_case("--out another spelling of the data file", ["--out", "is the data file"], jsonl(GOOD),
               options=lambda tmp: ["--out", str(tmp / "sub" / ".." / "rows.jsonl")]),  # fmt: skip
    score_case("--out a folder", ["--out TMP", "is a folder"], jsonl(GOOD), options=lambda tmp: ["--out", str(tmp)]),
    score_case("--out under a file", ["--out", "cannot create its folder"], jsonl(GOOD),
               options=lambda tmp: ["--out", str(write(tmp / "notes.txt", "x") / "out.jsonl")]),  # fmt: skip
    score_case("--device unknown", ["--device 'gpu0'"], jsonl(GOOD), options=lambda tmp: ["--device", "gpu0"]),
    score_case("--device absent GPU", ["--device cuda:7", "CUDA device"], jsonl(GOOD), options=lambda tmp: ["--device", "cuda:7"]),
    score_case("--dtype unknown", ["--dtype 'float8'", "bfloat16"], jsonl(GOOD), options=lambda tmp: ["--dtype", "float8"]),
    score_case("--kl-estimator unknown", ["--kl-estimator 'k9'"], jsonl(GOOD), options=lambda tmp: ["--kl-estimator", "k9"]),
    score_case("--limit 0", ["--limit"], jsonl(GOOD), options=lambda tmp: ["--limit", "0"]),
    score_case("--set without --recipe", ["--set needs --recipe"], jsonl(GOOD), options=lambda tmp: ["--set", "reward.alpha=0"]),
    score_case("empty question", ["DATA row 2", "'question' must be non-empty text"], jsonl(GOOD, {**GOOD, "question": ""})),
    score_case("empty solution", ["DATA row 1", "'solution' must be non-empty text"], jsonl({**GOOD, "solution": "  "})),
    score_case("null explanation", ["DATA row 1", "'explanation' must be text"], jsonl({**GOOD, "explanation": None})),
    score_case("no explanation column", ["DATA: no column 'explanation' in row 1"], jsonl({"question": "q", "solution": "s"})),
    score_case("parquet without a column", ["DATA: no column 'solution'"], parquet_bytes([{"question": "q", "explanation": "e"}]),
               filename="rows.parquet"),  # fmt: skip
    score_case("data file missing", ["data file not found: DATA"]),
    score_case("data is a folder", ["--data DATA is a folder"], filename="."),
    score_case("empty data", ["DATA", "no rows to score"], ""),
    score_case("not UTF-8 data", ["DATA line 1", "not UTF-8"], b'{"question": "\xff"}\n'),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}: {c.name}" for c in CASES])
def test_a_users_mistake_exits_2_with_one_message(case, tmp_path, tiny_model_dir):
    argv, fragments = case.make(tmp_path, tiny_model_dir)
    first = assert_user_error(cli(*argv), *fragments)
    print(f"{case.group} | {case.name} | 2 | {first}")


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
    wide = write(tmp_path / "wide.yaml", base_recipe(tiny_model_dir) + "".join(f"{base36(i)}: 0\n" for i in range(100_000)))
    assert wide.stat().st_size < 1 << 20  # refused for its keys, not its size
    result = subprocess.run([PY, "-c", LIMITS, str(laughs), str(wide)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    *loads, rss = [json.loads(line) for line in result.stdout.splitlines()]
    for load in loads:
        print(f"{Path(load['path']).name}: {load['seconds']:.2f} s, peak {load['peak_mb']:.1f} MB traced; {load['message']}")
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
    from test_hub_publish import RUN_RECIPE, payload_stages

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
    for line in ("teacher_sft: complete artifact", "generate: complete artifact", "distill: interrupted run", "evaluate: published"):
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
    loaded = [load_rows(DataSource(source=str(path), format=fmt)) for path, fmt in ((parquet, "hub"), (lines, "jsonl"), (array, "jsonl"))]
    assert loaded[0] == loaded[1] == loaded[2] and len(loaded[0]) == 3


def test_an_empty_explanation_is_scored(tmp_path, tiny_model_dir):
    data = write(tmp_path / "rows.jsonl", jsonl(GOOD, {**GOOD, "explanation": ""}))
    out = tmp_path / "out.jsonl"
    result = cli("score", "--teacher", tiny_model_dir, "--student", tiny_model_dir, "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["explanation_tokens"] for r in records][1] == 0
    assert all(r["reward"] == r["reward"] for r in records)  # finite, scored, not skipped


# ------------------------------------------------------------------------------- secrets


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
    "run --push checks the token": (["run", "LOCAL", "--push", "--run-dir", "RUNS"], "the Hub answered HTTP 418 to GET"),
    "score downloads a Hub model": (["score", "--teacher", "org/teacher", "--student", "org/teacher", "--data", "DATA"],
                                    "answered HTTP 418"),
}  # fmt: skip


@pytest.mark.parametrize("token", ["hf_writeTokenOfTheUser9876", None], ids=["HF_TOKEN", "login cache"])
@pytest.mark.parametrize("command", HUB_COMMANDS)
def test_unexpected_hub_status_is_one_message_without_the_token(tmp_path, echoing_hub, tiny_model_dir, command, token):
    secret = token or "loginCacheSecret0123456789"
    local = base_recipe(tiny_model_dir).replace("name: bad", "name: bad\nhub: {namespace: someone}")
    files = {
        "RECIPE": write(tmp_path / "hub.yaml", base_recipe(tmp_path).replace(f"{{source: {tmp_path}}}", "{source: org/teacher}")),
        "LOCAL": write(tmp_path / "local.yaml", local + "stages: {teacher_rl: {enabled: false}}\n"),
        "DATA": write(tmp_path / "rows.jsonl", jsonl(GOOD)),
        "RUNS": tmp_path / "runs",
    }
    argv, expected = HUB_COMMANDS[command]
    argv = [str(files.get(arg, arg)) for arg in argv]
    result = subprocess.run([PY, "-m", "factory.cli", *argv], capture_output=True, text=True,
                            env=hub_env(tmp_path, echoing_hub, token), cwd=tmp_path)  # fmt: skip
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
    result = subprocess.run([PY, "-c", BUG, "plainTokenValue-XYZ"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 1  # a bug keeps its traceback...
    assert "Traceback" in result.stderr and "RuntimeError: request failed" in result.stderr
    assert "plainTokenValue-XYZ" not in result.stderr + result.stdout  # ...without the token
    assert result.stderr.count("Bearer ***") == 2
