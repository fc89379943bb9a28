"""The transformers engine: batched decoding with a KV cache; the CPU path and the fallback on GPU.

Rows (prompt x candidate) are sorted by prompt length, longest first (a memory problem shows in the
first batch, and similar lengths share a batch, so little padding), and decoded `batch_size` rows at
a time with left padding. Two decoders:

- dynamic cache (default, the CPU path): our own step loop. The prefix every prompt of a call shares
  (the teacher format's system prompt and chat header, often half the prompt) is run once and its KV
  cache copied into each row, as vLLM's prefix caching does; a prompt's n candidates in a batch share
  one prompt forward, copied likewise; the prompt forward computes logits for the last position
  only; and a row that finishes leaves the batch and the cache at once, so later steps cost only the
  rows still decoding (`generate` keeps computing finished rows until the longest one ends). This is what makes batching pay on a CPU, where a step's cost grows with rows;
  so does `factory_sdpa` attention (factory/engines/attention.py), which the engine switches to.
- static cache: transformers' `generate`, with optional compiled decoding (GPU).

Sampling draws each row's token from its own generator seeded per prompt and candidate
(temperature, then top-p, then inverse-CDF with a per-row uniform), so a row's output does not depend
on its batch neighbours; greedy decoding is plain argmax. Stop strings are checked on the decoded
tail of each row after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from factory.engines.attention import use_gqa_sdpa
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
        use_gqa_sdpa(model)  # the engine takes the model over: padded batches attend without copying K/V
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.cache, self.compile, self.progress = batch_size, cache, compile, progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _token_ids(tokenizer.eos_token_id) | _token_ids(model.generation_config.eos_token_id)

    @classmethod
    def load(cls, source: Source, *, dtype: str = "auto", device: str | None = None, **options: Any) -> HFEngine:
        """Load model and tokenizer onto `device` (default: cuda when visible, else cpu)."""
        from factory.models import load_causal_lm, load_tokenizer

        device, dtype = placement(device, dtype)
        model = load_causal_lm(source, dtype=dtype, device=device)
        return cls(model, load_tokenizer(source), **options)

    @property
    def device(self) -> torch.device:
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

        Each prompt keeps at least one token of its own (the first step needs an uncached input)."""
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
            out = self.model(
                torch.tensor([list(prompts[0][:length])], device=self.device), use_cache=True, logits_to_keep=1
            )
        return length, out.past_key_values

    def _generate_batch(
        self, prompts: list[Sequence[int]], sampling: Sampling, seeds: list[int], prefix: tuple[int, Any] | None
    ) -> list[Completion]:
        batch = _LeftPadded(prompts, prefix[0] if prefix else 0, self.pad_id)
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        sampler = None if sampling.greedy else _SeededSampler(seeds, sampling.temperature, sampling.top_p, self.device)
        if self.cache == "static":
            generated = self._generate_static(batch, sampling, stop_ids, sampler)
        else:
            generated = self._decode_dynamic(batch, sampling, stop_ids, sampler, prefix)
        return [self._completion(ids, stop_ids, sampling) for ids in generated]

    def _decode_dynamic(
        self,
        batch: _LeftPadded,
        sampling: Sampling,
        stop_ids: set[int],
        sampler: _SeededSampler | None,
        prefix: tuple[int, Any] | None,
    ) -> list[list[int]]:
        """The step loop of the module docstring; returns each row's generated ids, stop included."""
        import copy

        import torch
        from transformers import DynamicCache

        device = self.device
        mask = batch.attention_mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, batch.shared :]  # padding masked; positions run on
        step_ids = batch.input_ids[:, batch.shared :].to(device)
        # a prompt in several rows (its n candidates) runs once; its cache and logits are copied to them
        _, copy_of = torch.unique(torch.cat([step_ids, mask[:, batch.shared :]], 1), dim=0, return_inverse=True)
        first = torch.stack([(copy_of == index).nonzero()[0, 0] for index in range(int(copy_of.max()) + 1)])
        if len(first) == batch.rows:  # every prompt once: the rows in their order
            first, copy_of = torch.arange(batch.rows, device=device), None
        if prefix:
            cache = copy.deepcopy(prefix[1])
            cache.batch_repeat_interleave(len(first))
        else:
            cache = DynamicCache(config=self.model.config)
        live = list(range(batch.rows))  # batch row of each row still decoding
        generated: list[list[int]] = [[] for _ in live]
        with torch.inference_mode():
            logits = self._last_logits(step_ids[first], mask[first], positions[first], cache)
            if copy_of is not None:
                cache.batch_select_indices(copy_of)
                logits = logits[copy_of]
            for _ in range(sampling.max_new_tokens):
                tokens = sampler.sample(logits, live) if sampler else logits.argmax(dim=-1)
                keep = []
                for index, (row, token) in enumerate(zip(live, tokens.tolist())):
                    ids = generated[row]
                    ids.append(token)
                    stopped = token in stop_ids or _ends_with_stop(self.tokenizer, ids, sampling.stop)
                    if not stopped and len(ids) < sampling.max_new_tokens:
                        keep.append(index)
                if not keep:
                    break
                if len(keep) < len(live):
                    kept = torch.tensor(keep, device=device)
                    cache.batch_select_indices(kept)
                    mask, positions, tokens = mask[kept], positions[kept], tokens[kept]
                    live = [live[index] for index in keep]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                positions = positions[:, -1:] + 1
                logits = self._last_logits(tokens[:, None], mask, positions, cache)
        return generated

    def _last_logits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The next-token logits of each row after `ids`, extending `cache`."""
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]

    def _generate_static(
        self, batch: _LeftPadded, sampling: Sampling, stop_ids: set[int], sampler: _SeededSampler | None
    ) -> list[list[int]]:
        """transformers' `generate` with the static cache (and compiled decoding when asked)."""
        import torch
        from transformers import CompileConfig, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

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
            cache_implementation="static",
            compile_config=CompileConfig(fullgraph=True, dynamic=False) if self.compile else None,
            disable_compile=not self.compile,
        )
        width = batch.input_ids.shape[1]
        stopper = _StopStrings(self.tokenizer, sampling.stop, width) if sampling.stop else None
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=batch.attention_mask.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler] if sampler else []),
                stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
            )
        generated = output[:, width:].tolist()
        if stopper is not None:
            for row, length in stopper.stopped_at.items():
                generated[row] = generated[row][: length - width]
        return generated

    def _completion(self, ids: list[int], stop_ids: set[int], sampling: Sampling) -> Completion:
        """Trim after the first stop id (generate pads finished rows) and name the finish reason."""
        end = next((i + 1 for i, token in enumerate(ids) if token in stop_ids), len(ids))
        kept = ids[:end]
        stopped = (
            len(kept) < sampling.max_new_tokens
            or kept[-1] in stop_ids
            or _ends_with_stop(self.tokenizer, kept, sampling.stop)
        )
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(kept, text, "stop" if stopped else "length")

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _LeftPadded:
    """A batch laid out as [shared prefix][left padding][rest of the prompt], with its attention mask;
    the shared prefix's KV cache is copied into every row instead of being recomputed."""

    def __init__(self, prompts: list[Sequence[int]], shared: int, pad_id: int):
        import torch

        rests = [list(ids[shared:]) for ids in prompts]
        width = shared + max(len(rest) for rest in rests)
        self.rows, self.shared = len(prompts), shared
        self.input_ids = torch.full((self.rows, width), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((self.rows, width), dtype=torch.long)
        self.input_ids[:, :shared] = torch.tensor(list(prompts[0][:shared]), dtype=torch.long)
        self.attention_mask[:, :shared] = 1
        for row, rest in enumerate(rests):
            self.input_ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            self.attention_mask[row, width - len(rest) :] = 1


def _stop_window(stops: Sequence[str]) -> int:
    """Tokens whose decoded text holds any stop string that ends in the last one: every token decodes
    to at least one character, and two more cover a stop string starting mid-token."""
    return max((len(stop) for stop in stops), default=0) + 2


def _ends_with_stop(tokenizer: Any, ids: Sequence[int], stops: Sequence[str]) -> bool:
    """Whether the decoded tail of `ids` contains a stop string."""
    return bool(stops) and any(stop in tokenizer.decode(ids[-_stop_window(stops) :]) for stop in stops)


class _SeededSampler:
    """Temperature + top-p sampling with one torch.Generator per batch row."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def sample(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """One token per row of `logits`; `rows[i]` is the batch row (the generator) of logits row i."""
        import torch

        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
            sorted_probs[before >= self.top_p] = 0.0  # the most likely token always stays
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        uniform = torch.cat([torch.rand(1, generator=self.generators[row], device=probs.device) for row in rows])
        cdf = probs.cumsum(dim=-1)
        tokens = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(1), right=True)
        return tokens.clamp_(max=probs.shape[-1] - 1).squeeze(1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """As a `generate` logits processor: scores that allow only the sampled token, so generate's
        argmax takes it (generate's own sampling uses one global RNG)."""
        import torch

        tokens = self.sample(scores, range(scores.shape[0]))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)


class _StopStrings:
    """For `generate`: stops a row once its generated text contains a stop string; records the length
    it stopped at."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, tuple(stops), prompt_width
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        length = input_ids.shape[1]
        tails = input_ids[:, max(self.prompt_width, length - _stop_window(self.stops)) :].tolist()
        for row, tail in enumerate(tails):
            if row not in self.stopped_at and _ends_with_stop(self.tokenizer, tail, self.stops):
                self.stopped_at[row] = length
        done = [row in self.stopped_at for row in range(len(tails))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
