"""The recipe's sections (models, data, formats, reward, stages, hub, launch): each a typed block of keys
with its bounds and defaults. Split from factory.recipe so that the schema of one section is read apart from
the checks across sections (factory.recipe) and the YAML reading (factory.recipe_yaml)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The mark of a field that cannot change what a stage produces (throughput, memory, trackers): every stage's
# fingerprint hashes its declared sections without these fields (factory.stages.base.section_config).
RESULT_NEUTRAL = {"affects_results": False}


def neutral_field(*args: Any, **kwargs: Any) -> Any:
    """`Field(...)` for a field marked RESULT_NEUTRAL: changing it never reruns a stage."""
    return Field(*args, json_schema_extra=RESULT_NEUTRAL, **kwargs)


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
    student_separator: str = Field(
        default="\n\n", description="between the thought's closing and the solution's opening tag"
    )


class CorrectGeneration(Section):
    """The reference's optional correct-generation term (`correct_generation_coeff`, 0 and unimplemented
    there): the reward student, given the question and the explanation, answers `rollouts` times; the
    term is the fraction of answers math-verify finds equal to the reference solution's final answer."""

    rollouts: int = Field(
        default=8, ge=1, description="answers per explanation (the reference's correct_generation_rollouts)"
    )
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
        description="longest scored sequence, tokens; unset: whole sequences are scored, as in the reference; a "
        "value below stages.teacher_rl.max_prompt_length + the longest explanation (teacher_rl.max_completion_length, "
        "generate.max_new_tokens) is refused",
    )
    batch_size: int = neutral_field(default=8, ge=1, description="most items per forward")
    max_padding: float = neutral_field(
        default=0.1, gt=0, le=1, description="a batch is closed early rather than be more than this share padding"
    )
    chunk_size: int = neutral_field(default=512, ge=1, description="positions per log-softmax chunk")

    @field_validator("terms")
    @classmethod
    def _unique_terms(cls, terms: list[str]) -> list[str]:
        if len(set(terms)) < len(terms):
            raise ValueError(f"each term once: {terms}")
        return terms


# ----------------------------------------------------------------------------------------- stages


class Stage(Section):
    enabled: bool = True


class TrainerSettings(Stage):
    """What every training stage hands its TRL trainer alike (factory.training.common_arguments): AdamW,
    gradient clipping, schedule, batch per device, precision, checkpoints, seed, trackers. The optimizer's
    defaults are transformers' (the reference's everywhere but its teacher warm-up, whose values
    recipes/aime.yaml sets); a stage overrides only the defaults that differ for it."""

    learning_rate: float = Field(gt=0)
    lr_scheduler: Literal["cosine", "constant", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient-norm clip")
    per_device_batch_size: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    bf16: bool = True
    save_steps: int = Field(default=100, ge=1)
    seed: int = 42
    report_to: list[Literal["none", "tensorboard", "trackio", "wandb"]] = neutral_field(
        default_factory=lambda: ["none"]
    )


class TrainStage(TrainerSettings):
    """An SFT stage: epochs over a fixed set of sequences."""

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    global_batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=16384, ge=16)
    save_strategy: Literal["steps", "epoch"] = Field(
        default="steps", description="checkpoint every save_steps optimizer steps, or at the end of every epoch"
    )


class TeacherSFT(TrainStage):
    learning_rate: float = Field(default=1e-5, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)


class TeacherRL(TrainerSettings):
    """GRPO with the RLT reward; every paper setting explicit (TRL's defaults differ)."""

    learning_rate: float = Field(default=1e-6, gt=0)
    lr_scheduler: Literal["cosine", "constant", "linear", "constant_with_warmup"] = "constant"
    per_device_batch_size: int = Field(default=8, ge=1, description="rollouts per device per micro-batch")
    gradient_checkpointing: bool = True
    save_steps: int = Field(default=25, ge=1)
    steps: int = Field(default=125, ge=1)
    prompts_per_step: int = Field(default=16, ge=1)
    generations_per_prompt: int = Field(default=64, ge=2)
    iterations_per_generation: int = Field(default=1, ge=1, description="1 = strictly on-policy")
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    beta: float = Field(default=0.04, ge=0, description="KL-to-reference coefficient (k3)")
    ref_sync_steps: int = Field(default=32, ge=1)
    ref_sync_mix: float = Field(default=0.9, ge=0, le=1, description="weight of the policy in the reference update")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    clip_epsilon: float = Field(default=0.2, gt=0, description="policy-ratio clip; inert when strictly on-policy")
    kl_bias_correction: bool = Field(
        default=False,
        description="weight the KL term by the policy ratio (on by default in TRL 1.16); off in the paper",
    )
    vllm_importance_sampling_correction: bool = Field(
        default=False,
        description="TRL 1.16's vLLM importance-sampling correction, on by default there: each rollout's loss is "
        "weighted by the trainer's / vLLM's sequence probability ratio, and masked out above 3. Off in the paper, "
        "whose GRPO is plain on-policy; acts only with launch.vllm_mode colocate or server",
    )
    max_prompt_length: int = Field(default=4096, ge=8)
    max_completion_length: int = Field(default=16384, ge=1)
    logging_steps: int = Field(default=1, ge=1)

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.generations_per_prompt


class Generate(Stage):
    engine: Literal["auto", "vllm", "hf"] = "auto"
    n: int = Field(default=1, ge=1, description="explanations per question; the best by reward is kept")
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=16384, ge=1)
    batch_size: int = neutral_field(default=16, ge=1)
    seed: int = 42
    shards: int = neutral_field(default=1, ge=1, description="shards for `factory generate-shard RECIPE --shard i`")
    limit: int | None = Field(default=None, ge=1, description="questions to generate for; all when unset")
    decontaminate_ngram: int = Field(default=13, ge=4)
    drop_unclosed: bool = True
    drop_leaked: bool = False
    before_rl: bool = Field(
        default=False,
        description="also generate with the teacher RL started from (dataset config before_rl): RLT's effect, shown",
    )
    gpu_memory_utilization: float = neutral_field(default=0.9, gt=0, le=1, description="vLLM's GPU memory share")


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
    batch_size: int = neutral_field(default=16, ge=1)
    seed: int = 42
    baselines: list[Literal["distill_base", "reference_traces", "before_rl_traces"]] = Field(
        default_factory=list,
        description="also evaluated: the untouched distillation base; students distilled with stages.distill's "
        "settings on the train set's reference thoughts, or on the traces of the teacher before RL",
    )
    gpu_memory_utilization: float = neutral_field(default=0.9, gt=0, le=1, description="vLLM's GPU memory share")


class Stages(Section):
    teacher_sft: TeacherSFT = Field(default_factory=TeacherSFT)
    teacher_rl: TeacherRL = Field(default_factory=TeacherRL)
    generate: Generate = Field(default_factory=Generate)
    distill: Distill = Field(default_factory=Distill)
    evaluate: Evaluate = Field(default_factory=Evaluate)


# ---------------------------------------------------------------------------------- hub / launch


# The license ids a Hub card may name (huggingface.co/docs/hub/repositories-licenses): the Hub refuses a card
# with any other, which would fail the first publish after the whole run.
HUB_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
    cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
    agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++
    osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1
    llama3.2 llama3.3 gemma unknown other""".split()
)


class Hub(Section):
    namespace: str | None = None
    private: bool = False
    push: bool = False
    license: str = Field(default="apache-2.0", description="a Hub license id, written in every card")
    space: bool = True

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str) -> str:
        if value not in HUB_LICENSES:
            close = difflib.get_close_matches(value.lower(), HUB_LICENSES, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ValueError(
                f"{value!r} is not a license id the Hub accepts; {hint}use an id from "
                "https://huggingface.co/docs/hub/repositories-licenses, or 'other' (for any other license, or an "
                "id the Hub added after factory's list)"
            )
        return value

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
    join_timeout_s: int = neutral_field(
        default=900,
        ge=1,
        description="with num_machines > 1: how long machine 0 waits for the others to join, and they for it",
    )
    vllm_mode: Literal["off", "colocate", "server"] = "off"
    vllm_gpus: int = Field(default=0, ge=0, description="GPUs given to a vLLM server (server mode)")
    tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_gpu_memory_utilization: float = neutral_field(default=0.3, gt=0, le=1)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines
