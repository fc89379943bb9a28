"""The teacher and student chat formats on token ids: exact spans, tag parsing, vocabulary check."""

from __future__ import annotations

import pytest
from tiny import CHAT_TEMPLATE, build_tokenizer

from factory.errors import UserError
from factory.formats import (
    DEFAULT_STUDENT_SYSTEM,
    DEFAULT_TEACHER_SYSTEM,
    EXPLANATION_CLOSE,
    EXPLANATION_OPEN,
    SOLUTION_CLOSE,
    SOLUTION_OPEN,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
    StudentFormat,
    build_student_sequence,
    build_teacher_sequence,
    check_same_vocabulary,
    explanation_ids,
    parse_teacher_completion,
    split_completion_ids,
    student_format,
    student_messages,
    teacher_messages,
    teacher_prompt_ids,
)
from factory.recipe import Formats

QUESTION = "What is 12 + 7?"
SOLUTION = "The answer is \\boxed{19}."


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_teacher_messages_prefill_solution_then_open_explanation():
    messages = teacher_messages(QUESTION, SOLUTION)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == DEFAULT_TEACHER_SYSTEM
    assert messages[1]["content"] == QUESTION
    assert messages[2]["content"] == f"{SOLUTION_OPEN}\n\n{SOLUTION}\n\n{SOLUTION_CLOSE}\n\n{EXPLANATION_OPEN}\n\n"
    full = teacher_messages(QUESTION, SOLUTION, "Teach.", explanation="Add units.")
    assert full[0]["content"] == "Teach."
    assert full[2]["content"] == messages[2]["content"] + f"Add units.\n\n{EXPLANATION_CLOSE}"


def test_student_messages_are_the_padded_stratos_layout():
    messages = student_messages(QUESTION, "Add units.", SOLUTION)
    assert messages[0]["content"] == DEFAULT_STUDENT_SYSTEM
    assert messages[2]["content"] == (
        f"{THOUGHT_OPEN}\n\nAdd units.\n\n{THOUGHT_CLOSE}\n\n{SOLUTION_OPEN}\n\n{SOLUTION}\n\n{SOLUTION_CLOSE}"
    )
    custom = student_messages(QUESTION, " e\n", SOLUTION, StudentFormat("Think.", padding="", separator="\n"))
    assert custom[0]["content"] == "Think."
    assert custom[2]["content"] == f"{THOUGHT_OPEN}e{THOUGHT_CLOSE}\n{SOLUTION_OPEN}{SOLUTION}{SOLUTION_CLOSE}"


def test_student_format_takes_the_data_system_prompt_unless_the_recipe_sets_one():
    formats = Formats()
    assert student_format(formats, []).system == DEFAULT_STUDENT_SYSTEM
    assert student_format(formats, [{"system": "Stratos."}, {"system": "Stratos."}]).system == "Stratos."
    assert student_format(Formats(student_system="Mine."), [{"system": "Stratos."}]).system == "Mine."
    with pytest.raises(UserError, match="formats.student_system"):
        student_format(formats, [{"system": "A"}, {"system": "B"}])


def test_teacher_prompt_is_the_chat_continued_after_the_open_tag(tok):
    prompt = teacher_prompt_ids(tok, QUESTION, SOLUTION)
    rendered = tok.apply_chat_template(
        teacher_messages(QUESTION, SOLUTION), tokenize=False, continue_final_message=True
    )
    assert prompt == ids(tok, rendered)
    assert tok.decode(prompt).endswith(f"{SOLUTION}\n\n{SOLUTION_CLOSE}\n\n{EXPLANATION_OPEN}\n\n")
    assert "<|im_start|>assistant\n" + SOLUTION_OPEN in tok.decode(prompt)
    custom = tok.decode(teacher_prompt_ids(tok, QUESTION, SOLUTION, system="Be brief."))
    assert "system\nBe brief.<|im_end|>" in custom and DEFAULT_TEACHER_SYSTEM not in custom


def test_template_that_trims_content_keeps_the_blank_line():
    trimming = build_tokenizer()
    trimming.chat_template = CHAT_TEMPLATE.replace("message['content']", "(message['content'] | trim)")
    plain = build_tokenizer()
    assert teacher_prompt_ids(trimming, QUESTION, SOLUTION) == teacher_prompt_ids(plain, QUESTION, SOLUTION)


def test_explanation_ids_are_spliced_not_retokenised(tok):
    # "Add the units" split into single characters: not what tokenising the text would give.
    explanation = [i for ch in "Add the units" for i in ids(tok, ch)]
    assert explanation != ids(tok, "Add the units")
    teacher = build_teacher_sequence(tok, QUESTION, SOLUTION, explanation)
    start, end = teacher.explanation_span
    assert teacher.input_ids == teacher_prompt_ids(tok, QUESTION, SOLUTION) + explanation
    assert (start, end) == (len(teacher.input_ids) - len(explanation), len(teacher.input_ids))

    student = build_student_sequence(tok, QUESTION, explanation, SOLUTION)
    (e0, e1), (s0, s1) = student.explanation_span, student.solution_span
    assert student.input_ids[e0:e1] == explanation
    assert tok.decode(student.input_ids[s0:s1]).strip() == SOLUTION and s1 == len(student.input_ids)
    assert tok.decode(student.input_ids[e1:s0]) == f"\n\n{THOUGHT_CLOSE}\n\n{SOLUTION_OPEN}\n\n"
    full = tok.apply_chat_template(student_messages(QUESTION, "Add the units", SOLUTION), tokenize=False)
    assert tok.decode(student.input_ids) == full[: full.rindex(SOLUTION_CLOSE)]  # the solution's padding is scored


def test_padding_already_written_by_the_teacher_is_scored_not_repeated(tok):
    padded = explanation_ids(tok, "Add the units.")
    assert tok.decode(padded) == "Add the units.\n\n"  # what a teacher writes before its closing tag
    student = build_student_sequence(tok, QUESTION, padded, SOLUTION)
    (e0, e1), s0 = student.explanation_span, student.solution_span[0]
    assert student.input_ids[e0:e1] == padded
    assert tok.decode(student.input_ids[e1:s0]) == f"{THOUGHT_CLOSE}\n\n{SOLUTION_OPEN}\n\n"
    assert explanation_ids(tok, " \n") == []


def test_empty_explanation_gives_empty_spans(tok):
    teacher = build_teacher_sequence(tok, QUESTION, SOLUTION, [])
    student = build_student_sequence(tok, QUESTION, [], SOLUTION)
    assert teacher.explanation_span[0] == teacher.explanation_span[1] == len(teacher.input_ids)
    assert student.explanation_span[0] == student.explanation_span[1]


def test_parse_teacher_completion():
    assert parse_teacher_completion(f"Add units.\n\n{EXPLANATION_CLOSE}<|im_end|>") == ("Add units.", True)
    assert parse_teacher_completion("Add units and then") == ("Add units and then", False)


def test_split_completion_ids(tok):
    explanation = ids(tok, "Add the units.")
    padding = ids(tok, "\n\n")
    closed = explanation + padding + ids(tok, EXPLANATION_CLOSE) + [tok.eos_token_id]
    assert split_completion_ids(tok, closed) == (explanation + padding, True)  # padded, as the reference scores it
    unclosed = explanation + padding + [tok.eos_token_id, tok.pad_token_id]
    assert split_completion_ids(tok, unclosed) == (explanation + padding, False)
    assert split_completion_ids(tok, padding + ids(tok, EXPLANATION_CLOSE)) == ([], True)  # whitespace only: empty
    # " <|" is one token of this vocabulary: it straddles the tag and is dropped with its space.
    straddling = ids(tok, f"Done. {EXPLANATION_CLOSE}")
    assert "Ġ<|" in tok.convert_ids_to_tokens(straddling)
    assert split_completion_ids(tok, straddling) == (ids(tok, "Done."), True)


def test_vocabulary_check(tiny_model_dir, tiny_student_dir, tmp_path):
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(tiny_model_dir)
    check_same_vocabulary(teacher, AutoTokenizer.from_pretrained(tiny_student_dir))
    build_tokenizer(vocab_size=400).save_pretrained(tmp_path / "other")
    other = AutoTokenizer.from_pretrained(tmp_path / "other")
    with pytest.raises(UserError) as error:
        check_same_vocabulary(teacher, other)
    message = str(error.value)
    assert str(tiny_model_dir) in message and str(tmp_path / "other") in message
    assert "do not share a vocabulary" in message
