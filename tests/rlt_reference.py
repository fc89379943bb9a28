"""A plain RLT reward reference: one sample at a time, full forward logits, full log-softmax.

Written independently of factory.rewards.rlt's batching, chunking and hidden-state path, to check it
(tests/test_reward.py, tests/test_score.py) and to time it against (bench/reward.py). It takes the
token sequences and spans as given (what `--dump-tokens` writes) and recomputes everything else.
"""

from __future__ import annotations

import math

import torch


def reference_components(
    teacher_model,
    student_model,
    teacher_ids: list[int],
    teacher_span: tuple[int, int],
    student_ids: list[int],
    student_explanation_span: tuple[int, int],
    student_solution_span: tuple[int, int],
    closed: bool,
    *,
    kl_estimator: str = "k1",
    teacher_temperature: float = 0.7,
    student_temperature: float = 0.7,
    kl_coef: float = 3.0,
    alpha: float = 0.01,
    missing_tag_penalty: float = -1.0,
    empty_span_penalty: float = -1.0,
) -> dict[str, float]:
    with torch.no_grad():
        teacher_logits = teacher_model(torch.tensor([teacher_ids], device=teacher_model.device)).logits[0].float()
        student_logits = student_model(torch.tensor([student_ids], device=student_model.device)).logits[0].float()
    teacher_lp = torch.log_softmax(teacher_logits / teacher_temperature, dim=-1)  # (length, vocab)
    student_lp = torch.log_softmax(student_logits / student_temperature, dim=-1)

    def scored(logprobs: torch.Tensor, ids: list[int], span: tuple[int, int]) -> list[float]:
        positions = list(range(*span))
        targets = torch.tensor([ids[p] for p in positions], dtype=torch.long, device=logprobs.device)
        rows = logprobs[[p - 1 for p in positions]]
        return rows.gather(1, targets[:, None]).squeeze(1).tolist()

    solution = scored(student_lp, student_ids, student_solution_span)
    if kl_estimator == "full":
        kl = [
            float((teacher_lp[t - 1].exp() * (teacher_lp[t - 1] - student_lp[s - 1])).sum())
            for t, s in zip(range(*teacher_span), range(*student_explanation_span))
        ]
    else:
        teacher_tokens = scored(teacher_lp, teacher_ids, teacher_span)
        student_tokens = scored(student_lp, student_ids, student_explanation_span)
        if kl_estimator == "k1":
            kl = [t - s for t, s in zip(teacher_tokens, student_tokens)]
        else:
            kl = [math.exp(s - t) - 1 - (s - t) for t, s in zip(teacher_tokens, student_tokens)]
    # empty spans: the reference's NaN mean becomes not_matched_penalty; its min/max over an empty span
    # (the float maximum) is its bug, so every term of an empty span takes the penalty's value here
    r_ss_mean = sum(solution) / len(solution) if solution else empty_span_penalty
    r_ss_min = min(solution) if solution else empty_span_penalty
    kl_mean = sum(kl) / len(kl) if kl else -empty_span_penalty
    kl_max = max(kl) if kl else -empty_span_penalty
    penalty = 0.0 if closed else missing_tag_penalty
    return {
        "r_ss_mean": r_ss_mean,
        "r_ss_min": r_ss_min,
        "kl_mean": kl_mean,
        "kl_max": kl_max,
        "penalty": penalty,
        "reward": r_ss_mean + alpha * r_ss_min - kl_coef * (kl_mean + alpha * kl_max) + penalty,
    }


def reference_for(reward, item) -> dict[str, float]:
    """The reference on the sequences `reward` scores `item` on, with `reward`'s settings."""
    built = reward.sequences(item)
    s = reward.settings
    return reference_components(
        reward.teacher_model,
        reward.student_model,
        built.teacher.input_ids,
        built.teacher.explanation_span,
        built.student.input_ids,
        built.student.explanation_span,
        built.student.solution_span,
        item[3],
        kl_estimator=s.kl_estimator,
        teacher_temperature=s.teacher_temperature,
        student_temperature=s.student_temperature,
        kl_coef=s.kl_coef,
        alpha=s.alpha,
        missing_tag_penalty=s.missing_tag_penalty,
        empty_span_penalty=s.empty_span_penalty,
    )
