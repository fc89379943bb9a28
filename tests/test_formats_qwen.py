"""The RLT formats on Qwen2.5's real vocabulary, where BPE merges across a tag border (`.<`, `.\\n\\n`).

The expected layouts are written out here as literal text (RLT.md, "What the reference code does,
exactly"), rendered through Qwen2.5-Instruct's chat template and tokenised as a whole: factory's
spliced id sequences must equal that token for token.
"""

from __future__ import annotations

import pytest

from factory import formats
from factory.formats import EXPLANATION_CLOSE, StudentFormat
from factory.stages.teacher_sft import IGNORE, sft_example

QUESTION = "What is 1 + 2?"
STRATOS_SYSTEM = "Your role as an assistant involves exploring questions through a systematic thinking process."
# (explanation, solution): endings '.', '}', digits, LaTeX; text to strip; tag-like and CJK characters.
CASES = [
    ("Add 2 to 1 to get 3.", "The answer is \\boxed{3}."),
    ("We need $x^2 = 4$, so $x = \\pm 2$ and the positive root is $x = 2$.", "\\boxed{2}"),
    ("Half of 84 is 42", "42"),
    ("Multiply both sides by two:\n\n\\[\n2x = 6\n\\]\n\nso x is 3", "\\[x = \\frac{6}{2} = 3\\]"),
    ("  First, $\\frac{1}{2} + \\frac{1}{2} = 1$ (one whole).\n", " So the sum is \\(1\\).  "),
    ("Check: |x| < 3 holds!", "Since |x| < 3, x ∈ (-3, 3).\n\nDone: yes"),
    ("一加二等于三。", "答案是 $3$。"),
]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def straddles(tokenizer, text: str, at: int) -> bool:
    """Whether tokenising `text` makes a token that starts before character `at` and ends after it."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return any(start < at < end for start, end in offsets)


def tokens_through(tokenizer, text: str, end: int) -> list[int]:
    """Ids of `text` tokenised as a whole, up to and including the token holding character `end - 1`."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last = next(i for i, (start, stop) in enumerate(encoded["offset_mapping"]) if start < end <= stop)
    return encoded["input_ids"][: last + 1]


def teacher_completion_ids(tokenizer, explanation: str) -> list[int]:
    """What a teacher trained on the reference layout generates: padded explanation, closing tag, end of turn."""
    return encode(tokenizer, f"{explanation.strip()}\n\n{EXPLANATION_CLOSE}") + [tokenizer.eos_token_id]


# ---------------------------------------------------------------------------- the tokenizer itself


def test_qwen_tokenizer_has_qwen25_vocabulary_and_template(qwen_tokenizer):
    tok = qwen_tokenizer
    assert len(tok) == 151665
    assert encode(tok, "Hello world") == [9707, 1879]
    assert encode(tok, ".\n\n") == [382]
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|file_sep|>": 151664}
    assert {token: tok.convert_tokens_to_ids(token) for token in specials} == specials
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert encode(tok, "a<|im_end|>b") == [64, 151645, 65]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(chat, tokenize=False, continue_final_message=True).endswith(
        "<|im_start|>assistant\nHello."
    )


def test_qwen_tokenizer_saves_and_loads(qwen_tokenizer, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    text = "Add 2 to 1 to get 3.\n\n<|end_of_explanation|><|im_end|>"
    assert len(loaded) == len(qwen_tokenizer)
    assert encode(loaded, text) == encode(qwen_tokenizer, text)
    assert loaded.chat_template == qwen_tokenizer.chat_template
    assert loaded.eos_token_id == 151645


# -------------------------------------------------------------------------- why the layout matters


def test_bpe_merges_across_an_unpadded_tag(qwen_tokenizer):
    """Without padding, Qwen's `.<` token belongs to both the explanation and the closing tag."""
    bare, padded = f"3.{EXPLANATION_CLOSE}", f"3.\n\n{EXPLANATION_CLOSE}"
    assert qwen_tokenizer.convert_ids_to_tokens(encode(qwen_tokenizer, bare))[:2] == ["3", ".<"]
    assert straddles(qwen_tokenizer, bare, bare.index(EXPLANATION_CLOSE))
    assert not straddles(qwen_tokenizer, padded, padded.index(EXPLANATION_CLOSE))


def test_teacher_prompt_renders_through_qwen_template(qwen_tokenizer):
    solution = "The answer is \\boxed{3}."
    prompt = formats.teacher_prompt_ids(qwen_tokenizer, QUESTION, solution, "Teach.")
    expected = (
        "<|im_start|>system\nTeach.<|im_end|>\n<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
        "<|begin_of_solution|>\n\nThe answer is \\boxed{3}.\n\n<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n"
    )
    assert prompt == encode(qwen_tokenizer, expected)


# -------------------------------------------------------------------- student sequence, token exact


@pytest.mark.parametrize("explanation,solution", CASES)
def test_student_sequence_is_the_reference_layout_tokenised_whole(qwen_tokenizer, explanation, solution):
    tok, fmt = qwen_tokenizer, StudentFormat(system=STRATOS_SYSTEM)
    explanation_ids, closed = formats.split_completion_ids(tok, teacher_completion_ids(tok, explanation))
    assert closed
    sequence = formats.build_student_sequence(tok, QUESTION, explanation_ids, solution, fmt)

    answer = (
        f"<|begin_of_thought|>\n\n{explanation.strip()}\n\n<|end_of_thought|>\n\n"
        f"<|begin_of_solution|>\n\n{solution.strip()}\n\n<|end_of_solution|>"
    )
    chat = [
        {"role": "system", "content": STRATOS_SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": answer},
    ]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    # the reference scores the solution up to its closing tag, its padding included
    solution_end = rendered.index(f"{solution.strip()}\n\n<|end_of_solution|>") + len(solution.strip()) + 2
    assert sequence.input_ids == tokens_through(tok, rendered, solution_end)

    (e_start, e_end), (s_start, s_end) = sequence.explanation_span, sequence.solution_span
    assert s_end == len(sequence.input_ids)
    assert sequence.input_ids[e_start:e_end] == explanation_ids
    assert tok.decode(sequence.input_ids[e_start:e_end]).strip() == explanation.strip()
    assert tok.decode(sequence.input_ids[s_start:s_end]).strip() == solution.strip()
    for start, end in (sequence.explanation_span, sequence.solution_span):
        scored = [tok.decode([token]) for token in sequence.input_ids[start:end]]
        assert not [text for text in scored if "<|" in text or "|>" in text]


# ------------------------------------------------------------------------------- teacher warm-up


@pytest.mark.parametrize("explanation,solution", CASES)
def test_teacher_sft_target_keeps_the_closing_tag_apart(qwen_tokenizer, explanation, solution):
    tok = qwen_tokenizer
    row = {"id": "r1", "question": QUESTION, "solution": solution, "thought": explanation}
    example = sft_example(tok, row, None, max_length=4096)
    target = [token for token, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]
    assert target[-1] == tok.eos_token_id
    text = tok.decode(target)
    assert text == f"{explanation.strip()}\n\n{EXPLANATION_CLOSE}<|im_end|>"
    assert not straddles(tok, text, text.index(EXPLANATION_CLOSE))

    ids, closed = formats.split_completion_ids(tok, target)
    assert closed and ids == target[: len(ids)]
    assert tok.decode(ids).strip() == explanation.strip()
    assert tok.decode(target[len(ids) :]).lstrip().startswith(EXPLANATION_CLOSE)
    assert ids == formats.explanation_ids(tok, explanation)
