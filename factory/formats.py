"""The two RLT chat formats (RLT.md, "The two chat formats"), as text and as token ids.

Layouts follow the reference code (RLT.md, "What the reference code does, exactly"):
- teacher: the assistant turn is prefilled with `<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>`,
  a blank line and `<|begin_of_explanation|>` plus a blank line; the teacher writes the explanation
  and closes it with `\n\n<|end_of_explanation|>`;
- student (the reward student's and the distilled students' format, the Bespoke-Stratos layout):
  `<|begin_of_thought|>{p}{explanation}{p}<|end_of_thought|>{sep}<|begin_of_solution|>{p}{solution}{p}<|end_of_solution|>`
  with `p` and `sep` from `StudentFormat` (`\n\n` for both in the reference) and the system prompt
  the reward student was trained with.

Text builders (`teacher_messages`, `student_messages`) feed SFT and generation. The id builders
splice the explanation's token ids between tokenised pieces of the rendered chat, so the scored
spans are known exactly: a sampled explanation is never decoded and re-tokenised. As in the
reference, a span runs up to its closing tag: the explanation is every token the teacher wrote
before `<|end_of_explanation|>` (its padding included), the solution is `{solution}\n\n` up to
`<|end_of_solution|>`. A piece of text is tokenised together with the tag that follows it
(`_ids_of_text`), so no scored token ever holds a tag character. Scoring sequences end at their
last scored token, since what follows cannot change a causal model's log-probabilities there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from factory.errors import UserError

SOLUTION_OPEN = "<|begin_of_solution|>"
SOLUTION_CLOSE = "<|end_of_solution|>"
EXPLANATION_OPEN = "<|begin_of_explanation|>"
EXPLANATION_CLOSE = "<|end_of_explanation|>"
THOUGHT_OPEN = "<|begin_of_thought|>"
THOUGHT_CLOSE = "<|end_of_thought|>"
TEACHER_PADDING = "\n\n"  # after the opened explanation tag and before its closing tag (reference layout)

DEFAULT_TEACHER_SYSTEM = (
    "You are a teacher. The reference solution to the problem is already written at the start of "
    f"your answer, between {SOLUTION_OPEN} and {SOLUTION_CLOSE}. After it, write a clear step-by-step "
    f"explanation between {EXPLANATION_OPEN} and {EXPLANATION_CLOSE} that leads a student from the "
    "question to that solution, so that the student understands why each step follows."
)
DEFAULT_STUDENT_SYSTEM = (
    "Think the problem through carefully, step by step, before you answer. Write your reasoning "
    f"between {THOUGHT_OPEN} and {THOUGHT_CLOSE}, then give your final solution between "
    f"{SOLUTION_OPEN} and {SOLUTION_CLOSE}."
)


# ----------------------------------------------------------------------------------------- teacher


def teacher_prefill(solution: str) -> str:
    """The assistant text the teacher continues from: solution first, explanation tag opened."""
    p = TEACHER_PADDING
    return f"{SOLUTION_OPEN}{p}{solution.strip()}{p}{SOLUTION_CLOSE}\n\n{EXPLANATION_OPEN}{p}"


def teacher_target(explanation: str) -> str:
    """What the teacher writes after its prefill: the explanation, padded, and the closing tag.

    The padding keeps the closing tag's first token apart from the explanation's last one (without
    it BPE merges e.g. `.<`, a token that both ends the explanation and starts the tag).
    """
    return f"{explanation.strip()}{TEACHER_PADDING}{EXPLANATION_CLOSE}"


def teacher_messages(
    question: str, solution: str, system: str | None = None, *, explanation: str | None = None
) -> list[dict[str, str]]:
    """Teacher chat; with `explanation` the assistant turn is complete (warm-up SFT target)."""
    assistant = teacher_prefill(solution)
    if explanation is not None:
        assistant += teacher_target(explanation)
    return [
        {"role": "system", "content": DEFAULT_TEACHER_SYSTEM if system is None else system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": assistant},
    ]


# ----------------------------------------------------------------------------------------- student


@dataclass(frozen=True)
class StudentFormat:
    """The student chat format: system prompt, padding inside every tag pair, thought/solution separator."""

    system: str = DEFAULT_STUDENT_SYSTEM
    padding: str = "\n\n"
    separator: str = "\n\n"

    def assistant(self, explanation: str, solution: str) -> str:
        p = self.padding
        return (
            f"{THOUGHT_OPEN}{p}{explanation.strip()}{p}{THOUGHT_CLOSE}{self.separator}"
            f"{SOLUTION_OPEN}{p}{solution.strip()}{p}{SOLUTION_CLOSE}"
        )


def student_format(formats: Any, rows: Iterable[dict[str, Any]] = ()) -> StudentFormat:
    """The recipe's `formats` resolved: `student_system` unset takes the data's own `system` column
    (Bespoke-Stratos-17k has one: the prompt the reward student was trained with), else factory's."""
    system = formats.student_system
    if system is None:
        found = {row["system"] for row in rows if row.get("system")}
        if len(found) > 1:
            raise UserError(
                f"data.train: the rows carry {len(found)} different `system` prompts; the student format has one: "
                "set formats.student_system"
            )
        system = found.pop() if found else DEFAULT_STUDENT_SYSTEM
    return StudentFormat(system, formats.student_padding, formats.student_separator)


def student_messages(
    question: str, explanation: str, solution: str, fmt: StudentFormat = StudentFormat()
) -> list[dict[str, str]]:
    """Student chat, the distillation format (Bespoke-Stratos layout with the explanation as thought)."""
    return [
        {"role": "system", "content": fmt.system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": fmt.assistant(explanation, solution)},
    ]


# --------------------------------------------------------------------------------------- token ids


def _render_open(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render a chat whose last assistant turn stays open, exactly ending with that turn's content.

    `continue_final_message` cuts the rendering after the final content; templates that trim
    message content lose its trailing whitespace (our blank line), which is put back here so the
    prefix matches what the model saw in the full turn.
    """
    content = messages[-1]["content"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    if not text.endswith(content):
        stripped = content.rstrip()
        if not text.endswith(stripped):
            raise UserError(
                f"the chat template of {tokenizer.name_or_path!r} does not reproduce the assistant text "
                "it is given; factory's formats need a template that renders message content verbatim"
            )
        text += content[len(stripped) :]
    return text


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _ids_of_text(tokenizer: Any, before: str, text: str, after: str) -> tuple[list[int], list[int]]:
    """(ids of `before`, ids of `text`), tokenised as `before + text + after` and split at the first
    token that starts inside `text`, which ends at the last token that starts inside it."""
    encoded = tokenizer(before + text + after, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    ids = encoded["input_ids"]
    first = next((i for i, start in enumerate(starts) if start >= len(before)), len(ids))
    end = next((i for i, start in enumerate(starts) if start >= len(before) + len(text)), len(ids))
    return ids[:first], ids[first:end] if text else []


def teacher_prompt_ids(tokenizer: Any, question: str, solution: str, system: str | None = None) -> list[int]:
    """Token ids of the teacher prompt: chat up to the opened explanation tag and its blank line."""
    return _ids(tokenizer, _render_open(tokenizer, teacher_messages(question, solution, system)))


def explanation_ids(tokenizer: Any, explanation: str) -> list[int]:
    """Ids of an explanation given as text: the tokens a teacher writes before its closing tag, padding
    included (none for an empty explanation)."""
    text = explanation.strip()
    return _ids_of_text(tokenizer, "", text + TEACHER_PADDING, EXPLANATION_CLOSE)[1] if text else []


@dataclass(frozen=True)
class TeacherSequence:
    """Teacher prompt + explanation ids; `explanation_span` is [start, end) over `input_ids`."""

    input_ids: list[int]
    explanation_span: tuple[int, int]


@dataclass(frozen=True)
class StudentSequence:
    """Student chat up to the last solution token; spans are [start, end) over `input_ids`."""

    input_ids: list[int]
    explanation_span: tuple[int, int]
    solution_span: tuple[int, int]


def build_teacher_sequence(
    tokenizer: Any, question: str, solution: str, explanation_ids: list[int], system: str | None = None
) -> TeacherSequence:
    prompt = teacher_prompt_ids(tokenizer, question, solution, system)
    return TeacherSequence(prompt + list(explanation_ids), (len(prompt), len(prompt) + len(explanation_ids)))


def _missing_padding(text: str, padding: str) -> str:
    """The part of `padding` that `text` does not already end with (a merged `.\\n\\n` brings its own)."""
    for keep in range(len(padding), 0, -1):
        if text.endswith(padding[:keep]):
            return padding[keep:]
    return padding


def build_student_sequence(
    tokenizer: Any, question: str, explanation_ids: list[int], solution: str, fmt: StudentFormat = StudentFormat()
) -> StudentSequence:
    """Student ids: chat head up to the padded thought tag, explanation ids, closing layout, solution ids."""
    p = fmt.padding
    head_messages = student_messages(question, "", "", fmt)
    head_messages[-1] = {"role": "assistant", "content": THOUGHT_OPEN + p}
    head = _ids(tokenizer, _render_open(tokenizer, head_messages))
    closing = f"{_missing_padding(tokenizer.decode(list(explanation_ids)), p)}{THOUGHT_CLOSE}{fmt.separator}{SOLUTION_OPEN}{p}"
    text = solution.strip()  # a whitespace-only solution is an empty span, not scored padding
    middle, solution_ids = _ids_of_text(tokenizer, closing, text + p if text else "", SOLUTION_CLOSE)
    explanation_end = len(head) + len(explanation_ids)
    solution_start = explanation_end + len(middle)
    return StudentSequence(
        head + list(explanation_ids) + middle + solution_ids,
        (len(head), explanation_end),
        (solution_start, solution_start + len(solution_ids)),
    )


# ------------------------------------------------------------------------------------- parsing


def parse_teacher_completion(text: str) -> tuple[str, bool]:
    """Split generated teacher text into (explanation, closed): text before the closing tag, unpadded."""
    explanation, tag, _ = text.partition(EXPLANATION_CLOSE)
    return explanation.strip(), bool(tag)


def split_completion_ids(tokenizer: Any, completion_ids: list[int]) -> tuple[list[int], bool]:
    """(explanation ids, closed) of generated teacher ids, without decoding to text and back.

    The closing tag is plain text that the model may spell with various tokens, so it is found in
    the decoded text; the explanation is the longest id prefix whose text ends before the tag (a
    token straddling the tag is dropped), its padding included as in the reference. Unclosed
    completions lose trailing special tokens (end of turn, padding). An explanation of whitespace
    only is empty: it must pay the empty explanation's KL penalty, not score a padding token.
    """
    ids = list(completion_ids)
    text = tokenizer.decode(ids)
    cut = text.find(EXPLANATION_CLOSE)
    closed = cut >= 0
    if closed:
        low, high = 0, len(ids)  # invariant: ids[:low] ends before the tag, ids[:high+1] does not
        while low < high:
            middle = (low + high + 1) // 2
            if len(tokenizer.decode(ids[:middle])) <= cut:
                low = middle
            else:
                high = middle - 1
        ids = ids[:low]
    else:
        special = set(tokenizer.all_special_ids)
        while ids and ids[-1] in special:
            ids.pop()
    return (ids if tokenizer.decode(ids).strip() else []), closed


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """The reward compares both models on the same token ids: refuse tokenizers that map differently."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    differing = sorted(
        token
        for token in teacher_vocab.keys() | student_vocab.keys()
        if teacher_vocab.get(token) != student_vocab.get(token)
    )
    raise UserError(
        f"teacher tokenizer {teacher_tokenizer.name_or_path!r} ({len(teacher_vocab)} tokens) and student tokenizer "
        f"{student_tokenizer.name_or_path!r} ({len(student_vocab)} tokens) do not share a vocabulary "
        f"({len(differing)} tokens differ, e.g. {differing[:3]}); the RLT reward compares both models' "
        "log-probabilities of the same token ids, so pick a teacher and student from the same tokenizer family"
    )
