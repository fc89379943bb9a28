"""Generation engines: the transformers engine on a tiny model, and the vLLM engine's code through the
stand-in module in tests/vllm_standin (vLLM itself cannot run here: no GPU, no CPU wheel)."""

from __future__ import annotations

import importlib

import pytest

from factory.engines import Sampling, open_engine
from factory.engines.base import gpu_groups, resolve_kind
from factory.errors import UserError
from factory.recipe import Launch

QUESTIONS = ["What is 12 + 7? Add the units first", "x y", "0 1 2 3 4 5 6 7 8 9 10 11 12", "A train travels 60 km"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return open_engine("hf", str(tiny_model_dir), batch_size=3)


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenizer(q)["input_ids"] for q in QUESTIONS]


def test_hf_engine_yields_n_explanations_per_question(engine, prompts):
    outputs = engine.generate(prompts, Sampling(n=3, temperature=1.0, max_new_tokens=8, seed=5))
    assert [len(candidates) for candidates in outputs] == [3, 3, 3, 3]
    for candidates in outputs:
        assert all(1 <= len(c.token_ids) <= 8 for c in candidates)
        assert all(c.finish_reason == ("length" if len(c.token_ids) == 8 else "stop") for c in candidates)
        assert len({tuple(c.token_ids) for c in candidates}) >= 2  # independent samples, not copies
    greedy = engine.generate(prompts[:1], Sampling(n=2, temperature=0, max_new_tokens=8))[0]
    assert greedy[0] == greedy[1]  # greedy with n > 1 repeats the one greedy completion


@pytest.mark.parametrize("shared", [False, True], ids=["plain-prompts", "teacher-prompts"])
def test_batched_greedy_equals_plain_generate_one_prompt_at_a_time(engine, prompts, shared):
    """Left padding, length bucketing, the shared-prefix cache and the finish trimming must not
    change a single token."""
    import torch

    from factory.formats import teacher_prompt_ids

    if shared:  # teacher prompts share the chat header and system prompt: their KV cache is computed once
        prompts = [teacher_prompt_ids(engine.tokenizer, q, "The answer is 19.", "Teach.") for q in QUESTIONS]
        system_turn = engine.tokenizer("<|im_start|>system\nTeach.<|im_end|>\n<|im_start|>user\n")["input_ids"]
        assert engine._shared_prefix(prompts)[0] >= len(system_turn)
    else:
        assert engine._shared_prefix(prompts) is None
    batched = engine.generate(prompts, Sampling(temperature=0, max_new_tokens=10))
    for ids, [completion] in zip(prompts, batched):
        with torch.inference_mode():
            out = engine.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10)
        reference = out[0, len(ids) :].tolist()
        eos = engine.tokenizer.eos_token_id
        reference = reference[: reference.index(eos) + 1] if eos in reference else reference
        assert completion.token_ids == reference


def test_factory_sdpa_attention_matches_transformers_sdpa_on_a_padded_batch(tiny_model_dir):
    """The engine's attention (grouped KV heads given to the kernel as they are) against transformers'
    own "sdpa" (KV heads repeated in memory), on left-padded rows with a cache, prompt and decode step."""
    import torch
    from transformers import AutoModelForCausalLM

    from factory.engines.attention import use_gqa_sdpa

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the grouped case is tested
    ids = torch.randint(5, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5], mask[1, :2] = 0, 0  # left padding

    def prompt_then_step():
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            step = model(input_ids=ids[:, -1:], attention_mask=step_mask, past_key_values=out.past_key_values)
        return out.logits, step.logits

    expected = prompt_then_step()
    use_gqa_sdpa(model)
    assert model.config._attn_implementation == "factory_sdpa"
    got = prompt_then_step()
    for reference, logits in zip(expected, got):
        kept = mask.bool() if reference.shape[1] > 1 else slice(None)
        assert torch.allclose(logits[kept], reference[kept], atol=1e-5)


def test_sampling_depends_on_the_prompt_seed_not_on_the_batch(engine, prompts):
    sampling = Sampling(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10)
    together = engine.generate(prompts, sampling, seeds=[11, 12, 13, 14])
    alone = [engine.generate([ids], sampling, seeds=[seed])[0] for ids, seed in zip(prompts, [11, 12, 13, 14])]
    assert [[c.token_ids for c in row] for row in together] == [[c.token_ids for c in row] for row in alone]
    other = engine.generate(prompts, sampling, seeds=[21, 22, 23, 24])
    assert [[c.token_ids for c in row] for row in other] != [[c.token_ids for c in row] for row in together]


def test_a_prompts_candidates_share_one_prompt_forward(tiny_model_dir, prompts):
    """n candidates of a prompt in one batch: its prompt runs through the model once, and every row still
    samples with its own seed (the completions of transformers' generate, which runs every row)."""
    from factory.engines.hf import HFEngine

    engine = HFEngine.load(str(tiny_model_dir), batch_size=6, progress=False)
    shapes = []
    hook = engine.model.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    sampling = Sampling(n=3, temperature=0.9, max_new_tokens=6)
    try:
        together = engine.generate(prompts, sampling, seeds=[1, 2, 3, 4])
    finally:
        hook.remove()
    assert [rows for rows, width in shapes if width > 1] == [2, 2]  # batches of 6 rows: 2 prompts x 3 candidates
    static = HFEngine.load(str(tiny_model_dir), cache="static", batch_size=6, progress=False)
    assert static.generate(prompts, sampling, seeds=[1, 2, 3, 4]) == together


def test_stop_strings_and_stop_ids_end_a_completion(engine, prompts):
    free = engine.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=12))[0][0]
    stop = engine.tokenizer.decode(free.token_ids[3:5])
    stopped = engine.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=12, stop=(stop,)))[0][0]
    assert stopped.finish_reason == "stop"
    assert stop in stopped.text and stop not in engine.tokenizer.decode(stopped.token_ids[:-1])
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)] and len(stopped.token_ids) <= 5
    by_id = engine.generate(
        prompts[:1], Sampling(temperature=0, max_new_tokens=12, stop_token_ids=(free.token_ids[2],))
    )
    first = free.token_ids.index(free.token_ids[2])
    assert by_id[0][0].token_ids == free.token_ids[: first + 1] and by_id[0][0].finish_reason == "stop"


def test_static_cache_generate_path_gives_the_same_completions(engine, prompts, tiny_model_dir):
    """The static-cache decoder (transformers' generate, compiled on GPU) against the dynamic step loop:
    same tokens, finish reasons and stop-string trimming, greedy and seeded sampling."""
    from factory.engines.hf import HFEngine

    static = HFEngine.load(str(tiny_model_dir), cache="static", batch_size=3, progress=False)
    free = engine.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=12))[0][0]
    stop = engine.tokenizer.decode(free.token_ids[3:5])
    for sampling in (
        Sampling(temperature=0, max_new_tokens=10),
        Sampling(temperature=0, max_new_tokens=12, stop=(stop,)),
        Sampling(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10),
    ):
        expected = engine.generate(prompts, sampling, seeds=[1, 2, 3, 4])
        assert static.generate(prompts, sampling, seeds=[1, 2, 3, 4]) == expected, sampling


def test_engine_choice_and_gpu_groups(monkeypatch):
    import factory.engines.base as base

    monkeypatch.setattr(base, "vllm_installed", lambda: False)
    assert resolve_kind("auto") == "hf"
    with pytest.raises(UserError, match="stages.generate.engine: vllm was asked for but vllm is not installed"):
        resolve_kind("vllm", "stages.generate.engine")
    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    monkeypatch.setattr(base, "gpu_count", lambda: 0)
    assert resolve_kind("auto") == "hf"
    with pytest.raises(UserError, match="no GPU is visible"):
        resolve_kind("vllm")
    monkeypatch.setattr(base, "gpu_count", lambda: 4)
    assert resolve_kind("auto") == "vllm"
    assert gpu_groups(2, devices=5) == [[0, 1], [2, 3]]
    assert gpu_groups(1, devices=3) == [[0], [1], [2]]
    with pytest.raises(UserError, match="launch.tensor_parallel_size: 4 GPUs per engine but only 2 visible"):
        gpu_groups(4, devices=2)


@pytest.fixture
def standin(vllm_standin, monkeypatch):
    """vllm importable from the stand-in, and one 'GPU' visible to the engine choice."""
    import factory.engines.base as base

    monkeypatch.setattr(base, "gpu_count", lambda: 1)
    return importlib.import_module("vllm")


def test_vllm_engine_runs_through_the_standin_and_matches_transformers(standin, tiny_model_dir, engine, prompts):
    from factory.engines.vllm import VLLMEngine

    launch = Launch(tensor_parallel_size=1, vllm_gpu_memory_utilization=0.4)
    vllm_engine = open_engine("auto", str(tiny_model_dir), launch, max_model_len=512)
    assert isinstance(vllm_engine, VLLMEngine)
    args = standin.CREATED[-1].engine_args
    assert args["tensor_parallel_size"] == 1 and args["gpu_memory_utilization"] == 0.4
    assert args["max_model_len"] == 512 and args["enable_prefix_caching"] is True

    stop = engine.tokenizer.decode(
        engine.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=12))[0][0].token_ids[4:6]
    )
    greedy = Sampling(temperature=0, max_new_tokens=12, stop=(stop,))
    ours, theirs = engine.generate(prompts, greedy), vllm_engine.generate(prompts, greedy)
    for a, b in zip(ours, theirs):
        assert a[0].token_ids == b[0].token_ids and a[0].finish_reason == b[0].finish_reason
        assert a[0].text.startswith(b[0].text)
    assert any(row[0].finish_reason == "stop" and row[0].text.endswith(stop) for row in theirs)

    sampled = vllm_engine.generate(
        prompts, Sampling(n=3, temperature=0.7, top_p=0.95, max_new_tokens=6), seeds=[1, 2, 3, 4]
    )
    assert [len(row) for row in sampled] == [3, 3, 3, 3]
    sent = standin.CREATED[-1].requests[-4:]
    assert [ids for ids, _ in sent] == prompts
    assert [(p.n, p.seed, p.temperature, p.top_p, p.max_tokens, p.include_stop_str_in_output) for _, p in sent] == [
        (3, seed, 0.7, 0.95, 6, True) for seed in (1, 2, 3, 4)
    ]
    vllm_engine.close()
    assert importlib.import_module("vllm.distributed.parallel_state").CALLS[-2:] == [
        "destroy_model_parallel",
        "destroy_distributed_environment",
    ]
    assert vllm_engine.llm is None
