"""The transformers engine: batched `generate` with a KV cache; the CPU path and the fallback on GPU.

Rows (prompt x candidate) are sorted by prompt length, longest first (a memory problem shows in the
first batch, and similar lengths share a batch, so little padding), and decoded `batch_size` rows at
a time with left padding and the model's KV cache (dynamic, or static with optional compiled
decoding on GPU). With the dynamic cache, the prefix every prompt of a call shares (the teacher
format's system prompt and chat header, often half the prompt) is run once and its KV cache copied
into each row, as vLLM's prefix caching does. Sampling draws each row's token from its own generator seeded per prompt and
candidate (temperature, then top-p, then inverse-CDF with a per-row uniform), so a row's output does
not depend on its batch neighbours; greedy decoding is plain argmax. Stop strings are checked on the
decoded tail of each row after every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence

from factory.engines.base import Completion, Engine, Sampling, prompt_seed

if TYPE_CHECKING:
    import torch

    from factory.models import Source


MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is recomputed per row


def placement(device: str | None, dtype: str | None) -> tuple[str, str]:
    """(device, dtype) to load a model with: cuda when visible; "auto" on CPU means float32
    (a checkpoint saved in bf16 would otherwise run bf16 matmuls, which are slow on CPUs)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or "auto"
    return device, "float32" if device == "cpu" and dtype == "auto" else dtype


def _token_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}


class HFEngine(Engine):
    """Generation with a loaded transformers causal LM (`HFEngine.load` loads one from a source)."""

    kind = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        cache: Literal["dynamic", "static"] = "dynamic",
        compile: bool = False,
        progress: bool = True,
    ):
        if compile and cache != "static":
            raise ValueError("compiled decoding needs the static cache (cache='static')")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.cache, self.compile, self.progress = batch_size, cache, compile, progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _token_ids(tokenizer.eos_token_id) | _token_ids(model.generation_config.eos_token_id)

    @classmethod
    def load(
        cls, source: "Source", *, dtype: str = "auto", device: str | None = None, **options: Any
    ) -> "HFEngine":
        """Load model and tokenizer onto `device` (default: cuda when visible, else cpu)."""
        from factory.models import load_causal_lm, load_tokenizer

        device, dtype = placement(device, dtype)
        model = load_causal_lm(source, dtype=dtype, device=device)
        return cls(model, load_tokenizer(source), **options)

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        seeds = self.seeds_for(prompts, sampling, seeds)
        copies = 1 if sampling.greedy else sampling.n
        rows = [(index, candidate) for index in range(len(prompts)) for candidate in range(copies)]
        rows.sort(key=lambda row: -len(prompts[row[0]]))
        done: dict[tuple[int, int], Completion] = {}
        prefix = self._shared_prefix(prompts)
        batches = [rows[start : start + self.batch_size] for start in range(0, len(rows), self.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not self.progress or len(batches) < 2):
            row_seeds = [prompt_seed(seeds[index], candidate) for index, candidate in batch]
            outputs = self._generate_batch([prompts[index] for index, _ in batch], sampling, row_seeds, prefix)
            done.update(zip(batch, outputs))
        return [[done[(index, candidate % copies)] for candidate in range(sampling.n)] for index in range(len(prompts))]

    def _shared_prefix(self, prompts: Sequence[Sequence[int]]) -> tuple[int, Any] | None:
        """(length, KV cache at batch 1) of the prefix all prompts share, if worth sharing.

        Each prompt keeps at least one token of its own (generate needs an uncached input)."""
        import torch

        if self.cache != "dynamic" or len(prompts) < 2:
            return None
        shortest = min(len(ids) for ids in prompts)
        length = 0
        while length < shortest - 1 and all(ids[length] == prompts[0][length] for ids in prompts):
            length += 1
        if length < MIN_SHARED_PREFIX:
            return None
        with torch.inference_mode():
            out = self.model(torch.tensor([list(prompts[0][:length])], device=self.device), use_cache=True)
        return length, out.past_key_values

    def _generate_batch(
        self, prompts: list[Sequence[int]], sampling: Sampling, seeds: list[int], prefix: tuple[int, Any] | None
    ) -> list[Completion]:
        """One `generate` call. Layout of a row: [shared prefix][left padding][rest of the prompt];
        the prefix's KV cache is copied for every row instead of being recomputed, and positions
        continue across the masked padding (generate derives them from the attention mask)."""
        import copy

        import torch
        from transformers import CompileConfig, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        shared = prefix[0] if prefix else 0
        rests = [list(ids[shared:]) for ids in prompts]
        rest_width = max(len(rest) for rest in rests)
        width = shared + rest_width
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        input_ids[:, :shared] = torch.tensor(list(prompts[0][:shared]), dtype=torch.long)
        attention_mask[:, :shared] = 1
        for row, rest in enumerate(rests):
            input_ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            attention_mask[row, width - len(rest) :] = 1
        extra = {}
        if prefix:
            extra["past_key_values"] = copy.deepcopy(prefix[1])
            extra["past_key_values"].batch_repeat_interleave(len(prompts))
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,  # sampling happens in _SeededSampler; generate then takes its one allowed token
            num_beams=1,
            eos_token_id=sorted(stop_ids),
            pad_token_id=self.pad_id,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            cache_implementation="static" if self.cache == "static" else None,
            compile_config=CompileConfig(fullgraph=True, dynamic=False) if self.compile else None,
            disable_compile=not self.compile,
        )
        device = self.device
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(_SeededSampler(seeds, sampling.temperature, sampling.top_p, device))
        stopper = _StopStrings(self.tokenizer, sampling.stop, width) if sampling.stop else None
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
                **extra,
            )
        generated = output[:, width:].tolist()
        completions = []
        for row, ids in enumerate(generated):
            end = next((i + 1 for i, token in enumerate(ids) if token in stop_ids), None)
            if stopper is not None and row in stopper.stopped_at:
                at = stopper.stopped_at[row] - width
                end = at if end is None else min(end, at)
            if end is None:
                end, reason = len(ids), "length"
            else:
                reason = "stop"
            kept = ids[:end]
            completions.append(Completion(kept, self.tokenizer.decode(kept, skip_special_tokens=True), reason))
        return completions

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _SeededSampler:
    """Temperature + top-p sampling with one torch.Generator per row; returns scores that allow only
    the sampled token, so generate's argmax takes it (generate's own sampling uses one global RNG)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: "torch.device"):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
            sorted_probs[before >= self.top_p] = 0.0  # the most likely token always stays
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in self.generators])
        cdf = probs.cumsum(dim=-1)
        tokens = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(1), right=True)
        tokens = tokens.clamp_(max=probs.shape[-1] - 1)
        allowed = torch.full_like(scores, float("-inf"))
        return allowed.scatter_(1, tokens, 0.0)


class _StopStrings:
    """Stops a row once its generated text contains a stop string; records the length it stopped at."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, tuple(stops), prompt_width
        self.window = max(len(stop) for stop in stops) + 2  # every token decodes to >= 1 character
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: "torch.Tensor", scores: Any, **kwargs: Any) -> "torch.Tensor":
        import torch

        length = input_ids.shape[1]
        tails = input_ids[:, max(self.prompt_width, length - self.window) :].tolist()
        for row, tail in enumerate(tails):
            if row not in self.stopped_at and any(stop in self.tokenizer.decode(tail) for stop in self.stops):
                self.stopped_at[row] = length
        done = [row in self.stopped_at for row in range(len(tails))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
