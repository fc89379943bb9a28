"""The memory plan (factory.memory) against the measured peak of real training steps, in one run.

A random Qwen2-shaped model (config built here, no download) takes training steps as factory's SFT workers
take them: fp32 master weights, TRL's fused LM head on the labelled positions only
(training.head_on_labelled_positions), fused AdamW, optional bf16 autocast and gradient checkpointing
(non-reentrant, as factory.training sets it). Two steps run; the second is measured, since AdamW's moments
only exist from the first step on and the estimate counts them. Each case prints the estimate, the
measured peak and their ratio (measured / estimate), as one JSON line, last line the list of all.

What is measured is the memory the estimate counts, tensors:
- CUDA: torch.cuda.max_memory_allocated over the second step (allocator's tensors, no CUDA context, no
  cache slack), the model built after the counter was zeroed.
- CPU: the process's peak resident memory over the second step (VmHWM, reset through /proc/self/clear_refs)
  less the resident memory before the model was built. Run with MALLOC_MMAP_THRESHOLD_=65536 (the test
  does) so that glibc returns freed tensors to the system at once instead of keeping them in its heap,
  and with one thread, so that no thread-local scratch buffers count.

Stages: both SFT stages train alike (SFTTrainer, the fused head) and differ, for memory, in the share of
positions with a label: `teacher_sft` labels the last fifth of each row (the prompt and solution are masked),
`distill` all but the first tenth (the student prompt); the estimate is given the labelled positions (the plan counts every position, an upper bound).

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python bench/memory.py          # CPU, small model
    python bench/memory.py --device cuda --model qwen0.5b --batch 1 --length 4096 --bf16  # a lent GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path
from types import SimpleNamespace

from factory import memory

SHAPES = {
    # hidden, layers, heads, kv heads, MLP, vocab: small enough for a CPU test, activations dominant
    "small": (384, 4, 6, 2, 1024, 8192),
    "qwen0.5b": (896, 24, 14, 2, 4864, 151936),  # Qwen/Qwen2.5-0.5B-Instruct's config.json
}
LABELLED = {"teacher_sft": 0.2, "distill": 0.9}  # share of each row's positions with a label


def config_dict(shape: str) -> dict:
    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    }


def labelled_positions(stage: str, batch: int, length: int) -> int:
    """Positions with a label: the last LABELLED share of each row (the first position has none to predict)."""
    return batch * min(length - 1, length - int(length * (1 - LABELLED[stage])))


def estimate(shape: str, stage: str, batch: int, length: int, checkpointing: bool, bf16: bool, device: str) -> float:
    """factory.memory's per-GPU bytes of one SFT process with these settings (sft_memory's arithmetic, given
    the architecture and the rows' labelled positions rather than its upper bound of every position)."""
    arch = memory.Architecture.of(config_dict(shape))
    launch = SimpleNamespace(preset="single", world_size=1)
    parts = memory.training_parts(
        arch,
        launch,
        bf16=bf16,
        checkpointing=checkpointing,
        tokens=batch * length,
        labelled=labelled_positions(stage, batch, length),
        triton=device == "cuda",
    )
    return sum(parts.values())


class Peak:
    """The peak of the memory the estimate counts, over the span between `start` and `read` (module docstring)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def baseline(self) -> None:
        if self.device == "cuda":
            import torch

            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _status("VmRSS")

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:  # not allowed here: the peak then spans step 1 too, whose peak is no higher
                pass

    def read(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status("VmHWM") - self.base


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(shape: str, stage: str, batch: int, length: int, checkpointing: bool, bf16: bool, device: str) -> float:
    """Bytes at the peak of the second of two training steps, over the memory before the model existed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from factory.training import head_on_labelled_positions

    head_on_labelled_positions()
    gc.collect()  # an earlier case's model (the fused head's bound method makes a cycle) must not go mid-step
    peak = Peak(device)
    peak.baseline()
    torch.manual_seed(0)
    config = Qwen2Config(**config_dict(shape), use_cache=False)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=torch.float32).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
    labels = ids.clone()
    labels[:, : int(length * (1 - LABELLED[stage]))] = -100
    for step in range(2):
        if step == 1:
            peak.start()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    return peak.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="small", choices=sorted(SHAPES))
    parser.add_argument("--stages", default="teacher_sft,distill")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast over the fp32 weights")
    parser.add_argument("--checkpointing", default="off,on", help="gradient checkpointing cases: off, on or both")
    args = parser.parse_args()
    if args.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print("warning: without MALLOC_MMAP_THRESHOLD_=65536 glibc may keep freed tensors; the CPU peak reads high")
    results = []
    for stage in args.stages.split(","):
        for checkpointing in [case == "on" for case in args.checkpointing.split(",")]:
            case = {"model": args.model, "stage": stage, "batch": args.batch, "length": args.length}
            case |= {"checkpointing": checkpointing, "bf16": args.bf16, "device": args.device}
            estimated = estimate(args.model, stage, args.batch, args.length, checkpointing, args.bf16, args.device)
            measured = measure(args.model, stage, args.batch, args.length, checkpointing, args.bf16, args.device)
            case |= {"estimate_gib": estimated / memory.GIB, "measured_gib": measured / memory.GIB}
            case["ratio"] = measured / estimated
            print(json.dumps(case), flush=True)
            results.append(case)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
