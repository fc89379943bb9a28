"""The Bespoke-Stratos-17k row layout: `system` + `conversations` [{from: user|assistant, value}].

`system` is kept on the row: it is the system prompt of the student format (RLT.md).

The assistant value is `<|begin_of_thought|>TRACE<|end_of_thought|>` then
`<|begin_of_solution|>SOLUTION<|end_of_solution|>`; it splits into the reference `thought` (for
the teacher warm-up) and the `solution` the teacher is given. ShareGPT's human/gpt roles are
accepted too, since re-exports of the set often use them.
"""

from __future__ import annotations

from typing import Any

from factory.formats import SOLUTION_CLOSE, SOLUTION_OPEN, THOUGHT_CLOSE, THOUGHT_OPEN

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt")
TAGS = (THOUGHT_OPEN, THOUGHT_CLOSE, SOLUTION_OPEN, SOLUTION_CLOSE)


class StratosParseError(ValueError):
    """One row does not follow the layout; the message says what is wrong with it."""


def split_assistant(text: str) -> tuple[str, str]:
    """(thought, solution) of an assistant value, both stripped; raises StratosParseError."""
    positions = []
    for tag in TAGS:
        position = text.find(tag)
        if position < 0:
            raise StratosParseError(f"no {tag} in the assistant text")
        positions.append(position)
    if positions != sorted(positions):
        raise StratosParseError("thought and solution tags are out of order")
    thought = text[positions[0] + len(THOUGHT_OPEN) : positions[1]].strip()
    solution = text[positions[2] + len(SOLUTION_OPEN) : positions[3]].strip()
    if not solution:
        raise StratosParseError("the solution between the solution tags is empty")
    return thought, solution


def parse_record(record: Any) -> dict[str, str]:
    """question, thought and solution of one dataset record; raises StratosParseError."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list):
        raise StratosParseError("no 'conversations' list")
    question = _first_value(turns, USER_ROLES)
    answer = _first_value(turns, ASSISTANT_ROLES)
    if not question.strip():
        raise StratosParseError("the user turn is empty")
    thought, solution = split_assistant(answer)
    row = {"question": question, "thought": thought, "solution": solution}  # the question verbatim, as the reference
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        row["system"] = system  # verbatim: the student format's system prompt (formats.student_format)
    return row


def _first_value(turns: list[Any], roles: tuple[str, ...]) -> str:
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") in roles:
            value = turn.get("value")
            if not isinstance(value, str):
                raise StratosParseError(f"the {roles[0]} turn has no text value")
            return value
    raise StratosParseError(f"no {roles[0]} turn in 'conversations'")
