"""The recipe: one YAML file, validated into typed sections before any heavy import.

Errors name the key and the YAML line (`stages.teacher_rl.steps (recipes/x.yaml:12)`), so a user
can fix a recipe without reading a traceback. Only `yaml.SafeLoader` is used. A recipe may
`extends:` another (a path relative to itself, or a bundled recipe's name); mappings merge deeply, the
child wins.
`--set a.b.c=VALUE` overrides any existing key, with VALUE parsed as YAML and type-checked.
This module holds the Recipe (its checks across sections) and the ways to load one; the sections are in
factory.recipe_sections, the YAML reading in factory.recipe_yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from factory.bundled import recipe_file
from factory.errors import UserError
from factory.recipe_sections import (
    RESULT_NEUTRAL,
    CorrectGeneration,
    Data,
    DataFormat,
    DataSource,
    Distill,
    EvalSet,
    Evaluate,
    Formats,
    Generate,
    Hub,
    Launch,
    Models,
    ModelSpec,
    Reward,
    Section,
    Stage,
    Stages,
    TeacherRL,
    TeacherSFT,
    TrainerSettings,
    TrainStage,
)
from factory.recipe_yaml import CombinationError, Located, apply_overrides, format_errors, load_tree

# The sections live in factory.recipe_sections; callers name them from here, beside the Recipe
__all__ = [
    "RESULT_NEUTRAL",
    "CorrectGeneration",
    "Data",
    "DataFormat",
    "DataSource",
    "Distill",
    "EvalSet",
    "Evaluate",
    "Formats",
    "Generate",
    "Hub",
    "Launch",
    "ModelSpec",
    "Models",
    "TrainerSettings",
    "Recipe",
    "Reward",
    "Section",
    "Stage",
    "Stages",
    "TeacherRL",
    "TeacherSFT",
    "TrainStage",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
]


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
    _located: Located | None = PrivateAttr(default=None)  # the YAML lines, set by load_recipe

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
        if launch.machine_rank >= launch.num_machines:
            raise _combination_error(
                "launch.machine_rank",
                f"{launch.machine_rank} is not a rank of num_machines={launch.num_machines} (0 to {launch.num_machines - 1})",
            )
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
        """The reward scores whole sequences (RLT.md, "Lengths"): unset, its cap is none, as in the reference
        (a cap from the RL and generate settings would still cut the student's sequence, longer than the
        teacher's by its system prompt, which no setting bounds); an explicit cap below the longest teacher
        sequence those settings allow is refused."""
        rl, generate = self.stages.teacher_rl, self.stages.generate
        explanations = [rl.max_completion_length] if rl.enabled else []
        explanations += [generate.max_new_tokens] if generate.enabled else []
        if self.reward.max_length is None or not explanations:  # whole sequences, or no stage scores any
            return self
        # without teacher RL no setting bounds a prompt, so only the explanation's length is certain
        needed = (rl.max_prompt_length if rl.enabled else 0) + max(explanations)
        if self.reward.max_length < needed:
            prompt = "stages.teacher_rl.max_prompt_length + " if rl.enabled else ""
            message = (
                f"{self.reward.max_length} would cut explanations before they are scored: the longest teacher sequence "
                f"is at least {prompt}the longest explanation = {needed} tokens; remove the key (whole sequences are "
                "then scored) or raise it"
            )
            raise _combination_error("reward.max_length", message)
        return self

    @model_validator(mode="after")
    def _reward_terms(self) -> Recipe:
        """The correct_generation term decodes with the reward student, step by step until each answer ends:
        ranks would run different numbers of forwards, which a ZeRO-3-sharded student cannot."""
        if (
            "correct_generation" in self.reward.terms
            and self.stages.teacher_rl.enabled
            and self.launch.preset == "zero3"
        ):
            raise _combination_error(
                "reward.terms",
                "correct_generation needs the reward student whole on each rank; teacher_rl under launch.preset "
                "zero3 shards it: use ddp or fsdp2, or leave correct_generation out",
            )
        return self


def _combination_error(key: str, message: str) -> CombinationError:
    return CombinationError(key, message)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge (`extends`), override (`--set`) and validate a recipe: a path, or a bundled recipe's
    name (`quickstart`). Raises UserError."""
    path = recipe_file(path)
    located = Located()
    data = load_tree(path, located)
    data = apply_overrides(data, overrides or [], located, Recipe)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_errors(exc, located, str(path), Recipe)) from None
    recipe._located = located
    return recipe


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, origin: str = "<recipe>") -> Recipe:
    """Validate an already resolved recipe (a run manifest's), with `--set` overrides. Raises UserError."""
    located = Located()
    data = apply_overrides(data, overrides or [], located, Recipe)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_errors(exc, located, origin, Recipe)) from None
    recipe._located = located
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe (defaults filled in), as plain JSON-able data."""
    return recipe.model_dump(mode="json")
