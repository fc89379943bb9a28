"""The stage contract and registry: how a stage plugs into the pipeline without touching it.

A stage is a registered object with one entry point, `run(ctx) -> StageResult`, and declarations the
pipeline reads (factory.graph, factory.pipeline): the roles it consumes and the one it produces
(factory.roles.Role), the recipe sections that determine its output and a code version (bump it when
a change makes old artifacts stale). Its fingerprint hashes those sections minus the fields the schema
marks result-neutral (`section_config`), with its inputs' fingerprints and its version: one rule for
every stage. The pipeline resolves each consumed role to the artifact of the nearest enabled upstream
stage producing it, or to the recipe's base input.

`check(recipe)` holds the stage's own rules on the recipe (batch sizes that divide, settings that
must agree): pure and cheap, so `validate`, `plan` and `run` report every mistake together before
any stage does work (factory.preflight), instead of one stage failing hours into a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from factory.errors import Problem, UserError
from factory.roles import Role

if TYPE_CHECKING:
    from pydantic import BaseModel

    from factory.artifacts import ArtifactMeta
    from factory.memory import MemoryEstimate
    from factory.recipe import DataSource, EvalSet, ModelSpec, Recipe


@dataclass
class ResolvedInput:
    """One consumed role: an upstream artifact folder, or a base model / dataset of the recipe."""

    role: Role
    fingerprint: str
    artifact_dir: Path | None = None
    meta: ArtifactMeta | None = None
    model: ModelSpec | None = None
    data: DataSource | None = None
    resolved_revision: str | None = None

    @property
    def is_artifact(self) -> bool:
        return self.artifact_dir is not None

    def model_source(self) -> ModelSpec | str:
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
    """What a running stage gets: the recipe as it may read it, its output folder and its resolved inputs.

    `recipe` is a factory.recipe_view.RecipeView of the stage's declared `sections` (reading any other
    key raises: it would be missing from the fingerprint); `section` is its own typed `stages.<name>`
    section, None for a stage without one. `out_dir` may already hold partial work of an interrupted run
    with the same fingerprint: a stage resumes from it (checkpoints, finished shards).
    """

    recipe: Recipe
    run_dir: Path
    out_dir: Path
    fingerprint: str
    inputs: dict[Role, ResolvedInput]
    log: Callable[[str], None] = print
    section: BaseModel | None = None


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # logical name -> path relative to out_dir
    summary: str = ""  # the one line printed when the stage ends
    columns: dict[str, str] = field(default_factory=dict)  # a dataset's column -> what it means (reward notes)


def problems_of(key: str, check: Callable[[], object]) -> list[Problem]:
    """A check that raises UserError (factory.models, factory.data), as Problems at `key`."""
    try:
        check()
    except UserError as exc:
        return [Problem(key, str(exc))]
    return []


def data_problems(source: DataSource | EvalSet, key: str) -> list[Problem]:
    """A data set a stage reads: readable, with the columns it needs (its first row only); `key`
    names its `source`."""
    from factory.data import check_data_source

    return problems_of(key, lambda: check_data_source(source))


def eval_set_problems(recipe: Recipe) -> list[Problem]:
    return [p for i, s in enumerate(recipe.data.eval) for p in data_problems(s, f"data.eval.{i}.source")]


def vllm_problems(wanted: bool, key: str) -> list[Problem]:
    """vLLM asked for at `key` on a machine where it is not installed."""
    from factory.engines.base import vllm_installed

    if wanted and not vllm_installed():
        return [Problem(key, "vllm is not installed on this machine (pip install 'factory-rlt[gpu]')", machine=True)]
    return []


def thought_problems(recipe: Recipe, who: str) -> list[Problem]:
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


class Stage:
    """Base class: a subclass sets the declarations below and implements `run`.

    name       its artifacts' folder prefix, its `--only`/`--from` name, and its recipe section
               `stages.<name>` when it has one (with no section, nothing turns it off)
    consumes   the roles it reads (`ctx.inputs` keys)
    produces   the role of its artifact (its kind: model, dataset or report)
    passes_on  roles it hands downstream from its own inputs: teacher RL's {INITIAL_TEACHER: TEACHER}
               (generate compares the teacher before and after RL)
    sections   dotted recipe paths that determine its output: its fingerprint hashes them
    version    bump when a code change makes old artifacts stale
    """

    name: ClassVar[str]
    consumes: ClassVar[tuple[Role, ...]] = ()
    produces: ClassVar[Role]
    passes_on: ClassVar[dict[Role, Role]] = {}
    sections: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1

    @property
    def kind(self) -> str:
        return self.produces.kind

    def disabled_by(self, recipe: Recipe) -> str | None:
        """Why this recipe leaves the stage out besides `stages.<name>.enabled: false`; None when it runs. For
        a stage without a section of its own that another section's setting asks for (evaluate's baselines)."""
        return None

    def sections_for(self, recipe: Recipe) -> tuple[str, ...]:
        """The sections it reads with this recipe: `sections`, plus any that only some settings read."""
        return self.sections

    def check(self, recipe: Recipe) -> list[Problem]:
        """This stage's mistakes in `recipe`, found without a model or a full read of any data."""
        return []

    def estimate(self, recipe: Recipe) -> dict[str, float]:
        """Rough compute for `plan`: {'tokens': ..., 'flops': ...}; empty when unknown."""
        return {}

    def memory(self, recipe: Recipe) -> MemoryEstimate | None:
        """What one GPU holds at the stage's peak, for `plan`'s table and `run`'s refusal before loading
        (factory.memory composes it from what the stage trains and loads); None when unknown."""
        return None

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError


def stage_view(stage: Stage, recipe: Recipe) -> Recipe:
    """The recipe as `stage` may read it (factory.recipe_view): its declared sections, and the recipe keys of
    the base inputs it consumes (`models.teacher`, `data.train`, ... and their fallbacks), whose whole spec
    the input's fingerprint hashes. Typed as a Recipe: a view reads like one, key for key."""
    from factory.recipe_view import RecipeView

    keys = []
    for consumed in stage.consumes:
        role: Role | None = consumed
        while role is not None:
            keys += [role.recipe_key] if role.recipe_key else []
            role = role.fallback
    allowed = (*stage.sections_for(recipe), *dict.fromkeys(keys))
    return RecipeView(recipe, allowed, stage.name)  # type: ignore[return-value]


def own_section(stage: Stage, recipe: Recipe) -> BaseModel | None:
    """The stage's own typed section `stages.<name>`, None when the recipe has none for it."""
    return getattr(recipe.stages, stage.name, None)


def section_config(recipe: Recipe, sections: tuple[str, ...]) -> dict[str, Any]:
    """The recipe at the dotted `sections`, nested as in the recipe, without the fields the schema marks
    result-neutral (recipe.RESULT_NEUTRAL): the part of a stage's fingerprint that is its own. Nested by
    real path, so `plan` names a changed key as the recipe spells it (`reward.kl_coef`)."""
    data = recipe.model_dump(mode="json", exclude=_neutral_fields(recipe))
    sliced: dict[str, Any] = {}
    for path in sections:
        parts = path.split(".")
        value: Any = data
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"section {path!r}: the recipe has no such key, or it is marked result-neutral")
            value = value[part]
        target = sliced
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return sliced


def _neutral_fields(model: BaseModel) -> dict[str, Any]:
    """pydantic's `exclude` tree of the result-neutral fields in `model` and the sections under it."""
    from pydantic import BaseModel

    tree: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("affects_results") is False:
            tree[name] = True
        elif isinstance(value, BaseModel):
            tree[name] = _neutral_fields(value)
        elif isinstance(value, list):
            items = (_neutral_fields(item) if isinstance(item, BaseModel) else {} for item in value)
            tree[name] = {index: sub for index, sub in enumerate(items) if sub}
    return {name: sub for name, sub in tree.items() if sub}


# The student format's keys (factory.formats.StudentFormat): a stage that builds student sequences hashes them,
# and the train data, whose `system` column is the student's system prompt when formats.student_system is unset
# (factory.data.student.student_format_of).
STUDENT_FORMAT = ("formats.student_system", "formats.student_padding", "formats.student_separator", "data.train")

REGISTRY: dict[str, Stage] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage known to the pipeline under its `name`; its roles must be Roles."""
    roles = [getattr(cls, "produces", None), *cls.consumes, *cls.passes_on, *cls.passes_on.values()]
    if not all(isinstance(role, Role) for role in roles):
        raise TypeError(f"stage {cls.__name__}: produces, consumes and passes_on take factory.roles.Role members")
    if not set(cls.passes_on.values()) <= set(cls.consumes):
        raise ValueError(f"stage {cls.name}: passes_on hands on roles it does not consume")
    REGISTRY[cls.name] = cls()
    return cls
