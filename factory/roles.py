"""What flows between stages: one `Role` per kind of input or output, named once.

A stage declares the roles it consumes and the one it produces (factory.stages.base.Stage); the
pipeline joins them into the graph. A role no enabled stage produces comes from the recipe: its
`recipe_key` (a model or data set), or the role it `falls back` to (with no distill stage, the
`student` evaluated is the distillation base itself). `repo_type` says which produced roles get a
Hub repo of their own, named after the role with dashes (`{namespace}/{recipe}-teacher`,
`{recipe}-student-before-rl`); a report is published into its student's repo instead.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A str, so it prints, compares and serialises (JSON, manifests, artifact.json) as its value."""

    kind: str
    recipe_key: str | None
    repo_type: str | None
    _fallback: str | None

    def __new__(
        cls, value: str, kind: str, recipe_key: str | None = None, fallback: str | None = None, repo: bool = False
    ) -> Role:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind, member.recipe_key, member._fallback = kind, recipe_key, fallback
        member.repo_type = kind if repo else None
        return member

    #                 value             kind        recipe key              falls back to   own repo
    TEACHER = "teacher", "model", "models.teacher", None, True
    INITIAL_TEACHER = "initial_teacher", "model", None, "teacher"  # the teacher before RL
    REWARD_STUDENT = "reward_student", "model", "models.student"  # the student that scores explanations
    DISTILL_BASE = "distill_base", "model", "models.distill_base"
    TRAIN_DATA = "train_data", "dataset", "data.train"
    TRACES = "traces", "dataset", None, "train_data", True  # no generate stage: the reference traces
    STUDENT = "student", "model", None, "distill_base", True  # no distill stage: the base itself
    # evaluate's distilled baselines (factory.stages.baselines); not asked for: the untrained base, skipped
    STUDENT_REFERENCE = "student_reference", "model", None, "distill_base", True  # on the reference thoughts
    STUDENT_BEFORE_RL = "student_before_rl", "model", None, "distill_base", True  # on the traces before RL
    REPORT = "report", "report"

    def __repr__(self) -> str:
        return repr(self.value)  # messages quote a role as the recipe and the manifest spell it: 'teacher'

    @property
    def fallback(self) -> Role | None:
        """The role this one is read as when no enabled stage produces it and it has no recipe key."""
        return Role(self._fallback) if self._fallback else None
