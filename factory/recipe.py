"""The recipe: one YAML file, validated into typed sections before any heavy import.

Errors name the key and the YAML line (`stages.teacher_rl.steps (recipes/x.yaml:12)`), so a user
can fix a recipe without reading a traceback. Only `yaml.SafeLoader` is used. A recipe may
`extends:` another (a path relative to itself, or a bundled recipe's name); mappings merge deeply, the
child wins.
`--set a.b.c=VALUE` overrides any existing key, with VALUE parsed as YAML and type-checked.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from factory.bundled import bundled_recipe, recipe_file
from factory.errors import UserError

# The mark of a field that cannot change what a stage produces (throughput, memory, trackers): every stage's
# fingerprint hashes its declared sections without these fields (factory.stages.base.section_config).
RESULT_NEUTRAL = {"affects_results": False}


class Section(BaseModel):
    """Every recipe section rejects unknown keys (a typo must not be silently ignored) and
    non-finite numbers (`.nan`, `.inf` pass `ge`/`gt` bounds, then poison training)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------- models


class ModelSpec(Section):
    """Where a model comes from.

    `source` is a Hub id (`Qwen/Qwen2.5-7B-Instruct`, optionally `id@revision`), a local folder
    (`./ckpt`, `/abs/path`), or a packaged model (`packaged:smollm2-135m-instruct`).
    """

    source: str
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"

    @model_validator(mode="after")
    def _split_revision(self) -> ModelSpec:
        if "@" in self.source and not self.source.startswith(("packaged:", "/", ".")):
            base, _, rev = self.source.partition("@")
            if self.revision and self.revision != rev:
                raise ValueError(f"revision given twice: {rev!r} in source and {self.revision!r}")
            object.__setattr__(self, "source", base)
            object.__setattr__(self, "revision", rev)
        return self


class Models(Section):
    teacher: ModelSpec
    student: ModelSpec = Field(description="The reward student that scores explanations.")
    distill_base: ModelSpec


# ------------------------------------------------------------------------------------------- data


DataFormat = Literal["stratos", "jsonl", "hub", "quickstart"]


class DataSource(Section):
    """A question/solution set: `source` is a Hub dataset id, a local file, or `quickstart`."""

    source: str
    format: DataFormat = "hub"
    split: str = "train"
    revision: str | None = None
    limit: int | None = Field(default=None, ge=1)
    question_column: str = "question"
    solution_column: str = "solution"
    thought_column: str | None = None


class EvalSet(DataSource):
    """A benchmark: how each question is asked and graded (factory.data.eval_prompts, factory.data.answers)."""

    name: str
    split: str = "test"
    config: str | None = Field(default=None, description="the Hub dataset's config (subset), e.g. gpqa_diamond")
    answer_column: str = Field(
        default="answer", description="the reference answer; with distractor_columns, the correct option's text"
    )
    kind: Literal["math", "multiple_choice"] = "math"
    template: Literal["skythought_math", "skythought_gpqa", "plain"] | None = Field(
        default=None,
        description="the user turn around the question; None: SkyThought's for the kind "
        "(skythought_math, or skythought_gpqa for multiple_choice); plain: the question alone",
    )
    distractor_columns: list[str] = Field(
        default_factory=list,
        description="multiple choice with the options in columns: the wrong options' columns; the options are "
        "shown after the question in a fixed order shuffled by shuffle_seed, the reference is the correct one's letter",
    )
    shuffle_seed: int = Field(default=0, description="seed of the options' order (with distractor_columns)")

    @model_validator(mode="after")
    def _choice_layout(self) -> EvalSet:
        if self.kind != "multiple_choice" and (self.distractor_columns or self.template == "skythought_gpqa"):
            what = "distractor_columns" if self.distractor_columns else "template: skythought_gpqa"
            raise ValueError(f"{what} needs kind: multiple_choice")
        if self.distractor_columns and len(self.distractor_columns) > 25:
            raise ValueError("distractor_columns: at most 25 (the options are lettered A-Z)")
        if self.template in (None, "skythought_gpqa") and self.distractor_columns and len(self.distractor_columns) != 3:
            raise ValueError("template skythought_gpqa asks for A, B, C or D: distractor_columns needs 3 columns")
        return self


class Data(Section):
    train: DataSource
    eval: list[EvalSet] = Field(default_factory=list)

    @field_validator("eval")
    @classmethod
    def _unique_names(cls, sets: list[EvalSet]) -> list[EvalSet]:
        names = [s.name for s in sets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"eval set names must be unique, repeated: {duplicates}")
        return sets


# --------------------------------------------------------------------------------- formats/reward


class Formats(Section):
    """The two chat formats (factory/formats.py). The student format is the reward student's and the
    distilled students' own: the reference scores Bespoke-Stratos-7B in the layout it was trained on."""

    teacher_system: str | None = Field(default=None, description="the teacher's system prompt; None: factory's")
    student_system: str | None = Field(
        default=None,
        description="the student's system prompt; None: the train data's `system` column when it has one "
        "(Bespoke-Stratos-17k does), else factory's",
    )
    student_padding: str = Field(default="\n\n", description="inside every tag pair of the student format")
    student_separator: str = Field(default="\n\n", description="between the thought's closing and the solution's opening tag")


class CorrectGeneration(Section):
    """The reference's optional correct-generation term (`correct_generation_coeff`, 0 and unimplemented
    there): the reward student, given the question and the explanation, answers `rollouts` times; the
    term is the fraction of answers math-verify finds equal to the reference solution's final answer."""

    rollouts: int = Field(default=8, ge=1, description="answers per explanation (the reference's correct_generation_rollouts)")
    temperature: float = Field(default=0.7, ge=0, description="the student's sampling temperature; 0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=1024, ge=1, description="longest answer, tokens")
    seed: int = Field(default=0, description="answers are seeded per question and explanation from this")


class Reward(Section):
    """The reward: `terms` summed with coefficients. `rlt` (RLT.md) is r = r_SS - lambda * r_KL with
    alpha-weighted min/max terms, its keys below; `correct_generation` is `correct_generation`'s section."""

    terms: list[Literal["rlt", "correct_generation"]] = Field(
        default_factory=lambda: ["rlt"],
        min_length=1,
        description="the reward's terms, summed: rlt weighs 1, correct_generation correct_generation_coeff; "
        "one term of weight 1 is the reward itself (its components unprefixed)",
    )
    correct_generation_coeff: float = Field(default=1.0, description="the correct_generation term's weight in the sum")
    correct_generation: CorrectGeneration = Field(default_factory=CorrectGeneration)

    kl_coef: float = Field(default=3.0, ge=0, description="lambda")
    alpha: float = Field(default=0.01, ge=0)
    kl_estimator: Literal["k1", "k3", "full"] = "k1"
    teacher_temperature: float = Field(default=0.7, gt=0)
    student_temperature: float = Field(default=0.7, gt=0)
    missing_tag_penalty: float = Field(default=-1.0, description="added when the explanation never closes its tag")
    empty_span_penalty: float = Field(
        default=-1.0,
        description="the reference's not_matched_penalty: an empty solution span scores it per r_SS term, an empty "
        "explanation pays its negative per KL term (so it never escapes the KL penalty)",
    )
    max_length: int | None = Field(
        default=None,
        ge=16,
        description="longest scored sequence, tokens; unset: stages.teacher_rl.max_prompt_length + the longest "
        "explanation (teacher_rl.max_completion_length, generate.max_new_tokens), so nothing is cut; a smaller value is refused",
    )
    batch_size: int = Field(default=8, ge=1, description="most items per forward", json_schema_extra=RESULT_NEUTRAL)
    max_padding: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="a batch is closed early rather than be more than this share padding",
        json_schema_extra=RESULT_NEUTRAL,
    )
    chunk_size: int = Field(
        default=512, ge=1, description="positions per log-softmax chunk", json_schema_extra=RESULT_NEUTRAL
    )

    @field_validator("terms")
    @classmethod
    def _unique_terms(cls, terms: list[str]) -> list[str]:
        if len(set(terms)) < len(terms):
            raise ValueError(f"each term once: {terms}")
        return terms


# ----------------------------------------------------------------------------------------- stages


class Stage(Section):
    enabled: bool = True


class OptimizedStage(Stage):
    """AdamW and gradient clipping of a training stage; the defaults are transformers' (the reference's
    everywhere but its teacher warm-up, whose values recipes/aime.yaml sets)."""

    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient-norm clip")


class TrainStage(OptimizedStage):
    learning_rate: float = Field(gt=0)
    lr_scheduler: Literal["cosine", "constant", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    global_batch_size: int = Field(default=16, ge=1)
    per_device_batch_size: int = Field(default=1, ge=1)
    max_length: int = Field(default=16384, ge=16)
    gradient_checkpointing: bool = False
    bf16: bool = True
    save_strategy: Literal["steps", "epoch"] = Field(
        default="steps", description="checkpoint every save_steps optimizer steps, or at the end of every epoch"
    )
    save_steps: int = Field(default=100, ge=1)
    seed: int = 42
    report_to: list[Literal["none", "tensorboard", "trackio", "wandb"]] = Field(
        default_factory=lambda: ["none"], json_schema_extra=RESULT_NEUTRAL
    )


class TeacherSFT(TrainStage):
    learning_rate: float = Field(default=1e-5, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)


class TeacherRL(OptimizedStage):
    """GRPO with the RLT reward; every paper setting explicit (TRL's defaults differ)."""

    steps: int = Field(default=125, ge=1)
    prompts_per_step: int = Field(default=16, ge=1)
    generations_per_prompt: int = Field(default=64, ge=2)
    per_device_batch_size: int = Field(default=8, ge=1, description="rollouts per device per micro-batch")
    iterations_per_generation: int = Field(default=1, ge=1, description="1 = strictly on-policy")
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    learning_rate: float = Field(default=1e-6, gt=0)
    lr_scheduler: Literal["cosine", "constant", "linear", "constant_with_warmup"] = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    beta: float = Field(default=0.04, ge=0, description="KL-to-reference coefficient (k3)")
    ref_sync_steps: int = Field(default=32, ge=1)
    ref_sync_mix: float = Field(default=0.9, ge=0, le=1, description="weight of the policy in the reference update")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    clip_epsilon: float = Field(default=0.2, gt=0, description="policy-ratio clip; inert when strictly on-policy")
    kl_bias_correction: bool = Field(
        default=False, description="weight the KL term by the policy ratio (on by default in TRL 1.16); off in the paper"
    )
    vllm_importance_sampling_correction: bool = Field(
        default=False,
        description="TRL 1.16's vLLM importance-sampling correction, on by default there: each rollout's loss is "
        "weighted by the trainer's / vLLM's sequence probability ratio, and masked out above 3. Off in the paper, "
        "whose GRPO is plain on-policy; acts only with launch.vllm_mode colocate or server",
    )
    max_prompt_length: int = Field(default=4096, ge=8)
    max_completion_length: int = Field(default=16384, ge=1)
    gradient_checkpointing: bool = True
    bf16: bool = True
    save_steps: int = Field(default=25, ge=1)
    logging_steps: int = Field(default=1, ge=1)
    seed: int = 42
    report_to: list[Literal["none", "tensorboard", "trackio", "wandb"]] = Field(
        default_factory=lambda: ["none"], json_schema_extra=RESULT_NEUTRAL
    )

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.generations_per_prompt


class Generate(Stage):
    engine: Literal["auto", "vllm", "hf"] = "auto"
    n: int = Field(default=1, ge=1, description="explanations per question; the best by reward is kept")
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=16384, ge=1)
    batch_size: int = Field(default=16, ge=1, json_schema_extra=RESULT_NEUTRAL)
    seed: int = 42
    shards: int = Field(
        default=1,
        ge=1,
        description="shards for `factory generate-shard RECIPE --shard i`",
        json_schema_extra=RESULT_NEUTRAL,
    )
    limit: int | None = Field(default=None, ge=1, description="questions to generate for; all when unset")
    decontaminate_ngram: int = Field(default=13, ge=4)
    drop_unclosed: bool = True
    drop_leaked: bool = False
    before_rl: bool = Field(
        default=False,
        description="also generate with the teacher RL started from (dataset config before_rl): RLT's effect, shown",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM's GPU memory share", json_schema_extra=RESULT_NEUTRAL
    )


class Distill(TrainStage):
    learning_rate: float = Field(default=1e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    epochs: float = Field(default=3.0, gt=0)
    packing: bool = Field(
        default=True,
        description="best-fit decreasing packing (padding-free, no attention across sequences): a row then holds up "
        "to max_length tokens of several sequences and global_batch_size counts rows, so an optimizer step covers "
        "more sequences than global_batch_size. The paper's students: no packing, 96 sequences a step",
    )


class Evaluate(Stage):
    engine: Literal["auto", "vllm", "hf"] = "auto"
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=32768, ge=1)
    batch_size: int = Field(default=16, ge=1, json_schema_extra=RESULT_NEUTRAL)
    seed: int = 42
    baselines: list[Literal["distill_base", "reference_traces", "before_rl_traces"]] = Field(
        default_factory=list,
        description="also evaluated: the untouched distillation base; students distilled with stages.distill's "
        "settings on the train set's reference thoughts, or on the traces of the teacher before RL",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM's GPU memory share", json_schema_extra=RESULT_NEUTRAL
    )


class Stages(Section):
    teacher_sft: TeacherSFT = Field(default_factory=TeacherSFT)
    teacher_rl: TeacherRL = Field(default_factory=TeacherRL)
    generate: Generate = Field(default_factory=Generate)
    distill: Distill = Field(default_factory=Distill)
    evaluate: Evaluate = Field(default_factory=Evaluate)


# ---------------------------------------------------------------------------------- hub / launch


class Hub(Section):
    namespace: str | None = None
    private: bool = False
    push: bool = False
    license: str = "apache-2.0"
    space: bool = True

    @field_validator("namespace")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or " " in value):
            raise ValueError("namespace is a user or organisation name, without '/' or spaces")
        return value


class Launch(Section):
    preset: Literal["single", "ddp", "zero3", "fsdp2"] = "single"
    num_processes: int = Field(default=1, ge=1, description="training processes per machine")
    num_machines: int = Field(default=1, ge=1)
    machine_rank: int = Field(default=0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = 29500
    vllm_mode: Literal["off", "colocate", "server"] = "off"
    vllm_gpus: int = Field(default=0, ge=0, description="GPUs given to a vLLM server (server mode)")
    tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1, json_schema_extra=RESULT_NEUTRAL)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines


# ----------------------------------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    hub: Hub = Field(default_factory=Hub)
    models: Models
    data: Data
    formats: Formats = Field(default_factory=Formats)
    reward: Reward = Field(default_factory=Reward)
    stages: Stages = Field(default_factory=Stages)
    launch: Launch = Field(default_factory=Launch)
    _located: _Located | None = PrivateAttr(default=None)  # the YAML lines, set by load_recipe

    def where(self, key: str) -> str | None:
        """`file:line` (or `--set KEY`) of the dotted `key`, or of its nearest ancestor written in the
        recipe; None when unknown. Errors found after loading name the line with it."""
        return self._located.where(tuple(key.split("."))) if self._located else None

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        rl, launch = self.stages.teacher_rl, self.launch
        if rl.enabled:
            micro = rl.per_device_batch_size * launch.world_size
            if rl.rollouts_per_step % micro:
                raise _combination_error(
                    "stages.teacher_rl.per_device_batch_size",
                    f"prompts_per_step x generations_per_prompt = {rl.rollouts_per_step} rollouts per step must "
                    f"divide into micro-batches of per_device_batch_size x processes = {micro}",
                )
            if launch.vllm_mode == "server" and launch.vllm_gpus == 0:
                raise _combination_error("launch.vllm_gpus", "vllm_mode: server needs vllm_gpus >= 1")
        if launch.preset == "single" and launch.world_size > 1:
            raise _combination_error("launch.preset", "preset 'single' runs one process; use ddp, zero3 or fsdp2")
        if launch.num_machines > 1 and not launch.main_process_ip:
            raise _combination_error("launch.main_process_ip", "multi-machine launch needs main_process_ip")
        if self.hub.push and not self.hub.namespace:
            raise _combination_error("hub.namespace", "hub.push is on but no namespace is set")
        if self.stages.evaluate.enabled and not self.data.eval:
            raise _combination_error("data.eval", "the evaluate stage is enabled but no eval set is listed")
        stages = self.stages
        if stages.evaluate.enabled and "before_rl_traces" in stages.evaluate.baselines:
            needs = {
                "stages.teacher_rl.enabled": stages.teacher_rl.enabled,
                "stages.generate.enabled": stages.generate.enabled,
                "stages.generate.before_rl": stages.generate.before_rl,
                "stages.distill.enabled": stages.distill.enabled,
            }
            missing = [key for key, on in needs.items() if not on]
            if missing:
                raise _combination_error(
                    "stages.evaluate.baselines",
                    f"baseline before_rl_traces distills a student on the traces of the teacher before RL; it needs "
                    f"{', '.join(f'{key}: true' for key in missing)}",
                )
        return self

    @model_validator(mode="after")
    def _reward_length(self) -> Recipe:
        """The reward scores whole sequences (RLT.md, "Lengths"): its cap defaults to the longest teacher
        sequence the RL and generate settings allow, and a smaller explicit cap is refused."""
        rl, generate = self.stages.teacher_rl, self.stages.generate
        explanations = [rl.max_completion_length] if rl.enabled else []
        explanations += [generate.max_new_tokens] if generate.enabled else []
        if self.reward.max_length is None:
            self.reward.max_length = rl.max_prompt_length + max(explanations or [rl.max_completion_length])
            return self
        if not explanations:  # neither stage that scores explanations runs
            return self
        # without teacher RL no setting bounds a prompt, so only the explanation's length is certain
        needed = (rl.max_prompt_length if rl.enabled else 0) + max(explanations)
        if self.reward.max_length < needed:
            what = "stages.teacher_rl.max_prompt_length + the longest explanation" if rl.enabled else "the longest explanation"
            raise _combination_error(
                "reward.max_length",
                f"{self.reward.max_length} would cut explanations before they are scored: the longest teacher sequence "
                f"is at least {what} = {needed} tokens; remove the key (it then defaults to "
                f"{rl.max_prompt_length + max(explanations)}) or raise it",
            )
        return self

    @model_validator(mode="after")
    def _reward_terms(self) -> Recipe:
        """The correct_generation term decodes with the reward student, step by step until each answer ends:
        ranks would run different numbers of forwards, which a ZeRO-3-sharded student cannot."""
        if "correct_generation" in self.reward.terms and self.stages.teacher_rl.enabled and self.launch.preset == "zero3":
            raise _combination_error(
                "reward.terms",
                "correct_generation needs the reward student whole on each rank; teacher_rl under launch.preset "
                "zero3 shards it: use ddp or fsdp2, or leave correct_generation out",
            )
        return self


class _CombinationError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _combination_error(key: str, message: str) -> _CombinationError:
    return _CombinationError(key, message)


# ------------------------------------------------------------------------------ YAML with lines


class _Located:
    """Line numbers of every key path in the loaded YAML, across `extends` files."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, ...], str] = {}

    def record(self, node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
        self.lines[path] = f"{filename}:{node.start_mark.line + 1}"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                self.lines[path + (key,)] = f"{filename}:{key_node.start_mark.line + 1}"
                self.record_children(value_node, path + (key,), filename)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[path + (str(index),)] = f"{filename}:{item.start_mark.line + 1}"
                self.record_children(item, path + (str(index),), filename)

    def record_children(self, node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            saved = self.lines.get(path)
            self.record(node, path, filename)
            if saved:
                self.lines[path] = saved

    def where(self, path: tuple[str, ...]) -> str | None:
        """The line of `path`, or of its nearest ancestor present in the YAML."""
        for cut in range(len(path), 0, -1):
            found = self.lines.get(tuple(path[:cut]))
            if found:
                return found
        return None


MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # keys, values and items, aliases expanded; a real recipe has a few hundred
MAX_YAML_DEPTH = 50
MAX_ERRORS_SHOWN = 20


class _Refused(Exception):
    """Something the recipe loader will not build, at a YAML position."""

    def __init__(self, message: str, mark: yaml.Mark):
        super().__init__(message)
        self.mark = mark


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with a recipe's limits, checked while composing, before any object is built: an
    alias inside its own anchor, more than MAX_YAML_NODES nodes once aliases are expanded (a
    billion-laughs document stops at the first alias over the cap), nesting past MAX_YAML_DEPTH."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.expanded, self.depth = 0, 0
        self.sizes: dict[int, int] = {}  # id(node) -> its node count with aliases expanded, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self.sizes:
                    raise _Refused(f"alias *{event.anchor} is inside its own anchor &{event.anchor}", event.start_mark)
                size = self.sizes[id(target)]
                self._count(size, event.start_mark, f" (alias *{event.anchor} expands to {size})")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep; a recipe has a few", event.start_mark)
        before = self.expanded
        self._count(1, event.start_mark, "")
        node = super().compose_node(parent, index)
        self.sizes[id(node)] = self.expanded - before
        self.depth -= 1
        return node

    def _count(self, nodes: int, mark: yaml.Mark, why: str) -> None:
        self.expanded += nodes
        if self.expanded > MAX_YAML_NODES:
            raise _Refused(
                f"more than {MAX_YAML_NODES} YAML nodes{why}; a recipe has a few hundred, so reading stops here", mark
            )


def _check_duplicates(node: yaml.Node, path: tuple[str, ...], filename: str) -> None:
    """PyYAML keeps the last of two equal keys without a word; a recipe must not."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, (*path, str(index)), filename)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in first:
                    raise UserError(
                        f"{filename}:{key_node.start_mark.line + 1}: duplicate key {'.'.join((*path, key_node.value))} "
                        f"(first at {filename}:{first[key].line + 1}); YAML would keep only the last: delete one"
                    )
                first[key] = key_node.start_mark
            _check_duplicates(value_node, (*path, str(key_node.value)), filename)


def _recipe_text(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; give the recipe's YAML file") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UserError(f"{path}: larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a few KB: is this the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the recipe as UTF-8") from None


def _parse_yaml(text: str, origin: str) -> tuple[yaml.Node | None, Any]:
    """(node, value) of one YAML document within the recipe's limits; UserErrors name `origin`."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_duplicates(node, (), origin)
        return node, loader.construct_document(node)
    except _Refused as exc:
        raise UserError(f"{origin}:{exc.mark.line + 1}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{origin}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _read_yaml(path: Path, located: _Located) -> dict[str, Any]:
    node, data = _parse_yaml(_recipe_text(path), str(path))
    if node is None:
        raise UserError(
            f"{path}: the recipe is empty (only comments or blank lines); a recipe needs at least name, "
            "models and data: see recipes/quickstart.yaml"
        )
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    located.record(node, (), str(path))
    return data


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_tree(path: Path, located: _Located, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve() if path.is_absolute() else path
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"recipe extends itself in a loop: {chain}")
    parent_located = _Located()
    data = _read_yaml(path, parent_located)
    parent = data.pop("extends", None)
    if parent is None:
        located.lines.update(parent_located.lines)
        return data
    if not isinstance(parent, str):
        raise UserError(f"extends ({parent_located.where(('extends',))}): give the path of one recipe file")
    base_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    if not base_path.is_file():
        base_path = bundled_recipe(parent) or base_path  # `extends: quickstart`, the bundled recipe
    base = _load_tree(base_path, located, (*seen, path.resolve()))
    located.lines.update(parent_located.lines)  # the child's lines win where it sets a key
    return _deep_merge(base, data)


# ---------------------------------------------------------------------------------- --set values


def _schema_field(model: type[BaseModel], path: list[str], full_key: str) -> None:
    """Check that `path` names a field of the schema (not just of the YAML); raise UserError if not."""
    current: Any = model
    for depth, part in enumerate(path):
        annotation = _unwrap(current)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                known = ", ".join(sorted(annotation.model_fields))
                where = ".".join(path[:depth]) or "the recipe"
                raise UserError(f"--set {full_key}: {where} has no key {part!r} (known: {known})")
            current = annotation.model_fields[part].annotation
        elif _is_list(annotation) and part.isdigit():
            current = annotation.__args__[0]
        else:
            raise UserError(f"--set {full_key}: {'.'.join(path[:depth])} is a value, it has no key {part!r}")


def _unwrap(annotation: Any) -> Any:
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is None and len(args) == 1 and type(annotation).__name__ == "UnionType":
        return args[0]
    if str(getattr(annotation, "__origin__", "")) == "typing.Union" and len(args) == 1:
        return args[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def apply_overrides(data: dict[str, Any], overrides: list[str], located: _Located) -> dict[str, Any]:
    """Apply `a.b.c=VALUE` overrides; the key must exist in the schema, VALUE is parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, for example stages.teacher_rl.steps=10")
        path = key.split(".")
        _schema_field(Recipe, path, key)
        value = _parse_yaml(raw, f"--set {key}: value {raw!r}")[1] if raw.strip() else ""
        target: Any = data
        for depth, part in enumerate(path[:-1]):
            if isinstance(target, list):
                index = int(part)
                if index >= len(target):
                    raise UserError(f"--set {key}: list index {index} out of range (length {len(target)})")
                child = target[index]
            else:
                if target.get(part) is None:  # a section written empty (`reward:`) takes keys like a missing one
                    target[part] = {}
                child = target[part]
            if not isinstance(child, (dict, list)):
                at = tuple(path[: depth + 1])
                raise UserError(
                    f"--set {key}: {'.'.join(at)} is {child!r} in the recipe ({located.where(at) or 'recipe'}), "
                    "not a section with keys"
                )
            target = child
        if isinstance(target, list):
            index = int(path[-1])
            if index >= len(target):
                raise UserError(f"--set {key}: list index {index} out of range (length {len(target)})")
            target[index] = value
        else:
            target[path[-1]] = value
        located.lines[tuple(path)] = f"--set {key}"
    return data


# ------------------------------------------------------------------------------------ public API


def _format_errors(exc: ValidationError, located: _Located, origin: str) -> str:
    errors = exc.errors()
    lines = [f"{origin}: recipe is not valid" + (f" ({len(errors)} errors)" if len(errors) > 1 else "")]
    for error in errors[:MAX_ERRORS_SHOWN]:
        path = tuple(str(p) for p in error["loc"])
        combination = (error.get("ctx") or {}).get("error")
        if isinstance(combination, _CombinationError):
            path = tuple(combination.key.split("."))
            message = str(combination)
        elif error["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(path, located)
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error.get("input", ...) is None and error["type"] in ("model_type", "dict_type", "list_type"):
            message = "written with no value: list its keys under it, or delete the line for its defaults"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        where = located.where(path) or origin
        lines.append(f"  {'.'.join(path) or '<recipe>'} ({where}): {message}")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return "\n".join(lines)


def _suggest(path: tuple[str, ...], located: _Located) -> str:
    import difflib

    model: Any = Recipe
    for part in path[:-1]:
        annotation = _unwrap(model.model_fields[part].annotation) if part in getattr(model, "model_fields", {}) else None
        if _is_list(annotation):
            annotation = annotation.__args__[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            if part.isdigit():
                continue
            return ""
        model = annotation
    close = difflib.get_close_matches(path[-1], list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(model.model_fields)}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge (`extends`), override (`--set`) and validate a recipe: a path, or a bundled recipe's
    name (`quickstart`). Raises UserError."""
    path = recipe_file(path)
    located = _Located()
    data = _load_tree(path, located)
    data = apply_overrides(data, overrides or [], located)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(exc, located, str(path))) from None
    recipe._located = located
    return recipe


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, origin: str = "<recipe>") -> Recipe:
    """Validate an already resolved recipe (a run manifest's), with `--set` overrides. Raises UserError."""
    located = _Located()
    data = apply_overrides(data, overrides or [], located)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(exc, located, origin)) from None
    recipe._located = located
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe (defaults filled in), as plain JSON-able data."""
    return recipe.model_dump(mode="json")
