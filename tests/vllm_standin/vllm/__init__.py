"""A stand-in for the slice of vLLM's offline API that factory.engines.vllm uses, so that engine's code
runs in the CPU tests. It is not vLLM and is used only by tests (put tests/vllm_standin on sys.path).

Implemented: `LLM(model=..., tokenizer=..., tensor_parallel_size=..., dtype=..., gpu_memory_utilization=...,
max_model_len=..., enable_prefix_caching=..., trust_remote_code=..., seed=...)`, `LLM.generate(prompts,
sampling_params, use_tqdm)` with `{"prompt_token_ids": [...]}` prompts and one SamplingParams or a list,
`SamplingParams(n, temperature, top_p, max_tokens, seed, stop, stop_token_ids, include_stop_str_in_output)`,
and `RequestOutput.outputs[j]` with `index`, `text`, `token_ids`, `finish_reason` as vLLM documents them:
temperature 0 is greedy, stops are the model's eos, `stop_token_ids` and `stop` strings (the text is
cut after the stop string, or before it unless `include_stop_str_in_output`), finish reason "stop" or
"length". Decoding is a plain full-recompute loop with transformers, one sequence at a time, so it
shares no code with factory's transformers engine and cross-checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

CREATED: list[LLM] = []  # every LLM built, for tests to inspect constructor arguments


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, **engine_args: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, self.engine_args = model, engine_args
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        eos = self.model.generation_config.eos_token_id
        self.eos = {self.tokenizer.eos_token_id} | (
            set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()
        )
        self.requests: list[tuple[list[int], SamplingParams]] = []
        CREATED.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        outputs = []
        for number, (prompt, param) in enumerate(zip(prompts, params)):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, param))
            completions = [self._complete(ids, param, j) for j in range(param.n)]
            outputs.append(RequestOutput(str(number), ids, completions))
        return outputs

    def _complete(self, prompt: list[int], param: SamplingParams, index: int) -> CompletionOutput:
        generator = torch.Generator().manual_seed(((param.seed or 0) + index) % 2**63)
        stops = [param.stop] if isinstance(param.stop, str) else list(param.stop or [])
        stop_ids = self.eos | set(param.stop_token_ids or [])
        tokens: list[int] = []
        while len(tokens) < (param.max_tokens or 16):
            with torch.no_grad():
                logits = self.model(torch.tensor([prompt + tokens])).logits[0, -1].float()
            tokens.append(self._pick(logits, param, generator))
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            hit = next((s for s in stops if s in text), None)
            if hit is not None:
                cut = text.index(hit) + (len(hit) if param.include_stop_str_in_output else 0)
                return CompletionOutput(index, text[:cut], tokens, "stop", hit)
            if tokens[-1] in stop_ids:
                return CompletionOutput(index, text, tokens, "stop", None)
        return CompletionOutput(index, self.tokenizer.decode(tokens, skip_special_tokens=True), tokens, "length")

    @staticmethod
    def _pick(logits: torch.Tensor, param: SamplingParams, generator: torch.Generator) -> int:
        if param.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / param.temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        ordered[ordered.cumsum(0) - ordered >= param.top_p] = 0
        return int(order[torch.multinomial(ordered, 1, generator=generator)])
