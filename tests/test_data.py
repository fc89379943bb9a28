"""Task loaders: Stratos layout, JSON Lines column mapping, Hub-style datasets, the quickstart task."""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from pathlib import Path

import pytest

from factory.data import load_rows, quickstart, resolve_revision, row_id
from factory.errors import UserError
from factory.recipe import DataSource, EvalSet

STRATOS_SYSTEM = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process."
)


def stratos_record(question: str, thought: str, solution: str, *, assistant: str | None = None) -> dict:
    """One row as Bespoke-Stratos-17k stores it."""
    value = assistant or (
        f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n"
        f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"
    )
    return {
        "system": STRATOS_SYSTEM,
        "conversations": [{"from": "user", "value": question}, {"from": "assistant", "value": value}],
    }


GOOD = [
    ("Return your final response within \\boxed{}. What is $2+3$?", "Two plus three.\n\nSo five.", "$2+3=\\boxed{5}$"),
    ("Return your final response within \\boxed{}. Solve $x^2=9$, $x>0$.", "Square root of 9 is 3.", "$x=\\boxed{3}$"),
    ("Generate an executable Python function that prints 1.", "Just print.", "```python\nprint(1)\n```"),
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def stratos_file(tmp_path) -> Path:
    records = [stratos_record(*GOOD[0]), stratos_record(*GOOD[1])]
    records.append(stratos_record("Q?", "", "", assistant="<|begin_of_thought|>no end<|begin_of_solution|>x"))
    records.append(stratos_record(*GOOD[2]))
    records.append({"system": STRATOS_SYSTEM, "conversations": [{"from": "user", "value": "alone"}]})
    return write_jsonl(tmp_path / "stratos.jsonl", records)


# ------------------------------------------------------------------------------------ stratos


def test_stratos_rows_split_thought_and_solution_and_report_bad_rows(stratos_file):
    messages: list[str] = []
    rows = load_rows(DataSource(source=str(stratos_file), format="stratos"), log=messages.append)
    assert [(r["question"], r["thought"], r["solution"]) for r in rows] == [(q, t.strip(), s) for q, t, s in GOOD]
    assert [r["id"] for r in rows] == [hashlib.sha256(q.encode()).hexdigest()[:16] for q, _, _ in GOOD]
    assert len(messages) == 1
    assert "skipped 2 of 5 rows" in messages[0] and "row 3: no <|end_of_thought|>" in messages[0]

    messages.clear()
    limited = load_rows(DataSource(source=str(stratos_file), format="stratos", limit=2), log=messages.append)
    assert limited == rows[:2] and messages == []


def test_stratos_from_a_dataset_folder_gives_the_same_ids(tmp_path, stratos_file, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    folder = tmp_path / "bespoke"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [stratos_record(*row) for row in reversed(GOOD)])
    from_folder = load_rows(DataSource(source=str(folder), format="stratos", split="train"), log=print)
    from_file = load_rows(DataSource(source=str(stratos_file), format="stratos"), log=lambda _: None)
    assert {r["id"]: r for r in from_folder} == {r["id"]: r for r in from_file}


def test_stratos_with_no_parsable_row_is_a_user_error(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"question": "q", "solution": "s"}] * 3)
    with pytest.raises(
        UserError, match=r"plain.jsonl .*no row is in the Stratos layout \(row 1: no 'conversations' list\)"
    ):
        load_rows(DataSource(source=str(path), format="stratos"))


# ------------------------------------------------------------------------------------ jsonl


def test_jsonl_column_mapping_limit_and_duplicate_ids(tmp_path):
    records = [
        {"problem": "What is 1+1?", "worked": "1+1=\\boxed{2}", "trace": "one and one", "extra": 1},
        {"problem": "What is 2+2?", "worked": "\\boxed{4}", "trace": "two and two"},
        {"problem": "What is 1+1?", "worked": "\\boxed{2}", "trace": "again"},
    ]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    source = DataSource(
        source=str(path), format="jsonl", question_column="problem", solution_column="worked", thought_column="trace"
    )
    rows = load_rows(source)
    first = row_id("What is 1+1?")
    assert [r["id"] for r in rows] == [first, row_id("What is 2+2?"), f"{first}-2"]
    assert rows[1] == {
        "id": row_id("What is 2+2?"),
        "question": "What is 2+2?",
        "solution": "\\boxed{4}",
        "thought": "two and two",
    }
    assert load_rows(source.model_copy(update={"limit": 2})) == rows[:2]


def test_jsonl_errors_name_column_row_and_source(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"problem": "q1", "answer": "a"}])
    with pytest.raises(UserError) as error:
        load_rows(DataSource(source=str(path), format="jsonl"))
    message = str(error.value)
    assert "data.jsonl" in message and "row 1" in message and "no column 'question'" in message
    assert "columns: problem, answer" in message

    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"question": "q1", "solution": "s"}, {"question": "q2", "solution": "s"}, {"question": "  ", "solution": "s"}],
    )
    with pytest.raises(UserError, match=r"bad.jsonl .*row 3: column 'question' must be non-empty text, got empty"):
        load_rows(DataSource(source=str(bad), format="jsonl"))

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "solution": "s"}\n{"question": \n')
    with pytest.raises(UserError, match="broken.jsonl line 2: not valid JSON"):
        load_rows(DataSource(source=str(broken), format="jsonl"))

    with pytest.raises(UserError, match="data file not found: missing.jsonl"):
        load_rows(DataSource(source="missing.jsonl", format="jsonl"))


# ------------------------------------------------------------------------------------ hub


def test_hub_format_eval_set_maps_answers(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    folder = tmp_path / "aime"
    folder.mkdir()
    write_jsonl(
        folder / "test.jsonl",
        [{"problem": "Find x.", "answer": 204, "id": 7}, {"problem": "Find y.", "answer": 17, "id": 8}],
    )
    write_jsonl(folder / "train.jsonl", [{"problem": "Other.", "answer": 1, "id": 9}])
    eval_set = EvalSet(name="aime", source=str(folder), format="hub", question_column="problem")
    rows = load_rows(eval_set)
    assert rows == [
        {"id": row_id("Find x."), "question": "Find x.", "answer": "204"},
        {"id": row_id("Find y."), "question": "Find y.", "answer": "17"},
    ]
    with pytest.raises(UserError, match="no column 'worked'"):  # an explicitly named solution column must exist
        load_rows(
            EvalSet(name="aime", source=str(folder), format="hub", question_column="problem", solution_column="worked")
        )
    with pytest.raises(UserError, match=r"aime \[hub, split validation\]: Unknown split \"validation\""):
        load_rows(EvalSet(name="aime", source=str(folder), format="hub", split="validation"))
    write_jsonl(folder / "test.jsonl", [{"problem": "Find x.", "answer": 204}, {"problem": "Find y.", "answer": "1/2"}])
    with pytest.raises(
        UserError, match=r"aime .*cannot be read: .*as a scalar of type int64"
    ):  # a column mixing numbers and text
        load_rows(eval_set)
    with pytest.raises(UserError, match="dataset nobody/nothing .* cannot be loaded"):
        load_rows(DataSource(source="nobody/nothing", format="hub"))


# ------------------------------------------------------------------------------------ quickstart


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expression: str) -> int:
    """Integer arithmetic with + - * and exact /, independent of the generator."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        assert isinstance(node, ast.BinOp), ast.dump(node)
        left, right = walk(node.left), walk(node.right)
        if isinstance(node.op, ast.Div):
            assert left % right == 0, expression
            return left // right
        return _OPS[type(node.op)](left, right)

    return walk(ast.parse(expression, mode="eval").body)


def test_quickstart_is_deterministic_and_limit_takes_a_prefix():
    train = load_rows(DataSource(source="quickstart", format="quickstart"))
    assert train == load_rows(DataSource(source="quickstart", format="quickstart"))
    assert len(train) == quickstart.SPLIT_SIZES["train"] == 2000
    assert load_rows(DataSource(source="quickstart", format="quickstart", limit=64)) == train[:64]
    eval_rows = load_rows(EvalSet(name="q", source="quickstart", format="quickstart", split="eval"))
    assert len(eval_rows) == 200
    assert load_rows(EvalSet(name="q", source="quickstart", format="quickstart")) == eval_rows  # "test" = eval
    with pytest.raises(UserError, match="no split 'dev'; splits: train, eval, test"):
        load_rows(DataSource(source="quickstart", format="quickstart", split="dev"))


def test_quickstart_splits_never_share_a_question():
    train = {r["question"] for r in quickstart.generate("train")}
    held_out = {r["question"] for r in quickstart.generate("eval")}
    assert (len(train), len(held_out)) == (2000, 200)  # no repeats inside a split either
    assert not train & held_out
    phrases = ["buys", "boxes", "pages a day", "in the morning", "times as many", "shared equally"]
    assert len(phrases) == len(quickstart.TEMPLATES)
    assert all(sum(phrase in q for q in held_out) >= 15 for phrase in phrases)  # every kind is evaluated


def test_quickstart_answers_recompute():
    equation = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")
    rows = [*quickstart.generate("train"), *quickstart.generate("eval")]
    for row in rows:
        expression, result = equation.search(row["solution"]).groups()
        assert _evaluate(expression) == int(result) == int(row["answer"]) >= 0, row
        assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}.")
        question_numbers = re.findall(r"\d+", row["question"])
        assert all(number in question_numbers for number in re.findall(r"\d+", expression)), row
        steps = equation.findall(row["thought"])
        assert len(steps) == 2 and all(_evaluate(left) == int(right) for left, right in steps), row
        assert steps[-1][1] == row["answer"]  # the thought ends on the answer
        assert len(row["thought"].split()) <= 30 and len(row["question"].split()) <= 30


# ------------------------------------------------------------------------------------ revisions


def test_data_revisions(tmp_path):
    assert (
        resolve_revision(DataSource(source="quickstart", format="quickstart"))
        == f"quickstart-v{quickstart.GENERATOR_VERSION}"
    )
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "solution": "s"}])
    first = resolve_revision(DataSource(source=str(path), format="jsonl"))
    assert first == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    write_jsonl(path, [{"question": "q", "solution": "t"}])
    assert resolve_revision(DataSource(source=str(path), format="jsonl")) != first
    assert resolve_revision(DataSource(source="org/set", format="hub", revision="v3")) == "unresolved:v3"
    with pytest.raises(UserError, match="data file not found: nothing.jsonl"):
        resolve_revision(DataSource(source="nothing.jsonl", format="jsonl"))
