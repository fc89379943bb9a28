"""The RLT reward (RLT.md, "The reward"), batched on token ids. Pure torch: no trainer imports.

For each item (question, solution, explanation ids, closed):

    lp_sol  = student log-probs of the solution tokens, given question and explanation
    kl_i    = log p_teacher(t_i | q, s, t_<i) - log p_student(t_i | q, t_<i)     (k1, default)
              exp(d_i) - 1 - d_i with d_i = student - teacher log-prob          (k3)
              sum_v p_teacher(v) (log p_teacher(v) - log p_student(v))          (full vocabulary)
    reward  = (mean(lp_sol) + alpha min(lp_sol)) - lambda (mean(kl) + alpha max(kl)) + penalty

Each model's log-probs are taken at its own temperature (logits / T). `penalty` is
`missing_tag_penalty` when the explanation never closed its tag (it is still scored, as if closed).
Empty spans get the values the reference intends (RLT.md, "Empty spans"), never a free pass: no
solution token scores `empty_span_penalty` (-1) per r_SS term, no explanation token pays
-`empty_span_penalty` (+1) per KL term, so an explanation that closes at once is not rewarded for
escaping the KL penalty. No result is ever NaN.

Truncation (`max_length`): `factory.rewards.sequences.fit_to_length`; cut items are flagged `truncated`.

Speed and memory: batches of up to `batch_size` items, right-padded (causal attention makes an
attention mask unnecessary for right padding); a batch is closed early rather than be more than
`max_padding` padding, since padded positions cost what real ones do. Items with the same teacher
prompt (one question's explanations: a GRPO group, best-of-n candidates) are kept together, larger
groups first, then by length. The prefix all sequences of a batch share (the system turn) runs once
at batch 1, the rest of each question's shared prefix (its prompt) once more on a copy of that
cache, and the rows of that question together on theirs; so the decoder's cost is the explanation
and solution tokens, not the prompt 64 times over as in the paper's GRPO groups, nor once per item
of a batch holding several questions (the quick start's best-of-2 candidates in batches of 8: 27%
fewer decoder positions). Only the decoder runs over the whole sequence; the output head is applied
to the scored positions only, `chunk_size` rows at a time, so logits memory is bounded by chunk_size
x vocab, and the log-softmax is taken in fp32 whatever the model dtype. This assumes the model's logits are its output embedding applied to the decoder's last hidden
state (true of Qwen2, Llama, SmolLM2); models whose config rescales or soft-caps logits are refused
rather than scored wrongly.

Sharded training (ZeRO-3, FSDP2; `lockstep`, the largest of each count over the ranks, an all-reduce): every
forward of a sharded module gathers its weights from all ranks, so each rank must run as many batches, decoder
calls and head calls, in the same order, as the busiest one. The counts are agreed before the calls they count
(the agreement is itself a collective): the batch count before the first batch, then per batch one vector
(`call_counts`: decoder calls of each model, head chunks) from the spans alone; the extra calls are idle
one-token calls whose output is dropped.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from factory.errors import UserError
from factory.formats import StudentFormat, build_student_sequence, build_teacher_sequence
from factory.recipe import Reward
from factory.rewards.base import RewardItem
from factory.rewards.batching import batches_of, call_counts, decoder_calls, forward_plan, grouped_order
from factory.rewards.sequences import ScoringSequences, fit_to_length

RewardSettings = Reward  # the recipe's `reward` section is the settings object

NOTES = {
    "r_ss_mean": "mean log-probability the student gives the reference solution after reading the explanation",
    "r_ss_min": "log-probability of the solution token the student found least likely (weighted by α in r_SS)",
    "kl_mean": "mean KL over the explanation between the teacher, who saw the solution, and the student, who "
    "did not: low means each step reads as natural to the student",
    "kl_max": "the largest per-token KL of the explanation (weighted by α in the KL term)",
    "penalty": "the missing-tag penalty when the explanation never closed its tag, else 0",
    "reward": "the RLT reward, r_SS − λ·r_KL + penalty (higher is better)",
}
COMPONENTS = tuple(NOTES)


def _counts_alone(counts: list[int]) -> list[int]:
    """One process scores alone: it makes the calls it needs, no more."""
    return counts


@dataclass
class ForwardWork:
    """Positions the decoder and the output head ran over (padding included), summed over calls: what
    the batching and prefix sharing saved, against one full forward per sequence (bench/reward.py)."""

    decoder_positions: int = 0
    head_positions: int = 0


class RLTReward:
    """Scores teacher explanations for a fixed teacher, student and settings (a `rewards.base.Reward`).

    `teacher_model` may be a policy in training mode (it is put in eval mode for the forward and
    restored module by module, under no_grad) and may be the very object passed as student.
    `student_tokenizer` (default: `tokenizer`) renders the student format when the student's chat
    template differs; both must share the vocabulary (`formats.check_same_vocabulary`).
    `student_format` is the reward student's own (`formats.student_format`).
    """

    name = "rlt"
    components = COMPONENTS
    notes = NOTES
    summaries = ("r_ss", "r_kl")  # the two terms of the formula: mean + alpha min (solution), mean + alpha max (KL)

    def __init__(
        self,
        teacher_model: Any,
        student_model: Any,
        tokenizer: Any,
        settings: Reward | None = None,
        teacher_system: str | None = None,
        student_format: StudentFormat | None = None,
        *,
        student_tokenizer: Any = None,
        lockstep: Callable[[list[int]], list[int]] | None = None,
    ):
        for model in (teacher_model, student_model):
            _check_plain_head(model)
        self.teacher_model = teacher_model
        self.student_model = student_model
        self.tokenizer = tokenizer
        self.student_tokenizer = student_tokenizer or tokenizer
        self.settings = settings or Reward()
        self.work = ForwardWork()
        self.teacher_system = teacher_system
        self.student_format = student_format or StudentFormat()
        self.lockstep = lockstep or _counts_alone

    def sequences(self, item: RewardItem | tuple) -> ScoringSequences:
        """The exact token sequences and spans an item is scored on (also what `--dump-tokens` writes)."""
        question, solution, explanation_ids, _ = RewardItem(*item)
        explanation_ids = [int(i) for i in explanation_ids]  # also accepts a tensor
        teacher = build_teacher_sequence(self.tokenizer, question, solution, explanation_ids, self.teacher_system)
        student = build_student_sequence(
            self.student_tokenizer, question, explanation_ids, solution, self.student_format
        )
        return fit_to_length(teacher, student, self.settings.max_length)

    def summarise(self, result: dict[str, Any]) -> dict[str, float]:
        """r_ss and r_kl of one scored item, before the coefficients."""
        alpha = self.settings.alpha
        return {
            "r_ss": result["r_ss_mean"] + alpha * result["r_ss_min"],
            "r_kl": result["kl_mean"] + alpha * result["kl_max"],
        }

    def score(self, items: Sequence[RewardItem | tuple]) -> list[dict[str, Any]]:
        """Per-item components, in the order given."""
        items = [RewardItem(*item) for item in items]
        built = [self.sequences(item) for item in items]
        results: list[dict[str, Any]] = [{} for _ in items]
        batches = batches_of(grouped_order(built), built, self.settings.batch_size, self.settings.max_padding)
        idle = self.lockstep([len(batches)])[0] - len(batches)  # as many batches as the busiest rank
        for batch in batches:
            scored = self._score_batch([built[i] for i in batch], [items[i].closed for i in batch])
            for index, result in zip(batch, scored):
                results[index] = result
        idle_batch = [self.sequences(RewardItem("", "", [0]))] if idle > 0 else []  # built once, scored idle times
        for _ in range(idle):
            self._score_batch(idle_batch, [True])
        return results

    def _score_batch(self, built: list[ScoringSequences], closed: list[bool]) -> list[dict[str, Any]]:
        s = self.settings
        teacher = ([b.teacher.input_ids for b in built], [[b.teacher.explanation_span for b in built]])
        student = (
            [b.student.input_ids for b in built],
            [[b.student.explanation_span for b in built], [b.student.solution_span for b in built]],
        )
        plans = [forward_plan(*teacher), forward_plan(*student)]
        calls = self.lockstep(call_counts(plans, [teacher[1], student[1]], s.chunk_size))
        teacher_rows, teacher_targets = _hidden_rows(self.teacher_model, *teacher, plans[0], self.work, calls[0])
        student_rows, student_targets = _hidden_rows(self.student_model, *student, plans[1], self.work, calls[1])
        self.work.head_positions += teacher_rows.shape[0] + student_rows.shape[0]
        explanation_total = teacher_rows.shape[0]  # student rows: all explanations first, then all solutions
        teacher_head, student_head = _output_head(self.teacher_model), _output_head(self.student_model)
        with torch.no_grad():
            student_lp = _target_logprobs(
                student_head, student_rows, student_targets, s.student_temperature, s.chunk_size, calls[2]
            )
            if s.kl_estimator == "full":
                kl = _full_kl(
                    teacher_head,
                    teacher_rows,
                    s.teacher_temperature,
                    student_head,
                    student_rows[:explanation_total],
                    s.student_temperature,
                    s.chunk_size,
                    calls[3],
                )
            else:
                teacher_lp = _target_logprobs(
                    teacher_head, teacher_rows, teacher_targets, s.teacher_temperature, s.chunk_size, calls[3]
                )
                log_ratio = teacher_lp - student_lp[:explanation_total].to(teacher_lp.device)
                kl = log_ratio if s.kl_estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
        explanation_lengths = [b.teacher.explanation_span[1] - b.teacher.explanation_span[0] for b in built]
        solution_lengths = [b.student.solution_span[1] - b.student.solution_span[0] for b in built]
        kl_per_item = kl.cpu().split(explanation_lengths)
        solution_per_item = student_lp[explanation_total:].cpu().split(solution_lengths)
        return [
            self._components(b, c, item_kl, item_solution)
            for b, c, item_kl, item_solution in zip(built, closed, kl_per_item, solution_per_item)
        ]

    def _components(
        self, built: ScoringSequences, closed: bool, kl: torch.Tensor, solution_lp: torch.Tensor
    ) -> dict[str, Any]:
        """One item's terms (an empty span's as the module docstring says) and its reward, r_ss - kl_coef r_kl + penalty."""
        s = self.settings
        solved, explained = solution_lp.numel() > 0, kl.numel() > 0
        terms = {
            "r_ss_mean": solution_lp.mean().item() if solved else s.empty_span_penalty,
            "r_ss_min": solution_lp.min().item() if solved else s.empty_span_penalty,
            "kl_mean": kl.mean().item() if explained else -s.empty_span_penalty,
            "kl_max": kl.max().item() if explained else -s.empty_span_penalty,
            "penalty": 0.0 if closed else s.missing_tag_penalty,
        }
        parts = self.summarise(terms)
        return {
            **terms,
            "reward": parts["r_ss"] - s.kl_coef * parts["r_kl"] + terms["penalty"],
            "explanation_tokens": kl.numel(),
            "solution_tokens": solution_lp.numel(),
            "truncated": built.truncated,
        }


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Eval mode and no_grad for the duration; each module's own training flag is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _check_plain_head(model: Any) -> None:
    config = getattr(model, "config", None)
    found = [name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if found:
        raise UserError(
            f"{getattr(config, 'name_or_path', '') or type(model).__name__}: its config sets {found[0]}, a logit "
            "transform the chunked RLT reward does not apply; choose a model without it"
        )


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _output_head(model: Any) -> Any:
    return model.get_output_embeddings()


def _hidden_rows(
    model: Any,
    sequences: list[list[int]],
    span_groups: list[list[tuple[int, int]]],
    plan: tuple[int, list],
    work: ForwardWork,
    calls: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states that predict the tokens of each span, and those tokens.

    The prefix all sequences share runs once at batch 1 (`shared_prefix_length`); the sequences that
    share a longer one up to their first scored position (`prefix_groups`: one question's items) run
    the rest of it once more at batch 1 on a copy of that cache, then their rows together on theirs;
    the other sequences run their rows together on the first cache (`plan`, `forward_plan`). Rows are
    right-padded within each forward. Rows come out span group by span group, item by item within a group
    (so two groups' rows are not interleaved). Then one-token forwards up to `calls` decoder calls (lockstep).
    """
    shared, units = plan
    batch = torch.zeros(len(sequences), max(len(ids) for ids in sequences), dtype=torch.long)
    for row, ids in enumerate(sequences):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    device = _device(model)
    hidden: dict[int, tuple[torch.Tensor, int]] = {}  # row -> (its hidden states, position of the first)
    with frozen(model):
        decoder = model.get_decoder()
        cache = None
        if shared:
            cache = decoder(input_ids=batch[:1, :shared].to(device), use_cache=True).past_key_values
            work.decoder_positions += shared
        for rows, prefix in units:
            unit_cache = copy.deepcopy(cache) if cache is not None and len(units) > 1 else cache
            if prefix > shared:
                unit_cache = decoder(
                    input_ids=batch[rows[:1], shared:prefix].to(device), past_key_values=unit_cache, use_cache=True
                ).past_key_values
                work.decoder_positions += prefix - shared
            width = max(len(sequences[row]) for row in rows)
            if unit_cache is not None:
                unit_cache.batch_repeat_interleave(len(rows))
            states = decoder(
                input_ids=batch[rows, prefix:width].to(device),
                past_key_values=unit_cache,
                use_cache=unit_cache is not None,
            ).last_hidden_state
            work.decoder_positions += len(rows) * (width - prefix)
            hidden.update((row, (states[index], prefix)) for index, row in enumerate(rows))
        for _ in range(calls - decoder_calls(plan)):
            decoder(input_ids=batch[:1, :1].to(device))
        parts, targets = [], []
        for spans in span_groups:
            for row, (start, end) in enumerate(spans):
                states, first = hidden[row]
                parts.append(states[start - 1 - first : end - 1 - first])
                targets.append(batch[row, start:end])
    return torch.cat(parts), torch.cat(targets).to(device)


def _chunk_logprobs(head: Any, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(head(rows).float() / temperature, dim=-1)


def _target_logprobs(
    head: Any,
    rows: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk: int,
    calls: int = 0,
) -> torch.Tensor:
    """fp32 log-probs of `targets`, `chunk` rows of logits at a time; then idle head calls up to `calls`."""
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    starts = range(0, rows.shape[0], chunk)
    for start in starts:
        logprobs = _chunk_logprobs(head, rows[start : start + chunk], temperature)
        out[start : start + chunk] = logprobs.gather(1, targets[start : start + chunk, None]).squeeze(1)
    _idle_head_calls(calls - len(starts), rows, head)
    return out


def _full_kl(
    teacher_head: Any,
    teacher_rows: torch.Tensor,
    teacher_temperature: float,
    student_head: Any,
    student_rows: torch.Tensor,
    student_temperature: float,
    chunk: int,
    calls: int = 0,
) -> torch.Tensor:
    """Exact KL(teacher || student) per position over the vocabulary, `chunk` positions at a time (a teacher
    and a student head call each); then idle pairs up to `calls`.

    Output heads padded to different widths are compared on their common columns.
    """
    out = torch.empty(teacher_rows.shape[0], dtype=torch.float32, device=teacher_rows.device)
    starts = range(0, teacher_rows.shape[0], chunk)
    for start in starts:
        teacher = _chunk_logprobs(teacher_head, teacher_rows[start : start + chunk], teacher_temperature)
        student = _chunk_logprobs(student_head, student_rows[start : start + chunk], student_temperature)
        width = min(teacher.shape[1], student.shape[1])
        teacher, student = teacher[:, :width], student[:, :width].to(teacher.device)
        out[start : start + chunk] = (teacher.exp() * (teacher - student)).sum(dim=1)
    for _ in range(calls - len(starts)):
        _idle_head_calls(1, teacher_rows, teacher_head)
        _idle_head_calls(1, student_rows, student_head)
    return out


def _idle_head_calls(count: int, rows: torch.Tensor, head: Any) -> None:
    """`count` head calls on one row, whose logits are dropped: a sharded head gathers its weights on every
    call, so each rank must make as many (lockstep: the teacher RL worker under ZeRO-3 or FSDP2)."""
    for _ in range(count):
        head(rows.new_zeros(1, rows.shape[1]))
