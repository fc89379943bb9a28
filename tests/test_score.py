"""`factory score`: JSON lines, the token dump (recomputed without factory.rewards), the summary, errors."""

from __future__ import annotations

import json

import pytest
from commands import factory
from rich.console import Console
from rlt_reference import reference_components

from factory.errors import UserError
from factory.formats import EXPLANATION_CLOSE
from factory.rewards.rlt import COMPONENTS
from factory.score import score, settings_from

ROWS = [
    {
        "question": "What is 12 + 7?",
        "solution": "Units then tens: \\boxed{19}.",
        "explanation": "2 + 7 = 9 units and one ten: 19.",
    },
    {"question": "What is 3 + 4?", "solution": "7", "explanation": f"Count on from 3: 4, 5, 6, 7.{EXPLANATION_CLOSE}"},
    {
        "question": "A train travels 60 km in 1.5 hours; speed?",
        "solution": "40 km/h",
        "explanation": "60 / 1.5 = 40",
        "closed": False,
    },
]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_score_writes_lines_dump_and_summary(tiny_model_dir, tiny_student_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    console = Console(record=True, width=160)
    records = score(
        str(tiny_model_dir), str(tiny_student_dir), str(data), tmp_path / "out.jsonl", True, console=console
    )
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == records and [line["row"] for line in lines] == [0, 1, 2]
    assert [line["closed"] for line in lines] == [True, True, False]
    assert [line["penalty"] for line in lines] == [0.0, 0.0, -1.0]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = lines[0]
    # spans run up to the closing tags, the padding before them included (as the reference scores them)
    assert (
        tok.decode(first["teacher_input_ids"][slice(*first["teacher_explanation_span"])])
        == ROWS[0]["explanation"] + "\n\n"
    )
    assert (
        tok.decode(first["student_input_ids"][slice(*first["student_solution_span"])]) == ROWS[0]["solution"] + "\n\n"
    )
    assert tok.decode(lines[1]["student_input_ids"][slice(*lines[1]["student_explanation_span"])]) == (
        "Count on from 3: 4, 5, 6, 7.\n\n"
    )
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    for line in lines:  # the dump alone is enough to recompute every component
        expected = reference_components(
            teacher,
            student,
            line["teacher_input_ids"],
            line["teacher_explanation_span"],
            line["student_input_ids"],
            line["student_explanation_span"],
            line["student_solution_span"],
            line["closed"],
            teacher_temperature=line["teacher_temperature"],
            student_temperature=line["student_temperature"],
            kl_coef=line["kl_coef"],
            alpha=line["alpha"],
        )
        for key in COMPONENTS:
            assert line[key] == pytest.approx(expected[key], abs=1e-4), key

    shown = console.export_text()
    for key in (*COMPONENTS, "explanation_tokens", "3 rows (1 unclosed, 0 truncated)", "out.jsonl"):
        assert key in shown
    reward_row = next(line for line in shown.splitlines() if line.startswith("│ reward "))
    mean = sum(line["reward"] for line in lines) / 3
    assert f"{mean:.4f}" in reward_row


def test_score_takes_the_recipes_reward_terms(tiny_model_dir, tiny_student_dir, tmp_path):
    """reward.terms [correct_generation]: its components, one line per row; the RLT token dump is refused."""
    from factory.recipe import Reward

    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    settings = Reward(terms=["correct_generation"], correct_generation={"rollouts": 2, "max_new_tokens": 4})
    console = Console(record=True, width=160)
    out = tmp_path / "out.jsonl"
    records = score(str(tiny_model_dir), str(tiny_student_dir), str(data), out, settings=settings, console=console)
    assert [set(r) for r in records] == [{"row", "answered", "reward", "explanation_tokens", "truncated", "closed"}] * 3
    assert all(r["reward"] in (0.0, 0.5, 1.0) for r in records)
    shown = console.export_text()
    assert "reward (correct_generation)" in shown and "│ answered " in shown and "tokens/s" not in shown
    with pytest.raises(UserError, match=r"--dump-tokens .*\['correct_generation'\]"):
        score(str(tiny_model_dir), str(tiny_student_dir), str(data), out, True, settings=settings)


def test_empty_explanation_pays_the_kl_penalty(tiny_model_dir, tiny_student_dir, tmp_path):
    """An explanation that closes at once is scored: +1 per KL term (kl_mean = kl_max = 1), never a free pass."""
    data = write_rows(tmp_path / "empty.jsonl", [{**ROWS[0], "explanation": f"\n\n{EXPLANATION_CLOSE}"}, ROWS[0]])
    empty, real = score(
        str(tiny_model_dir), str(tiny_student_dir), str(data), tmp_path / "out.jsonl", console=Console()
    )
    assert empty["explanation_tokens"] == 0 and empty["closed"]
    assert empty["kl_mean"] == empty["kl_max"] == 1.0
    r_ss = empty["r_ss_mean"] + 0.01 * empty["r_ss_min"]
    assert empty["reward"] == pytest.approx(r_ss - 3.0 * (1.0 + 0.01 * 1.0), abs=1e-6)  # r_SS - 3.03
    assert real["explanation_tokens"] > 0


def test_missing_column_names_column_and_file(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "bad.jsonl", [{"question": "q", "solution": "s", "thought": "t"}])
    with pytest.raises(UserError, match=r"bad\.jsonl: no column 'explanation'"):
        score(str(tiny_model_dir), str(tiny_model_dir), str(data))
    with pytest.raises(UserError, match="data file not found"):
        score(str(tiny_model_dir), str(tiny_model_dir), str(tmp_path / "absent.parquet"))


def test_settings_from_recipe_and_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nmodels:\n  teacher: {source: a/b}\n  student: {source: a/b}\n  distill_base: {source: a/b}\n"
        "data:\n  train: {source: quickstart, format: quickstart}\nstages:\n  evaluate: {enabled: false}\n"
        "formats:\n  student_system: Think.\n"
    )
    settings, formats = settings_from(recipe, ["reward.kl_coef=1.5"], kl_estimator="k3")
    assert (settings.kl_coef, settings.kl_estimator, settings.alpha) == (1.5, "k3", 0.01)
    assert (formats.teacher_system, formats.student_system) == (None, "Think.")
    with pytest.raises(UserError, match="kl_estimator"):
        settings_from(kl_estimator="k9")
    with pytest.raises(UserError, match="--set needs --recipe"):
        settings_from(None, ["reward.alpha=0"])


def test_cli_score_exit_codes(tiny_model_dir, tiny_student_dir, tmp_path):
    good = write_rows(tmp_path / "rows.jsonl", ROWS)
    bad = write_rows(tmp_path / "bad.jsonl", [{"question": "q", "explanation": "e"}])

    def score_cli(data, *extra):
        models = ["--teacher", str(tiny_model_dir), "--student", str(tiny_student_dir)]
        return factory("score", *models, "--data", str(data), *extra, cwd=tmp_path)

    result = score_cli(good, "--kl-estimator", "full", "--limit", "2", "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    assert "kl=full" in result.stdout and "2 rows" in result.stdout
    assert len((tmp_path / "rows.scores.jsonl").read_text().splitlines()) == 2
    result = score_cli(bad)
    assert result.returncode == 2 and "no column 'solution'" in result.stderr and "Traceback" not in result.stderr
