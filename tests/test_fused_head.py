"""training.head_on_labelled_positions: on CPU, TRL's fused LM head runs over the labelled positions only,
with the loss, log-probabilities, entropies and gradients it gives when it runs over every position."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as fused_head
from trl.kernels.chunked_logprob import _use_triton
from trl.trainer.utils import add_fused_lm_head

from factory.models import load_causal_lm
from factory.training import head_on_labelled_positions


def run(model, ids, labels, rows: list[int]):
    """Loss, per-token outputs and gradients of one fused forward/backward; `rows` gets the head's row count."""
    apply = fused_head._ChunkedLogProbFunction.apply

    def counted(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    fused_head._ChunkedLogProbFunction.apply = counted
    try:
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    finally:
        fused_head._ChunkedLogProbFunction.apply = apply
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out.loss.detach(), out.log_probs.detach(), out.entropy.detach(), grads


def test_cpu_head_scores_labelled_positions_only_with_the_same_results(tiny_model_dir, monkeypatch):
    # TRL's own device rule, whatever an earlier in-process training run installed; restored after the test
    monkeypatch.setattr(fused_head, "_use_triton", _use_triton)
    model = load_causal_lm(str(tiny_model_dir), dtype="float32").train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=generator)
    labels = ids.clone()
    labels[:, :18] = -100  # a prompt of 18 tokens, then 6 supervised ones per row
    every, labelled = [], []
    loss, log_probs, entropy, grads = run(model, ids, labels, every)
    head_on_labelled_positions()
    loss_c, log_probs_c, entropy_c, grads_c = run(model, ids, labels, labelled)
    assert every == [2 * 23] and labelled == [2 * 6]  # every shifted position vs the labelled ones
    assert loss_c == pytest.approx(loss.item(), rel=1e-6)
    scored = labels[:, 1:] != -100
    assert torch.allclose(log_probs_c[scored], log_probs[scored], atol=1e-6)
    assert torch.allclose(entropy_c[scored], entropy[scored], atol=1e-6)
    assert not log_probs_c[~scored].any() and not entropy_c[~scored].any()  # zeros, as before
    assert grads_c.keys() == grads.keys()
    assert all(torch.allclose(grads_c[name], grads[name], atol=1e-6) for name in grads)
