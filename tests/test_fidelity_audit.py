"""Fidelity audit: factory's teacher prompt and scored tokens against SakanaAI/RLT@86a3f5c, on Qwen2.5's vocabulary.

`reference_spans` ports, for the Bespoke-Stratos config, `custom_data/teacher_data.py` (`process_line_fn`: the
teacher prompt) and `trainers/teacher_rewards.py` (`get_student_chats_and_relevant_num_tokens`: the decoded
completion between the explanation tags, re-tokenised, found with `teacher_base.find_valid_subsequence` (+-1
token) and `find_sublist_start_end`). Bespoke-Stratos-17k's assistant text pads every tag pair with `\\n\\n`,
so the reference's `solution_content` is `\\n\\n{solution}\\n\\n` and its thought is whatever the teacher
wrote between `<|begin_of_explanation|>` and `<|end_of_explanation|>`, padding included.
"""

from __future__ import annotations

import re

import pytest

from factory import formats
from factory.stages.teacher_sft import IGNORE, sft_example

QUESTION = "What is 1 + 2?"
TEACHER_SYSTEM = "Teach the solution."  # the wording is documented as factory's own; the layout is not
STUDENT_SYSTEM = "Think, then solve."
OPEN, CLOSE = formats.EXPLANATION_OPEN, formats.EXPLANATION_CLOSE


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _valid_subsequence(sub: list[int], seq: list[int]) -> list[int] | None:  # teacher_base.find_valid_subsequence
    def inside(s):
        return any(s == seq[i : i + len(s)] for i in range(len(seq) - len(s) + 1))

    for candidate in (sub, sub[1:], sub[:-1], sub[1:-1]):
        if candidate and inside(candidate):
            return candidate
    return None


def _span(seq: list[int], sub: list[int], last: bool = False) -> tuple[int, int]:  # find_sublist_start_end
    starts = range(len(seq) - len(sub), -1, -1) if last else range(len(seq) - len(sub) + 1)
    start = next(i for i in starts if seq[i : i + len(sub)] == sub)
    return start, start + len(sub)


def reference_teacher_text(tokenizer, solution: str, explanation: str | None = None) -> str:
    """teacher_data.process_line_fn: the full SFT text, or (explanation None) the RL prompt."""
    content = f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>\n\n{OPEN}\n\n{explanation or ''}\n\n{CLOSE}"
    chat = [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": content},
    ]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    divider = f"<|end_of_solution|>\n\n{OPEN}\n\n"
    return text if explanation is not None else text.split(divider)[0] + divider


def reference_spans(tokenizer, solution: str, generated: str) -> dict[str, list[int]]:
    """The token ids the reference scores: KL tokens (teacher side) and solution tokens (student side)."""
    completion = f"{OPEN}\n\n{generated}"  # masked_out_think_prefix + decoded completion
    match = re.search(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), completion, re.DOTALL)
    thought = completion[match.start(1) : match.end(1)]  # not stripped: the padding is part of it
    completion_ids = encode(tokenizer, completion)
    thought_ids = _valid_subsequence(encode(tokenizer, thought), completion_ids)
    student_text = (
        f"<|begin_of_thought|>{thought}<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"
    )
    chat = [
        {"role": "system", "content": STUDENT_SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": student_text},
    ]
    student_ids = encode(tokenizer, tokenizer.apply_chat_template(chat, tokenize=False))
    solution_ids = _valid_subsequence(encode(tokenizer, f"\n\n{solution}\n\n"), student_ids)
    start, end = _span(student_ids, solution_ids, last=True)
    return {"kl": thought_ids, "solution": student_ids[start:end]}


def test_teacher_prompt_and_warmup_sequence_are_the_reference_layout(qwen_tokenizer):
    """The reference prefills `<|begin_of_solution|>\\n\\n{solution}\\n\\n<|end_of_solution|>` (the data's own
    padding); ours drops the padding inside the solution tags, so the teacher's RL prompt, its warm-up
    sequences and the teacher half of the KL are all conditioned on a layout the reference never uses."""
    tok, solution, thought = qwen_tokenizer, "The answer is \\boxed{3}.", "Add 2 to 1 to get 3."
    prompt = formats.teacher_prompt_ids(tok, QUESTION, solution, TEACHER_SYSTEM)
    assert tok.decode(prompt) == reference_teacher_text(tok, solution)
    assert prompt == encode(tok, reference_teacher_text(tok, solution))

    example = sft_example(
        tok, {"id": "0", "question": QUESTION, "solution": solution, "thought": thought}, TEACHER_SYSTEM, 16384
    )
    full = encode(tok, reference_teacher_text(tok, solution, thought))  # ends <|im_end|> "\n"
    assert example["input_ids"] == full[:-1]  # the reference also supervises the template's "\n" after <|im_end|>
    assert example["labels"].index(next(label for label in example["labels"] if label != IGNORE)) == len(prompt)


@pytest.mark.parametrize(
    "explanation,solution",
    [
        ("Half of 84 is 42", "42"),  # ends with a digit: the padding is a token of its own
        ("So the answer is three", "The answer is three"),  # so does a word
        ("Add 2 to 1 to get 3.", "The answer is \\boxed{3}."),  # `.\n\n` merges: both agree already
    ],
)
def test_scored_tokens_are_the_references(qwen_tokenizer, explanation, solution):
    """The reference scores the thought and the solution *with* their trailing `\\n\\n` padding (its regex
    keeps it, and only a token that no longer matches after re-tokenisation is dropped). Where that
    padding is a token of its own, it is a KL token and an r_SS token there; ours drops it from both
    spans. If this is kept on purpose, document it in docs/fidelity.md and delete this test."""
    tok = qwen_tokenizer
    completion_ids = encode(tok, f"{explanation}\n\n{CLOSE}") + [tok.eos_token_id]
    reference = reference_spans(tok, solution, tok.decode(completion_ids, skip_special_tokens=True))

    explanation_ids, closed = formats.split_completion_ids(tok, completion_ids)
    student = formats.build_student_sequence(
        tok, QUESTION, explanation_ids, solution, formats.StudentFormat(STUDENT_SYSTEM)
    )
    teacher = formats.build_teacher_sequence(tok, QUESTION, solution, explanation_ids, TEACHER_SYSTEM)
    ours_kl = teacher.input_ids[slice(*teacher.explanation_span)]
    ours_solution = student.input_ids[slice(*student.solution_span)]
    assert closed
    assert student.input_ids[slice(*student.explanation_span)] == ours_kl
    assert [tok.decode([i]) for i in ours_kl] == [tok.decode([i]) for i in reference["kl"]]
    assert [tok.decode([i]) for i in ours_solution] == [tok.decode([i]) for i in reference["solution"]]
