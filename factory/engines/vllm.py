"""The vLLM engine: tensor parallel within one engine; data parallelism is one engine per GPU group
(the generate stage starts one worker process per group, see `gpu_groups`).

Written against vLLM's documented offline API (vllm 0.31, the `gpu` extra): `LLM(model=...,
tensor_parallel_size=..., ...)`, `LLM.generate(prompts, sampling_params, use_tqdm)` with token-id
prompts (`{"prompt_token_ids": [...]}`) and one `SamplingParams` per prompt (per-prompt seeds), and
the request outputs' `outputs[j].token_ids / text / finish_reason`. NOT RUN ON A GPU HERE: vLLM has
no CPU wheel and the development machine has no GPU; the tests run this code through a stand-in
module (tests/vllm_standin/) that implements exactly this slice of the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from factory.engines.base import Completion, Engine, Sampling

if TYPE_CHECKING:
    from factory.models import Source
    from factory.recipe import Launch


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(
        self,
        model_source: Source,
        *,
        launch: Launch | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
    ):
        from vllm import LLM

        from factory.models import as_spec, load_tokenizer, resolve_model_path

        spec = as_spec(model_source)
        path = str(resolve_model_path(spec))
        self.tokenizer = load_tokenizer(spec)
        self.llm = LLM(
            model=path,
            tokenizer=path,
            tensor_parallel_size=launch.tensor_parallel_size if launch else 1,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization or (launch.vllm_gpu_memory_utilization if launch else 0.9),
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the n candidates of a prompt share its KV blocks
            trust_remote_code=spec.trust_remote_code,
            seed=seed,
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        seeds = self.seeds_for(prompts, sampling, seeds)
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=None if sampling.greedy else seed,
                stop=list(sampling.stop) or None,
                stop_token_ids=list(sampling.stop_token_ids) or None,
                include_stop_str_in_output=True,  # same as the transformers engine: the tag stays visible
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=True)
        return [[_completion(out) for out in sorted(request.outputs, key=lambda o: o.index)] for request in outputs]

    def close(self) -> None:
        """Release the engine and its GPU memory so that another model can load in this process."""
        import gc

        import torch
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _completion(output: Any) -> Completion:
    reason = "length" if output.finish_reason == "length" else "stop"
    return Completion(list(output.token_ids), output.text, reason)
