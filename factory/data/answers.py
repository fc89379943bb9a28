"""Answer extraction and checking for evaluation: `\\boxed{}` answers, math equivalence, letter choices.

A completion's answer is the content of its last `\\boxed{...}` (braces matched, escaped `\\{`
ignored); a last box that never closes (a truncated completion) yields no answer rather than an
earlier, intermediate box. Math answers are equal when `math_verify` says so (fractions vs
decimals, units, sets, intervals, equations `x=3` vs `3`), or, when it cannot parse a side, when
their normalised strings are equal. Multiple-choice answers are one letter, from the last box or,
without a box, from an explicit "answer is (X)" / "Answer: X" phrase; they must match exactly.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

Kind = Literal["math", "multiple_choice"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)\b|\$")
_CHOICE_WITH_TEXT = re.compile(r"^\(?([A-Z])(?:\)|\.|:)")
_CHOICE_PHRASE = re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*:?\s*\**\(?([A-Z])\)?(?![A-Za-z])")
MATH_VERIFY_TIMEOUT_S = 5


@dataclass(frozen=True)
class AnswerCheck:
    extracted: str | None
    correct: bool


def _group_end(text: str, open_at: int) -> int | None:
    """Index just past the `}` closing the group that opens at `text[open_at] == '{'`; None if unclosed."""
    depth = 0
    index = open_at
    while index < len(text):
        char = text[index]
        if char == "\\":  # \{ and \} are literal braces, not grouping
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`); None without a complete one."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = start + len(command)
    brace = rest
    while brace < len(text) and text[brace].isspace():
        brace += 1
    if brace >= len(text) or text[brace] != "{":  # `\boxed 5`: the argument is one plain token
        match = re.match(r" +([^\s$]+)", text[rest:])
        return match.group(1) if match else None
    end = _group_end(text, brace)
    if end is None:
        return None
    return text[brace + 1 : end - 1].strip()


def normalize_answer(answer: str) -> str:
    """A canonical string for the fallback comparison: no spacing macros, wrappers, `$` or case."""
    text = answer.strip()
    previous = None
    while previous != text:
        previous = text
        text = _WRAPPERS.sub(r"\1", text)
    text = _SPACING.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text).rstrip(".")
    return text.lower()


def _timeout() -> int | None:
    """math_verify times out with SIGALRM, which only the main thread may use."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(answer: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        f"${answer}$",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=_timeout(),
    )


def math_equal(predicted: str, gold: str) -> bool:
    """Mathematical equivalence of two answer strings (math_verify, then a normalised-string fallback)."""
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    from math_verify import verify

    gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=_timeout()))


def _letter(answer: str) -> str | None:
    """The choice letter an answer string names: `C`, `(C)`, `\\text{C}`, `C) 42`, `C. 42`."""
    text = answer.strip()
    previous = None
    while previous != text:
        previous = text
        text = _WRAPPERS.sub(r"\1", text).strip().strip("$").strip()
    if len(text) == 1 and text.isalpha():
        return text.upper()
    if re.fullmatch(r"\([A-Za-z]\)", text):
        return text[1].upper()
    match = _CHOICE_WITH_TEXT.match(text)
    return match.group(1) if match else None


def extract_choice(text: str) -> str | None:
    """The chosen letter: from the last box if there is one, else from the last "answer is X" phrase."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return _letter(boxed)
    phrases = _CHOICE_PHRASE.findall(text)
    return phrases[-1] if phrases else None


def gold_answer(answer: str, kind: Kind) -> str:
    """The reference answer in comparable form (a gold written as `\\boxed{..}` is unwrapped)."""
    boxed = extract_boxed(answer)
    text = boxed if boxed is not None else answer.strip()
    if kind == "multiple_choice":
        letter = _letter(text)
        if letter is None:
            raise ValueError(f"multiple-choice reference answer {answer!r} is not a choice letter")
        return letter
    return text


def grader(kind: Kind) -> dict[str, str]:
    """How `check_answer` grades a kind, with the version of the library that decides math equality."""
    if kind == "multiple_choice":
        return {
            "name": "choice letter",
            "rule": "the letter in the last \\boxed{} (else the last 'answer is X' / 'Answer: X'), "
            "equal to the reference",
        }
    from importlib.metadata import version

    return {
        "name": "math-verify",
        "version": version("math-verify"),
        "rule": "the last \\boxed{} of the completion, equivalent to the reference by math-verify "
        "(or equal after string normalisation)",
    }


def check_answer(completion: str, gold: str, kind: Kind) -> AnswerCheck:
    """Extract the completion's answer and compare it with the reference answer."""
    reference = gold_answer(gold, kind)
    if kind == "multiple_choice":
        letter = extract_choice(completion)
        return AnswerCheck(letter, letter is not None and letter == reference)
    predicted = extract_boxed(completion)
    if predicted is None or not predicted:
        return AnswerCheck(predicted, False)
    return AnswerCheck(predicted, math_equal(predicted, reference))
