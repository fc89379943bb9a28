"""Answer extraction and checking on a table of tricky cases (evaluation scores rest on these)."""

from __future__ import annotations

import threading

import pytest

from factory.data.answers import check_answer, extract_boxed, extract_choice, gold_answer, math_equal, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("first \\boxed{3}, then \\boxed{4}", "4"),  # several boxes: the last one
        ("\\boxed{\\boxed{7}}", "7"),
        ("\\fbox{12}", "12"),
        ("the answer is \\boxed 5 apples", "5"),
        ("\\boxed {9}", "9"),
        ("no box here, the answer is 5", None),
        ("\\boxed{1} and then \\boxed{2", None),  # truncated last box: no answer, not the earlier one
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "completion, gold, correct",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", True),
        ("\\boxed{-0.5}", "-\\frac12", True),
        ("\\boxed{5\\text{ cm}}", "5", True),  # units
        ("\\boxed{90^\\circ}", "90", True),
        ("\\boxed{\\$5}", "5", True),
        ("\\boxed{10\\%}", "10", True),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{x=3}", "3", True),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
        ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", True),
        ("\\boxed{[1,2)}", "[1,2)", True),
        ("\\boxed{(1,2)}", "[1,2)", False),
        ("\\boxed{\\text{Yes}}", "yes", True),  # string fallback
        ("\\boxed{13}", "12", False),
        ("\\boxed{3} then corrected: \\boxed{12}", "12", True),
        ("\\boxed{12} then changed my mind: \\boxed{3}", "12", False),
        ("the answer is 12", "12", False),  # no box: no answer
        ("\\boxed{}", "12", False),
        ("\\boxed{12", "12", False),
        ("\\boxed{\\pi}", "3.14159", False),
        ("\\boxed{4}", "\\boxed{4}", True),  # a boxed reference answer is unwrapped
    ],
)
def test_math_answers(completion, gold, correct):
    assert check_answer(completion, gold, "math").correct is correct


def test_extracted_answer_is_recorded():
    result = check_answer("work... \\boxed{\\frac{3}{4}} done", "0.75", "math")
    assert (result.extracted, result.correct) == ("\\frac{3}{4}", True)
    assert check_answer("no box", "1", "math").extracted is None


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("\\boxed{C}", "C"),
        ("\\boxed{(B)}", "B"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{\\textbf{(A)}}", "A"),
        ("\\boxed{b}", "B"),
        ("\\boxed{C) 42 meters}", "C"),
        ("\\boxed{A triangle}", None),  # a word, not a choice
        ("\\boxed{42}", None),
        ("I think A, but the answer is (C).", "C"),
        ("Answer: D", "D"),
        ("The answer is a number", None),
        ("the answer is B. Wait, no: the answer is **A**", "A"),
        ("nothing chosen", None),
        ("\\boxed{B} though the answer is C", "B"),  # the box wins over a phrase
    ],
)
def test_extract_choice(completion, expected):
    assert extract_choice(completion) == expected


@pytest.mark.parametrize(
    "completion, gold, correct",
    [
        ("\\boxed{C}", "C", True),
        ("\\boxed{C}", "(C)", True),
        ("\\boxed{C}", "B", False),
        ("\\boxed{(A)}", "A", True),
        ("answer is B", "B", True),
        ("\\boxed{42}", "A", False),
    ],
)
def test_multiple_choice(completion, gold, correct):
    assert check_answer(completion, gold, "multiple_choice").correct is correct


def test_multiple_choice_gold_must_be_a_letter():
    with pytest.raises(ValueError, match="not a choice letter"):
        gold_answer("forty-two", "multiple_choice")


def test_normalize_answer():
    assert normalize_answer(" \\left( 1 , 2 \\right) .") == "(1,2)"
    assert normalize_answer("\\text{\\textbf{Yes}}") == "yes"
    assert normalize_answer("$\\dfrac{1}{2}$") == "\\frac{1}{2}"


def test_math_equal_works_off_the_main_thread():
    """math_verify's SIGALRM timeout is main-thread only; checking must still work in a worker thread."""
    results = []
    worker = threading.Thread(target=lambda: results.append((math_equal("\\frac{1}{2}", "0.5"), math_equal("1", "2"))))
    worker.start()
    worker.join()
    assert results == [(True, False)]
