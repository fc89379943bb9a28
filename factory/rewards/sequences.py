"""The two token sequences one reward item is scored on, and the rule that fits them to `reward.max_length`.

Truncation rule (`max_length`, per sequence; None: nothing is cut. A recipe's cap is at least the
longest teacher sequence its lengths allow, so it can only cut a student sequence that its longer
system prompt pushed past the cap): the solution is what the student is scored on, so it is
kept whole and the explanation is cut from its end, the same prefix in both sequences, until the
teacher sequence (prompt + explanation) and the student sequence (head + explanation + tags +
solution) both fit. Only when question and solution alone overflow the student sequence is the
solution cut from its end; a teacher prompt longer than `max_length` leaves no explanation token to
score. Such items are flagged `truncated`.
"""

from __future__ import annotations

from dataclasses import dataclass

from factory.formats import StudentSequence, TeacherSequence


@dataclass(frozen=True)
class ScoringSequences:
    """The two sequences one item is scored on, after the truncation rule."""

    teacher: TeacherSequence
    student: StudentSequence
    truncated: bool


def fit_to_length(teacher: TeacherSequence, student: StudentSequence, max_length: int | None) -> ScoringSequences:
    """Apply the truncation rule of the module docstring: the two sequences of an item, fitted to `max_length`."""
    if max_length is None:
        return ScoringSequences(teacher, student, False)
    prompt = teacher.explanation_span[0]
    head, explanation_end = student.explanation_span
    solution_start, solution_end = student.solution_span
    explanation, solution, tags = (
        explanation_end - head,
        solution_end - solution_start,
        solution_start - explanation_end,
    )
    keep_solution = _clamp(max_length - head - tags, solution)
    keep_explanation = _clamp(min(max_length - prompt, max_length - head - tags - keep_solution), explanation)
    if keep_explanation == explanation and keep_solution == solution:
        return ScoringSequences(teacher, student, False)
    teacher_ids = teacher.input_ids[: prompt + keep_explanation][:max_length]
    student_ids = (
        student.input_ids[: head + keep_explanation]
        + student.input_ids[explanation_end : solution_start + keep_solution]
    )[:max_length]
    new_solution_start = head + keep_explanation + tags
    return ScoringSequences(
        TeacherSequence(teacher_ids, _clip((prompt, prompt + keep_explanation), len(teacher_ids))),
        StudentSequence(
            student_ids,
            _clip((head, head + keep_explanation), len(student_ids)),
            _clip((new_solution_start, new_solution_start + keep_solution), len(student_ids)),
        ),
        True,
    )


def _clamp(value: int, upper: int) -> int:
    return max(0, min(value, upper))


def _clip(span: tuple[int, int], length: int) -> tuple[int, int]:
    return min(span[0], length), min(span[1], length)
