"""Eval prompts: SkyThought's templates as the model sees them, GPQA's fixed option shuffle, the
protocol in the student card."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from factory.data.eval_prompts import option_order, prepare
from factory.errors import UserError
from factory.recipe import EvalSet, Recipe

GPQA = {
    "name": "gpqa",
    "source": "gpqa.jsonl",
    "format": "jsonl",
    "split": "train",
    "question_column": "Question",
    "answer_column": "Correct Answer",
    "kind": "multiple_choice",
    "distractor_columns": ["Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"],
}


def gpqa_row(qid: str) -> dict[str, str]:
    return {
        "id": qid,
        "question": f"Which is right? ({qid})",
        "answer": "right",
        "distractor_1": "wrong one",
        "distractor_2": "wrong two",
        "distractor_3": "wrong three",
    }


def test_math_templates_render_skythoughts_words():
    row = {"id": "x", "question": "Find $x$ if $x^{2} = 4$.", "answer": "2"}
    [math] = prepare([row], EvalSet(name="m", source="m.jsonl"))  # kind math: skythought_math by default
    assert math["prompt"] == "Return your final response within \\boxed{}. Find $x$ if $x^{2} = 4$."
    assert math["answer"] == "2" and math["question"] == row["question"]
    [plain] = prepare([row], EvalSet(name="m", source="m.jsonl", template="plain"))
    assert plain["prompt"] == row["question"]


def test_multiple_choice_with_options_in_the_question_keeps_them():
    row = {"id": "x", "question": "Pick one.\n(A) 1\n(B) 2", "answer": "B"}
    [item] = prepare([row], EvalSet(name="g", source="g.jsonl", kind="multiple_choice"))
    assert item["prompt"] == (
        "Return your final response within \\boxed{} and only include the letter choice (A, B, C, or D) as your "
        "final response. Pick one.\n(A) 1\n(B) 2"
    )
    assert item["answer"] == "B"


def test_gpqa_options_are_shown_in_a_fixed_order_and_the_reference_letter_follows_it():
    eval_set = EvalSet(**GPQA)
    [item] = prepare([gpqa_row("q1")], eval_set)
    order = option_order("q1", 4, seed=0)
    texts = ["right", "wrong one", "wrong two", "wrong three"]
    shown = ", ".join(f"{letter}) {texts[o]}" for letter, o in zip("ABCD", order))
    assert item["prompt"] == (
        "Return your final response within \\boxed{} and only include the letter choice (A, B, C, or D) as your "
        f"final response. Which is right? (q1)\n{shown}"
    )
    assert item["answer"] == "ABCD"[order.index(0)] and item["correct_option"] == "right"
    # the gold letter labels the correct text in the prompt itself
    assert re.search(rf"{item['answer']}\) ([^,]+)", item["prompt"]).group(1) == "right"


def test_the_shuffle_is_deterministic_per_question_and_seeded():
    ids = [f"q{i}" for i in range(400)]
    rows = [gpqa_row(i) for i in ids]
    first = {r["id"]: r for r in prepare(rows, EvalSet(**GPQA))}
    again = {r["id"]: r for r in prepare(list(reversed(rows[:50])), EvalSet(**GPQA))}
    assert all(again[i] == first[i] for i in again)  # independent of row order and of a limit
    letters = Counter(r["answer"] for r in first.values())
    assert set(letters) == set("ABCD") and all(70 <= n <= 130 for n in letters.values())  # about 100 each
    other = {r["id"]: r["answer"] for r in prepare(rows, EvalSet(**GPQA, shuffle_seed=1))}
    moved = sum(other[i] != first[i]["answer"] for i in ids)
    assert 250 <= moved <= 350  # another seed re-deals about 3 in 4 reference letters
    assert option_order("q1", 4, seed=0) == option_order("q1", 4, seed=0) and sorted(option_order("q1", 4, 0)) == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "math"}, "distractor_columns needs kind: multiple_choice"),
        ({"distractor_columns": ["Incorrect Answer 1", "Incorrect Answer 2"]}, "needs 3 columns"),
        ({"distractor_columns": [], "kind": "math", "template": "skythought_gpqa"}, "needs kind: multiple_choice"),
    ],
)
def test_impossible_choice_layouts_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        EvalSet(**{**GPQA, **change})
    assert EvalSet(**{**GPQA, "template": "plain", "distractor_columns": ["Incorrect Answer 1"]})  # two options, plain


def test_loader_reads_the_option_columns_and_names_a_missing_one(tmp_path):
    from factory.data import load_rows

    path = tmp_path / "gpqa.jsonl"
    record = {
        "Question": "Q?",
        "Correct Answer": "yes",
        "Incorrect Answer 1": "no",
        "Incorrect Answer 2": "maybe",
        "Incorrect Answer 3": "never",
        "Explanation": "...",
    }
    path.write_text(json.dumps(record) + "\n")
    [row] = load_rows(EvalSet(**{**GPQA, "source": str(path)}))
    assert (row["answer"], row["distractor_1"], row["distractor_3"]) == ("yes", "no", "never")
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "Incorrect Answer 2"}) + "\n")
    with pytest.raises(UserError, match="no column 'Incorrect Answer 2'.*set distractor_columns"):
        load_rows(EvalSet(**{**GPQA, "source": str(path)}))


def test_hub_eval_set_loads_its_config(monkeypatch):
    """Idavidrein/gpqa has configs (gpqa_diamond, gpqa_main, ...): the set's `config` reaches load_dataset."""
    import datasets

    from factory.data import load_rows

    calls = []

    def fake_load(path, name=None, **kwargs):
        calls.append((path, name, kwargs["split"]))
        return [
            {
                "Question": "Q?",
                "Correct Answer": "a",
                "Incorrect Answer 1": "b",
                "Incorrect Answer 2": "c",
                "Incorrect Answer 3": "d",
            }
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = load_rows(EvalSet(**{**GPQA, "source": "Idavidrein/gpqa", "format": "hub", "config": "gpqa_diamond"}))
    assert calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")] and rows[0]["distractor_2"] == "c"


def test_the_recipe_states_the_paper_protocol(repo_root):
    from factory.recipe import load_recipe

    recipe = load_recipe(repo_root / "recipes" / "aime.yaml")
    sets = {s.name: s for s in recipe.data.eval}
    assert [sets[n].template for n in ("aime24", "math500", "gpqa_diamond")] == ["skythought_math"] * 2 + [
        "skythought_gpqa"
    ]
    gpqa = sets["gpqa_diamond"]
    assert (gpqa.source, gpqa.config, gpqa.split, gpqa.answer_column) == (
        "Idavidrein/gpqa",
        "gpqa_diamond",
        "train",
        "Correct Answer",
    )
    assert gpqa.distractor_columns == ["Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    evaluate = recipe.stages.evaluate
    assert (evaluate.engine, evaluate.temperature, evaluate.n, evaluate.max_new_tokens) == ("vllm", 0.0, 1, 32768)


def test_student_card_shows_the_protocol():
    from importlib.metadata import version

    from factory.hub.cards import model_card
    from factory.hub.content import Target
    from factory.stages.evaluate import protocol

    recipe = Recipe.model_validate(
        {
            "name": "card",
            "models": {k: {"source": "org/base"} for k in ("teacher", "student", "distill_base")},
            "data": {
                "train": {"source": "quickstart", "format": "quickstart"},
                "eval": [
                    {"name": "aime24", "source": "org/aime", "question_column": "problem"},
                    {**GPQA, "name": "gpqa_diamond", "source": "org/gpqa", "format": "hub"},
                ],
            },
            "formats": {"student_system": "Think, then answer."},
            "stages": {"evaluate": {"max_new_tokens": 32768, "seed": 7}},
        }
    )
    record = {
        "role": "student",
        "stage": "distill",
        "tag": "v1",
        "fingerprint": "f" * 64,
        "lineage": [],
        "inputs": [],
        "metrics": {},
        "config": {},
        "versions": {},
    }
    metrics = {
        "aime24": {"accuracy": 20.0},
        "gpqa_diamond": {"accuracy": 40.0},
        "overall": 30.0,
        "protocol": protocol(recipe),
    }
    report = {**record, "tag": "v2", "metrics": metrics, "config": {"temperature": 0.0}}
    card = model_card(record, recipe, Target("org/card-student", "model"), [], (report, []))
    section = card[card.index("### Evaluation protocol") :]
    assert "temperature 0, top_p 1, n 1, up to 32768 new tokens, seed 7" in section
    assert (
        "| aime24 | `skythought_math` (NovaSky-AI/SkyThought@4bb8f3e) | "
        "`Return your final response within \\boxed{}. {question}` | - | math-verify " + version("math-verify") + " |"
    ) in section
    assert "Incorrect Answer 3; fixed shuffle, seed 0 | choice letter |" in section
    assert "```text\nThink, then answer.\n```" in section
    assert "| **this model** | 20 | 40 | 30 |" in card  # the protocol's numbers are not scores
