"""The two RLT chat formats (RLT.md, "The two chat formats"), as text and as token ids.

Text builders (`teacher_messages`, `student_messages`) feed SFT and generation. The id builders
splice the explanation's token ids between tokenised pieces of the rendered chat, so the scored
spans are known exactly: a sampled explanation is never decoded and re-tokenised (which can merge
tokens across a tag and shift spans). Scoring sequences end at their last scored token, since what
follows cannot change a causal model's log-probabilities there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.errors import UserError

SOLUTION_OPEN = "<|begin_of_solution|>"
SOLUTION_CLOSE = "<|end_of_solution|>"
EXPLANATION_OPEN = "<|begin_of_explanation|>"
EXPLANATION_CLOSE = "<|end_of_explanation|>"
THOUGHT_OPEN = "<|begin_of_thought|>"
THOUGHT_CLOSE = "<|end_of_thought|>"

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


def teacher_prefill(solution: str) -> str:
    """The assistant text the teacher continues from: solution first, explanation tag opened."""
    return f"{SOLUTION_OPEN}{solution}{SOLUTION_CLOSE}\n\n{EXPLANATION_OPEN}\n\n"


def teacher_messages(
    question: str, solution: str, system: str | None = None, *, explanation: str | None = None
) -> list[dict[str, str]]:
    """Teacher chat; with `explanation` the assistant turn is complete (warm-up SFT target)."""
    assistant = teacher_prefill(solution)
    if explanation is not None:
        assistant += f"{explanation}{EXPLANATION_CLOSE}"
    return [
        {"role": "system", "content": DEFAULT_TEACHER_SYSTEM if system is None else system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": assistant},
    ]


def student_messages(question: str, explanation: str, solution: str, system: str | None = None) -> list[dict[str, str]]:
    """Student chat, the distillation format (Bespoke-Stratos layout with the explanation as thought)."""
    return [
        {"role": "system", "content": DEFAULT_STUDENT_SYSTEM if system is None else system},
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": f"{THOUGHT_OPEN}{explanation}{THOUGHT_CLOSE}\n\n{SOLUTION_OPEN}{solution}{SOLUTION_CLOSE}",
        },
    ]


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


def teacher_prompt_ids(tokenizer: Any, question: str, solution: str, system: str | None = None) -> list[int]:
    """Token ids of the teacher prompt: chat up to the opened explanation tag and its blank line."""
    return _ids(tokenizer, _render_open(tokenizer, teacher_messages(question, solution, system)))


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


def build_student_sequence(
    tokenizer: Any, question: str, explanation_ids: list[int], solution: str, system: str | None = None
) -> StudentSequence:
    """Student ids: chat head + thought tag, explanation ids, closing tags, solution ids."""
    head_messages = student_messages(question, "", "", system)
    head_messages[-1] = {"role": "assistant", "content": THOUGHT_OPEN}
    head = _ids(tokenizer, _render_open(tokenizer, head_messages))
    middle = _ids(tokenizer, f"{THOUGHT_CLOSE}\n\n{SOLUTION_OPEN}")
    solution_ids = _ids(tokenizer, solution)
    explanation_end = len(head) + len(explanation_ids)
    solution_start = explanation_end + len(middle)
    return StudentSequence(
        head + list(explanation_ids) + middle + solution_ids,
        (len(head), explanation_end),
        (solution_start, solution_start + len(solution_ids)),
    )


def parse_teacher_completion(text: str) -> tuple[str, bool]:
    """Split generated teacher text into (explanation, closed): text before the closing tag."""
    explanation, tag, _ = text.partition(EXPLANATION_CLOSE)
    return explanation, bool(tag)


def split_completion_ids(tokenizer: Any, completion_ids: list[int]) -> tuple[list[int], bool]:
    """(explanation ids, closed) of generated teacher ids, without decoding to text and back.

    The closing tag is plain text that the model may spell with various tokens, so it is found in
    the decoded text; the explanation is the longest id prefix whose text ends before the tag (a
    token straddling the tag is dropped). Unclosed completions lose only trailing special tokens
    (end of turn, padding).
    """
    ids = list(completion_ids)
    text = tokenizer.decode(ids)
    cut = text.find(EXPLANATION_CLOSE)
    if cut < 0:
        special = set(tokenizer.all_special_ids)
        while ids and ids[-1] in special:
            ids.pop()
        return ids, False
    low, high = 0, len(ids)  # invariant: ids[:low] ends before the tag, ids[:high+1] does not
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer.decode(ids[:middle])) <= cut:
            low = middle
        else:
            high = middle - 1
    return ids[:low], True


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """The reward compares both models on the same token ids: refuse tokenizers that map differently."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    differing = sorted(
        token for token in teacher_vocab.keys() | student_vocab.keys() if teacher_vocab.get(token) != student_vocab.get(token)
    )
    raise UserError(
        f"teacher tokenizer {teacher_tokenizer.name_or_path!r} ({len(teacher_vocab)} tokens) and student tokenizer "
        f"{student_tokenizer.name_or_path!r} ({len(student_vocab)} tokens) do not share a vocabulary "
        f"({len(differing)} tokens differ, e.g. {differing[:3]}); the RLT reward compares both models' "
        "log-probabilities of the same token ids, so pick a teacher and student from the same tokenizer family"
    )
