"""Per-GPU memory of a stage, estimated from the recipe and the models' config.json before anything loads.

`factory plan` prints it as a table; `factory run` refuses a stage that cannot fit the visible GPUs
(factory.pipeline.make_plan) and names the recipe keys that would make it fit. A stage says what it
trains and loads through `Stage.memory(recipe)`; the arithmetic it composes lives here. No torch: the
architecture comes from config.json (factory.models.read_config) or, for the Hub ids factory's bundled
recipes name, from KNOWN_CONFIGS, so the plan works offline.

What is counted, per GPU (P parameters, N = launch.world_size processes):
- Model states, as factory's workers train (fp32 master weights, `adamw_torch_fused`): single/DDP keep
  fp32 weights 4P, fp32 gradients 4P (DDP: +4P for its gradient buckets) and AdamW's two fp32 moments 8P;
  with bf16, autocast's bf16 weight copies (+2P) live from the forward to the backward. ZeRO-3 holds bf16
  weights 2P/N, bf16 gradients 2P/N and fp32 master + moments 12P/N; FSDP2 fp32 weights, gradients and
  moments (16P/N); both also hold the layers they gather (two layers in 16 bits, and the output head,
  which TRL's fused head gathers whole) and the output head's full fp32 gradient before it is reduced.
- Activations of one micro-batch of T = per_device_batch_size x the stage's longest sequence, counted as
  the tensors autograd saves in a transformers Qwen2/Llama decoder layer (SDPA attention, which keeps no
  s x s score matrix; RMSNorm computing in fp32; SwiGLU MLP), in bytes per token per layer:
      fp32 (bf16 off)           36h + 8kv + 16i
      bf16 autocast (single/DDP) 32h + 4kv + 8i   (fp32 residual stream, bf16 matmul inputs and outputs)
      bf16 model (ZeRO-3/FSDP2)  22h + 4kv + 8i
  (h hidden size, kv = key/value heads x head size, i MLP size). This is the counting of Korthikanti et al.
  2022, "Reducing Activation Recomputation in Large Transformer Models", whose GPT layer gives
  s*b*h*(34 + 5*a*s/h) bytes in 16 bits, applied to this layer; the 5*a*s/h term is the attention score
  matrix, which SDPA/flash attention never stores. With gradient checkpointing each layer keeps only its
  input (h values per token) and the backward recomputes one layer at a time. Add the running gradient of
  the residual stream (2 x h values per token).
- Logits: TRL's fused LM head (training.head_on_labelled_positions) never builds the T x vocab logits:
  it keeps the labelled positions' hidden states (and their gradient) and works on tiles of at most
  4096 tokens x 32768 vocabulary entries (`fused_head_bytes`). Without the fused head (the reward's
  forwards) the logits are reward.chunk_size rows x vocab in fp32, three times over (logits, log-softmax,
  gather).
- Frozen models (teacher RL): the KL reference (fp32 as TRL loads it from model_init_kwargs; ZeRO-3
  bf16 and sharded, FSDP2 sharded) and the reward student (its recipe dtype; ZeRO-3 sharded), with the
  no-grad forwards of the reward at reward.batch_size x reward.max_length (unset: the longest teacher sequence;
  the student's is longer by its system prompt, a few hundred tokens).
- vLLM: a colocated engine takes launch.vllm_gpu_memory_utilization of the GPU whatever the model.
Not counted: the CUDA context and allocator slack (RESERVE is kept free for them), data-loader memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.models import as_spec, read_config

if TYPE_CHECKING:
    from factory.recipe import Launch, ModelSpec

GIB = 2**30
DEFAULT_GPU = 80 * GIB  # an A100/H100 80 GB: what `plan` compares against when no GPU is visible
RESERVE = 1 * GIB  # the CUDA context and the allocator's fragmentation, never available to tensors
FUSED_TILE_TOKENS, FUSED_TILE_VOCAB = 4096, 32768  # trl.kernels.chunked_logprob's tile (TRL 1.16)
COLUMNS = ("weights", "gradients", "optimizer", "activations", "logits", "frozen models", "vLLM")

# config.json numbers of the Hub models factory's recipes name, for plans made before any download (from
# each repository's config.json; Bespoke-Stratos-7B is a fine-tuned Qwen2.5-7B-Instruct, same shape).
_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
_CONFIG_KEYS += ("intermediate_size", "vocab_size", "tie_word_embeddings")
_QWEN25 = {
    "0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 11008, 151936, True),
    "7B": (3584, 28, 28, 4, 18944, 152064, False),
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    **{f"Qwen/Qwen2.5-{size}-Instruct": dict(zip(_CONFIG_KEYS, shape)) for size, shape in _QWEN25.items()},
    "bespokelabs/Bespoke-Stratos-7B": dict(zip(_CONFIG_KEYS, _QWEN25["7B"])),
}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# --------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Architecture:
    """The shape numbers of a dense decoder that memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_width: int  # key/value heads x head size
    intermediate: int
    vocab: int
    tied: bool
    checkpoint_bytes: int  # bytes per weight as stored (what dtype "auto" loads)

    @classmethod
    def of(cls, config: dict[str, Any]) -> Architecture | None:
        config = {**config, **config.get("text_config", {})}
        try:
            hidden, heads = config["hidden_size"], config["num_attention_heads"]
            shape = (hidden, config["num_hidden_layers"], heads, config["intermediate_size"], config["vocab_size"])
        except KeyError:
            return None
        head_dim = config.get("head_dim") or hidden // heads
        kv_width = (config.get("num_key_value_heads") or heads) * head_dim
        stored = _DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype")), 4)
        tied = config.get("tie_word_embeddings", True)
        return cls(shape[0], shape[1], heads, kv_width, shape[3], shape[4], tied, stored)

    @property
    def layer_parameters(self) -> int:
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_width + 3 * self.hidden * self.intermediate

    @property
    def head_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        embeddings = self.head_parameters * (1 if self.tied else 2)
        return embeddings + self.layers * (self.layer_parameters + 2 * self.hidden) + self.hidden


def architecture(model: ModelSpec | str) -> Architecture | None:
    """The model's shape from its config.json on this machine, else KNOWN_CONFIGS; None when neither has it."""
    spec = as_spec(model)
    config = read_config(spec) or KNOWN_CONFIGS.get(spec.source)
    return Architecture.of(config) if config else None


def weight_bytes(model: ModelSpec, arch: Architecture) -> int:
    """Bytes per weight of a model loaded in its recipe dtype (auto: as stored)."""
    return _DTYPE_BYTES.get(model.dtype, arch.checkpoint_bytes)


# ------------------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Phase:
    """What one GPU holds at the peak of one phase of a stage: bytes per column of COLUMNS, and the share of
    the GPU a vLLM engine reserves (it scales with the GPU, not the model)."""

    name: str
    parts: dict[str, float]
    vllm_share: float = 0.0

    def columns(self, gpu: float) -> dict[str, float]:
        return {**{column: 0.0 for column in COLUMNS}, **self.parts, "vLLM": self.vllm_share * gpu}

    def total(self, gpu: float) -> float:
        return sum(self.columns(gpu).values())


@dataclass(frozen=True)
class MemoryEstimate:
    """A stage's per-GPU memory: its phases (the largest is the peak), the recipe section whose keys
    (gradient_checkpointing, per_device_batch_size, max_length) change it, and what the figures assume."""

    phases: tuple[Phase, ...]
    section: str | None = None
    notes: tuple[str, ...] = field(default=())

    def peak(self, gpu: float) -> Phase:
        return max(self.phases, key=lambda phase: phase.total(gpu))

    def total(self, gpu: float) -> float:
        return self.peak(gpu).total(gpu)

    def fits(self, gpu: float) -> bool:
        """Fits at the longest sequences the settings allow (the estimate is an upper bound)."""
        return self.total(gpu) <= gpu - RESERVE

    def floor(self, gpu: float) -> float:
        """What one GPU holds whatever the sequences' lengths: model states, frozen models, vLLM's share."""
        return max(
            phase.total(gpu) - phase.parts.get("activations", 0.0) - phase.parts.get("logits", 0.0)
            for phase in self.phases
        )

    def cannot_fit(self, gpu: float) -> bool:
        """Even the shortest sequences would not fit: a run would fail for sure, so it is refused."""
        return self.floor(gpu) > gpu - RESERVE


def sharded(preset: str) -> bool:
    return preset in ("zero3", "fsdp2")


def model_states(arch: Architecture, launch: Launch, bf16: bool) -> dict[str, float]:
    """Weights, gradients and AdamW states of one trained model on one GPU (module docstring)."""
    p, n = arch.parameters, launch.world_size
    if launch.preset == "zero3":
        gathered = 2 * (2 * arch.layer_parameters + arch.head_parameters)
        gradients = 2 * p / n + 4 * arch.head_parameters
        return {"weights": 2 * p / n + gathered, "gradients": gradients, "optimizer": 12 * p / n}
    if launch.preset == "fsdp2":
        gathered = 2 * 2 * arch.layer_parameters + 4 * arch.head_parameters
        gradients = 4 * p / n + 4 * arch.head_parameters
        return {"weights": 4 * p / n + gathered, "gradients": gradients, "optimizer": 8 * p / n}
    buckets = 4 * p if launch.preset == "ddp" else 0
    return {"weights": (4 + 2 * bf16) * p, "gradients": 4 * p + buckets, "optimizer": 8 * p}


def layer_bytes_per_token(arch: Architecture, mode: str) -> int:
    """Bytes autograd saves per token in one decoder layer (module docstring's table)."""
    h, kv, i = arch.hidden, arch.kv_width, arch.intermediate
    return {"fp32": 36 * h + 8 * kv + 16 * i, "autocast": 32 * h + 4 * kv + 8 * i, "bf16": 22 * h + 4 * kv + 8 * i}[
        mode
    ]


def precision_mode(preset: str, bf16: bool) -> str:
    """How activations are stored: fp32, bf16 under autocast over fp32 weights, or a bf16 model (sharded presets)."""
    return "fp32" if not bf16 else "bf16" if sharded(preset) else "autocast"


def activation_bytes(arch: Architecture, tokens: int, mode: str, checkpointing: bool) -> float:
    """Saved activations of a micro-batch of `tokens` tokens, at the end of the forward pass."""
    residual = 2 if mode == "bf16" else 4
    per_layer = layer_bytes_per_token(arch, mode) * tokens
    kept = arch.layers * (residual * arch.hidden * tokens if checkpointing else per_layer)
    recomputed = per_layer if checkpointing else 0
    return kept + recomputed + 2 * residual * arch.hidden * tokens


def fused_head_bytes(arch: Architecture, labelled: int, mode: str, triton: bool = True) -> float:
    """TRL's fused LM head: the labelled positions' hidden states and their fp32 gradient, one tile of logits
    and one vocabulary chunk of the head's weights in the compute dtype. Where Triton runs (CUDA) each tile is
    folded in a kernel; elsewhere (CPU) TRL folds it with whole-tile torch operations, whose temporaries hold
    about 8 fp32 tiles at once (measured by bench/memory.py on CPU)."""
    compute = 4 if mode == "fp32" else 2
    tile = min(labelled, FUSED_TILE_TOKENS) * min(arch.vocab, FUSED_TILE_VOCAB)
    chunk = min(arch.vocab, FUSED_TILE_VOCAB) * arch.hidden * compute
    return labelled * arch.hidden * (compute + 4) + chunk + (tile * compute if triton else 8 * 4 * tile)


def training_parts(
    arch: Architecture,
    launch: Launch,
    *,
    bf16: bool,
    checkpointing: bool,
    tokens: int,
    labelled: int,
    triton: bool = True,
) -> dict[str, float]:
    """Every column of a training step of one model: its states, activations and fused-head logits
    (`triton`: the head's tiles fold in Triton kernels, as on a GPU)."""
    mode = precision_mode(launch.preset, bf16)
    head = fused_head_bytes(arch, labelled, mode, triton)
    activations = activation_bytes(arch, tokens, mode, checkpointing)
    if checkpointing:  # the backward recomputes its first layer after the head's tiles are freed: not both at once
        activations -= min(layer_bytes_per_token(arch, mode) * tokens, head)
    return {**model_states(arch, launch, bf16), "activations": activations, "logits": head}


def frozen_bytes(arch: Architecture, per_weight: int, launch: Launch, *, zero3_bytes: int = 2) -> float:
    """A model that only runs forwards: whole on every GPU, or sharded under ZeRO-3/FSDP2."""
    if launch.preset == "zero3":
        return zero3_bytes * arch.parameters / launch.world_size
    if launch.preset == "fsdp2":
        return per_weight * arch.parameters / launch.world_size
    return per_weight * arch.parameters


def forward_bytes(arch: Architecture, tokens: int, per_value: int, chunk_rows: int) -> float:
    """A no-grad forward of `tokens` tokens (the reward's): one layer's transient tensors, the last hidden
    states and `chunk_rows` rows of fp32 logits three times over (module docstring)."""
    layer = (4 * arch.hidden + 2 * arch.kv_width + 3 * arch.intermediate) * per_value * tokens
    return layer + arch.hidden * per_value * tokens + 3 * 4 * min(chunk_rows, tokens) * arch.vocab


def kv_cache_bytes(arch: Architecture, tokens: int, per_value: int) -> float:
    """Keys and values of `tokens` cached positions (transformers generation)."""
    return 2 * arch.layers * arch.kv_width * per_value * tokens


def sft_memory(model: ModelSpec, settings: Any, launch: Launch, section: str) -> MemoryEstimate | None:
    """An SFT stage (teacher warm-up, distillation): one model trained on rows of up to max_length tokens,
    per_device_batch_size of them a micro-batch, every position counted as labelled (an upper bound)."""
    arch = architecture(model)
    if arch is None:
        return None
    tokens = settings.per_device_batch_size * settings.max_length
    parts = training_parts(
        arch,
        launch,
        bf16=settings.bf16,
        checkpointing=settings.gradient_checkpointing,
        tokens=tokens,
        labelled=tokens,
    )
    return MemoryEstimate((Phase("training", parts),), section=section)


def engine_phase(
    name: str, engine: str, model: ModelSpec, share: float, rows: int, length: int
) -> tuple[Phase, Architecture] | None:
    """A generation pass: a vLLM engine takes its share of the GPU; transformers holds the weights (recipe
    dtype) and a KV cache of `rows` sequences of `length` tokens. engine 'auto' counts as vLLM where vLLM is
    installed (it also needs a visible GPU, which is where the estimate matters)."""
    from factory.engines.base import vllm_installed

    arch = architecture(model)
    if arch is None:
        return None
    if engine == "vllm" or (engine == "auto" and vllm_installed()):
        return Phase(name, {}, vllm_share=share), arch
    per_weight = weight_bytes(model, arch)
    parts = {"weights": per_weight * arch.parameters, "activations": kv_cache_bytes(arch, rows * length, per_weight)}
    return Phase(name, parts), arch


def gib(value: float) -> str:
    return f"{value / GIB:.1f}"


# ------------------------------------------------------------------------------------------ GPUs


def visible_gpu_memory() -> int | None:
    """Bytes of the smallest visible GPU, or None on a machine without one: nvidia-smi's list where it is
    installed (so `plan` keeps its promise of no torch import), else torch.cuda where an NVIDIA or ROCm driver
    is loaded; a machine with neither never pays torch's import."""
    if shutil.which("nvidia-smi") is not None:
        return _nvidia_smi_memory()
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/kfd").exists()):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def _nvidia_smi_memory() -> int | None:
    """The smallest total memory nvidia-smi lists among the GPUs CUDA_VISIBLE_DEVICES leaves visible (given
    as indices; UUIDs or MIG names count every GPU)."""
    command = ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sizes = {}
    for line in listed.splitlines():
        index, _, mebibytes = line.partition(",")
        if mebibytes.strip().isdigit():
            sizes[index.strip()] = int(mebibytes) * 2**20
    chosen = list(sizes.values())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [name.strip() for name in visible.split(",") if name.strip()]
        if not wanted or wanted[0].startswith("-"):  # CUDA hides every GPU
            return None
        chosen = [sizes[name] for name in wanted if name in sizes] or chosen
    return min(chosen) if chosen else None
