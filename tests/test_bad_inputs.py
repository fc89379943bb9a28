"""A user's mistakes through the real CLI: exit 2, one message naming what to fix, never a traceback.

Table-driven: malformed recipes, data files, model folders and command options, each naming the
recipe key and line, the data row or the path in its message. The limits, outputs that would destroy
an input and a full disk: test_bad_inputs_files.py; the Hub token scrubbed: test_bad_inputs_secrets.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bad_inputs import GOOD, assert_user_error, base_recipe, bomb, cli, jsonl, only_sft, parquet_bytes, write

# ------------------------------------------------------------------------------------ recipes


def nested(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}x: 1\n"


@dataclass
class Case:
    group: str
    name: str
    make: Callable[[Path, Path], tuple[list[str], list[str]]]  # (tmp, model) -> (argv, fragments)


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


def score_case(
    name: str,
    fragments: list[str],
    rows: str | bytes | None = None,
    filename: str = "rows.jsonl",
    options: Callable[[Path], list[str]] = lambda tmp: [],
    teacher: Callable[[Path, Path], str] | None = None,
) -> Case:
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
    validate(
        "duplicate nested key",
        "stages:\n  teacher_rl:\n    steps: 3\n    steps: 4\n",
        ["duplicate key stages.teacher_rl.steps", "RECIPE:12", "first at RECIPE:11"],
    ),
    validate(
        "duplicate eval set key",
        lambda m: base_recipe(m).replace("split: eval}", "split: eval, split: test}"),
        ["duplicate key data.eval.0.split", "RECIPE:8"],
    ),
    validate(
        ".nan where a finite number is meant", "reward:\n  kl_coef: .nan\n", ["reward.kl_coef", "RECIPE:10", "finite"]
    ),
    validate(
        ".inf learning rate",
        "stages:\n  teacher_rl:\n    learning_rate: .inf\n",
        ["stages.teacher_rl.learning_rate", "RECIPE:11", "finite"],
    ),
    validate(
        "-.inf penalty",
        "reward:\n  missing_tag_penalty: -.inf\n",
        ["reward.missing_tag_penalty", "RECIPE:10", "finite"],
    ),
    validate("overflowing float", "reward:\n  alpha: 1.0e+999\n", ["reward.alpha", "RECIPE:10", "finite"]),
    validate("--set a NaN", "", ["reward.kl_coef", "--set reward.kl_coef", "finite"], "--set", "reward.kl_coef=.nan"),
    validate("section written empty", "reward:\n", ["reward (RECIPE:9)", "written with no value"]),
    validate(
        "--set into a scalar section",
        "reward: 3\n",
        ["--set reward.kl_coef", "reward is 3", "RECIPE:9"],
        "--set",
        "reward.kl_coef=2",
    ),
    validate(
        "--set into an empty section, bad value",
        "reward:\n",
        ["reward.kl_coef (--set reward.kl_coef)"],
        "--set",
        "reward.kl_coef=-1",
    ),
    validate(
        "30 unknown keys",
        "".join(f"unknown_{i}: 1\n" for i in range(30)),
        ["30 errors", "unknown_0 (RECIPE:9)", "... and 10 more errors"],
    ),
    validate("a list, not a mapping", lambda m: "- name: x\n", ["RECIPE", "a recipe is a YAML mapping"]),
    validate("YAML syntax", "stages:\n  teacher_rl: {steps: 3\n", ["RECIPE", "not valid YAML", "line 11"]),
    validate("unsafe tag", "description: !!python/object/apply:os.system [echo hi]\n", ["RECIPE", "not valid YAML"]),
    validate(
        "extends a missing file",
        lambda m: "extends: nowhere.yaml\n" + base_recipe(m),
        ["recipe not found", "nowhere.yaml"],
    ),
    validate(
        "larger than 1 MiB",
        lambda m: base_recipe(m) + "description: " + "x" * (1 << 20) + "\n",
        ["RECIPE", "larger than 1 MiB"],
    ),
    validate("--set without =", "", ["--set 'reward.kl_coef'", "KEY=VALUE"], "--set", "reward.kl_coef"),
    validate(
        "--set an alias bomb", "", ["--set description", "more than 10000 YAML nodes"], "--set", "description=" + bomb()
    ),
    # data files read by a recipe
    run_data(
        "parquet without the needed columns",
        "hub",
        "train.parquet",
        parquet_bytes([{"problem": "q", "answer": "a"}]),
        ["DATA", "row 1", "no column 'question'"],
    ),
    run_data("missing path, format hub", "hub", "absent.jsonl", None, ["data file not found: DATA"]),
    run_data("missing path, format stratos", "stratos", "absent.parquet", None, ["data file not found: DATA"]),
    run_data("missing path, format jsonl", "jsonl", "absent.jsonl", None, ["data file not found: DATA"]),
    run_data(
        "not UTF-8",
        "jsonl",
        "latin.jsonl",
        jsonl({"question": "q", "solution": "s", "thought": "t"}).encode()
        + b'{"question": "caf\xe9", "solution": "s", "thought": "t"}\n',
        ["DATA line 2", "not UTF-8"],
    ),
    run_data("empty file", "jsonl", "empty.jsonl", "", ["DATA", "no rows"]),
    run_data("blank lines only", "hub", "blank.jsonl", "\n \n\n", ["DATA", "no rows"]),
    run_data(
        "broken JSON on line 3",
        "jsonl",
        "broken.jsonl",
        jsonl({"question": "a", "solution": "s", "thought": "t"}) * 2 + '{"question": \n',
        ["DATA line 3", "not valid JSON"],
    ),
    run_data(
        "empty question on row 2",
        "jsonl",
        "holes.jsonl",
        jsonl({"question": "a", "solution": "s", "thought": "t"}, {"question": " ", "solution": "s", "thought": "t"}),
        ["DATA", "row 2", "'question' must be non-empty text"],
    ),
    run_data("a row that is a list", "jsonl", "list.jsonl", jsonl(["q", "s"]), ["DATA", "row 1", "must be an object"]),
    run_data(
        "not a parquet file",
        "hub",
        "fake.parquet",
        b"PAR1 this is not parquet",
        ["DATA", "not a readable parquet file"],
    ),
    run_data(
        "JSON array with a syntax error",
        "jsonl",
        "rows.json",
        '[\n  {"question": "q", "solution": "s"},\n  {"question": }\n]\n',
        ["DATA line 3", "not valid JSON"],
    ),
    # model folders
    score_case(
        "model folder with config but no weights",
        ["model-config-only", "no weights"],
        jsonl(GOOD),
        teacher=model_folder("config-only"),
    ),
    score_case(
        "model folder without config.json",
        ["model-no-config", "no config.json"],
        jsonl(GOOD),
        teacher=model_folder("no-config"),
    ),
    score_case(
        "model folder missing",
        ["model folder not found", "model-missing"],
        jsonl(GOOD),
        teacher=model_folder("missing"),
    ),
    score_case("unknown packaged model", ["packaged:nope"], jsonl(GOOD), teacher=lambda tmp, model: "packaged:nope"),
    # factory score: data and options
    score_case(
        "--out is the data file",
        ["--out DATA is the data file DATA"],
        jsonl(GOOD),
        options=lambda tmp: ["--out", str(tmp / "rows.jsonl")],
    ),
    score_case(
        "--out another spelling of the data file",
        ["--out", "is the data file"],
        jsonl(GOOD),
        options=lambda tmp: ["--out", str(tmp / "sub" / ".." / "rows.jsonl")],
    ),
    score_case("--out a folder", ["--out TMP", "is a folder"], jsonl(GOOD), options=lambda tmp: ["--out", str(tmp)]),
    score_case(
        "--out under a file",
        ["--out", "cannot create its folder"],
        jsonl(GOOD),
        options=lambda tmp: ["--out", str(write(tmp / "notes.txt", "x") / "out.jsonl")],
    ),
    score_case("--device unknown", ["--device 'gpu0'"], jsonl(GOOD), options=lambda tmp: ["--device", "gpu0"]),
    score_case(
        "--device absent GPU",
        ["--device cuda:7", "CUDA device"],
        jsonl(GOOD),
        options=lambda tmp: ["--device", "cuda:7"],
    ),
    score_case(
        "--dtype unknown", ["--dtype 'float8'", "bfloat16"], jsonl(GOOD), options=lambda tmp: ["--dtype", "float8"]
    ),
    score_case(
        "--kl-estimator unknown", ["--kl-estimator 'k9'"], jsonl(GOOD), options=lambda tmp: ["--kl-estimator", "k9"]
    ),
    score_case("--limit 0", ["--limit"], jsonl(GOOD), options=lambda tmp: ["--limit", "0"]),
    score_case(
        "--set without --recipe", ["--set needs --recipe"], jsonl(GOOD), options=lambda tmp: ["--set", "reward.alpha=0"]
    ),
    score_case(
        "empty question", ["DATA row 2", "'question' must be non-empty text"], jsonl(GOOD, {**GOOD, "question": ""})
    ),
    score_case(
        "empty solution", ["DATA row 1", "'solution' must be non-empty text"], jsonl({**GOOD, "solution": "  "})
    ),
    score_case("null explanation", ["DATA row 1", "'explanation' must be text"], jsonl({**GOOD, "explanation": None})),
    score_case(
        "no explanation column", ["DATA: no column 'explanation' in row 1"], jsonl({"question": "q", "solution": "s"})
    ),
    score_case(
        "parquet without a column",
        ["DATA: no column 'solution'"],
        parquet_bytes([{"question": "q", "explanation": "e"}]),
        filename="rows.parquet",
    ),
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
