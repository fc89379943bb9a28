"""The stage contract and registry: how a stage plugs into the pipeline without touching it.

A stage is a registered object with one entry point, `run(ctx) -> StageResult`. Its name fixes the
role of what it produces (`teacher`, `traces`, `student`, `report`); it declares the roles it consumes, the
slice of the recipe that determines its output (hashed into its fingerprint) and a code version
(bump it when a change makes old artifacts stale). The pipeline resolves each consumed role to the
artifact of the nearest enabled upstream stage producing it, or to the recipe's base input.

`check(recipe)` holds the stage's own rules on the recipe (batch sizes that divide, settings that
must agree): pure and cheap, so `validate`, `plan` and `run` report every mistake together before
any stage does work (factory.pipeline.preflight), instead of one stage failing hours into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from factory.errors import Problem, UserError

if TYPE_CHECKING:
    from factory.artifacts import ArtifactMeta
    from factory.recipe import DataSource, EvalSet, ModelSpec, Recipe


@dataclass
class ResolvedInput:
    """One consumed role: an upstream artifact folder, or a base model / dataset of the recipe."""

    role: str
    fingerprint: str
    artifact_dir: Path | None = None
    meta: "ArtifactMeta | None" = None
    model: "ModelSpec | None" = None
    data: "DataSource | None" = None
    resolved_revision: str | None = None

    @property
    def is_artifact(self) -> bool:
        return self.artifact_dir is not None

    def model_source(self) -> "ModelSpec | str":
        """What `factory.models.load_*` takes: the artifact's `model/` folder, or the base ModelSpec."""
        if self.artifact_dir is not None:
            return str(self.artifact_dir / "model")
        if self.model is None:
            raise ValueError(f"input {self.role!r} is not a model")
        return self.model

    def describe(self) -> str:
        if self.artifact_dir is not None:
            return f"{self.meta.stage if self.meta else 'artifact'}@{self.fingerprint[:12]}"
        if self.model is not None:
            return self.model.source + (f"@{self.model.revision}" if self.model.revision else "")
        if self.data is not None:
            return f"{self.data.source}[{self.data.split}]"
        return self.role


@dataclass
class StageContext:
    """What a running stage gets: the recipe, its output folder and its resolved inputs.

    `out_dir` may already hold partial work of an interrupted run with the same fingerprint: a
    stage resumes from it (checkpoints, finished shards) instead of starting over.
    """

    recipe: "Recipe"
    run_dir: Path
    out_dir: Path
    fingerprint: str
    inputs: dict[str, ResolvedInput]
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # logical name -> path relative to out_dir
    summary: str = ""  # the one line printed when the stage ends


def problems_of(key: str, check: Callable[[], object]) -> list[Problem]:
    """A check that raises UserError (factory.models, factory.data), as Problems at `key`."""
    try:
        check()
    except UserError as exc:
        return [Problem(key, str(exc))]
    return []


def data_problems(source: "DataSource | EvalSet", key: str) -> list[Problem]:
    """A data set a stage reads: readable, with the columns it needs (its first row only); `key`
    names its `source`."""
    from factory.data import check_data_source

    return problems_of(key, lambda: check_data_source(source))


def eval_set_problems(recipe: "Recipe") -> list[Problem]:
    return [p for i, s in enumerate(recipe.data.eval) for p in data_problems(s, f"data.eval.{i}.source")]


def vllm_problems(wanted: bool, key: str) -> list[Problem]:
    """vLLM asked for at `key` on a machine where it is not installed."""
    from factory.engines.base import vllm_installed

    if wanted and not vllm_installed():
        return [Problem(key, "vllm is not installed on this machine (pip install 'factory-rlt[gpu]')", machine=True)]
    return []


def thought_problems(recipe: "Recipe", who: str) -> list[Problem]:
    """`who` trains on the train set's reference thoughts: a jsonl/hub train set without a
    thought column has none (stratos and quickstart rows carry theirs)."""
    train = recipe.data.train
    if train.format in ("jsonl", "hub") and train.thought_column is None:
        return [
            Problem(
                "data.train.thought_column",
                f"{who} trains on the train set's reference thoughts, but data.train (format {train.format}) "
                "names no thought column: set thought_column (or format: stratos)",
            )
        ]
    return []


# What each stage produces: the role names the Hub repo suffix and what downstream stages consume.
STAGE_ROLES = {
    "teacher_sft": "teacher",
    "teacher_rl": "teacher",
    "generate": "traces",
    "distill": "student",
    "evaluate": "report",
}
ROLE_KINDS = {"teacher": "model", "traces": "dataset", "student": "model", "report": "report"}


class Stage:
    """Base class; subclasses set `name`, `consumes`, `version` and implement `config` and `run`."""

    name: ClassVar[str]
    consumes: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1

    @property
    def role(self) -> str:
        return STAGE_ROLES[self.name]

    @property
    def kind(self) -> str:
        return ROLE_KINDS[self.role]

    def config(self, recipe: "Recipe") -> dict[str, Any]:
        """The recipe slice that determines this stage's output (its fingerprint's own part)."""
        raise NotImplementedError

    def check(self, recipe: "Recipe") -> list[Problem]:
        """This stage's mistakes in `recipe`, found without a model or a full read of any data."""
        return []

    def estimate(self, recipe: "Recipe") -> dict[str, float]:
        """Rough compute for `plan`: {'tokens': ..., 'flops': ...}; empty when unknown."""
        return {}

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError


def recipe_slice(recipe: "Recipe", *paths: str) -> dict[str, Any]:
    """The parts of the recipe at the dotted `paths`, nested as in the recipe.

    A stage's `config` returns this, so `plan` reports a changed key by its real recipe path
    (`stages.generate.temperature`, `reward.kl_coef`).
    """
    data = recipe.model_dump(mode="json")
    sliced: dict[str, Any] = {}
    for path in paths:
        parts = path.split(".")
        value: Any = data
        for part in parts:
            value = value[part]
        target = sliced
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return sliced


REGISTRY: dict[str, Stage] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage known to the pipeline under its `name`."""
    if cls.name not in STAGE_ROLES:
        raise ValueError(f"unknown stage name {cls.name!r}; stages: {', '.join(STAGE_ROLES)}")
    REGISTRY[cls.name] = cls()
    return cls
