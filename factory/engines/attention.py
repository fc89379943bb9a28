"""`factory_sdpa`: transformers' SDPA attention with grouped-query attention done inside the kernel.

transformers' own "sdpa" path repeats the key/value heads in memory whenever an attention mask is
given (it only passes `enable_gqa` to torch without a mask), and batched decoding always has one: the
left padding. On a CPU that copy of the whole KV cache, every layer and every step, costs about as
much as the attention itself (bench/generate.py: SmolLM2's 3 KV heads serve 9 query heads).
`torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)` takes the mask and the
grouped heads as they are; the result is the same to float rounding (tests/test_engines.py).

CPU only: on CUDA, torch's memory-efficient kernel (the one that takes a mask) does not do grouped
heads, so the switch would send masked attention to the slow math kernel; there transformers'
repeat is the better trade.
"""

from __future__ import annotations

from typing import Any

NAME = "factory_sdpa"


def gqa_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """An AttentionInterface function: (batch, heads, q, dim) in, (batch, q, heads, dim) out."""
    import torch

    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and is_causal),
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model: Any) -> None:
    """Switch a CPU model on transformers' "sdpa" attention to `factory_sdpa` (others are left alone)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(NAME, gqa_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
