"""The generation sections of the run config: sampling, the rollouts and explanations a problem
gets, and the conditionings of the explanation-like requests. Split out of :mod:`pipeline.config`
(which re-exports every name here) along the seam between what is generated and the rest of a run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config_files import Strict


class SamplingConfig(Strict):
    """Unset parameters take our neutral values (temperature 1, top_p 1, top_k and min_p off,
    repetition_penalty 1), or the model's generation_config.json values under
    ``model_defaults: apply``; see pipeline/sampling.py."""

    model_defaults: Literal["ignore", "apply"] = Field(
        default="ignore", description="whether the model's generation_config.json fills the parameters left unset"
    )
    temperature: float | None = Field(default=None, ge=0, description="1.0 when unset")
    top_p: float | None = Field(default=None, gt=0, le=1, description="1.0 when unset")
    top_k: int | None = Field(default=None, ge=0, description="0 (off) when unset")
    min_p: float | None = Field(default=None, ge=0, le=1, description="0 (off) when unset")
    repetition_penalty: float | None = Field(default=None, gt=0, description="1.0 (off) when unset")
    max_tokens: int = Field(default=1024, gt=0)
    seed: int = Field(default=0, ge=0)


ExplanationsFor = Literal["all", "unsolved"] | float


class GenerationConfig(Strict):
    rollouts: int = Field(default=8, ge=1, description="G: CoT samples per problem")
    explanations: int = Field(default=2, ge=0, description="self-explanations per problem")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    explanation_sampling: SamplingConfig | None = Field(
        default=None, description="sampling for explanations; defaults to `sampling`"
    )
    explanations_for: ExplanationsFor | dict[str, ExplanationsFor] = Field(
        default="all",
        description="which problems get explanations and every conditioning's requests: all; unsolved (no "
        "correct CoT); or a number p (CoT pass rate <= p). A mapping sets it per conditioning name "
        "({answer: unsolved, none: all}); names left out take all. Other than all, a shard's CoTs are "
        "generated and verified first",
    )

    @field_validator("explanations_for")
    @classmethod
    def _explanations_for(cls, v: Any) -> Any:
        for setting in v.values() if isinstance(v, dict) else [v]:
            if isinstance(setting, float | int) and not 0 <= setting <= 1:
                raise ValueError("a pass-rate threshold must be between 0 and 1")
        return v

    def explanations_setting(self, entry: str) -> str | float:
        """``explanations_for`` as it applies to one conditioning entry."""
        v = self.explanations_for
        return v.get(entry, "all") if isinstance(v, dict) else v

    @property
    def verifies_cots_first(self) -> bool:
        """Whether any conditioning is asked for on some problems only: the engine stage then
        generates and verifies a shard's CoTs before the rest."""
        v = self.explanations_for
        return any(s != "all" for s in v.values()) if isinstance(v, dict) else v != "all"

    @property
    def explanation_params(self) -> SamplingConfig:
        return self.explanation_sampling or self.sampling


ConditioningKind = Literal["answer", "partial_solution", "abstract_hint", "star", "none"]


class ConditioningConfig(Strict):
    """One conditioning of the explanation-like requests (pipeline/conditionings.py): what the
    request sees besides the plain prompt. Its texts keep the sample kind ``explanation``; the
    ``conditioning`` column names the entry (with ``@p`` for each fraction of a partial solution)."""

    kind: ConditioningKind
    name: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_]*$", description="the column value; defaults to the kind"
    )
    n: int | None = Field(default=None, ge=0, description="texts per problem; default generation.explanations")
    p: float | list[float] | None = Field(
        default=None,
        description="partial_solution: the fraction of the expert solution shown (0.5), or a curriculum [0.5, 0.25]",
    )
    hint_max_tokens: int = Field(
        default=160, gt=0, description="abstract_hint: tokens of the request that writes the hint"
    )

    @model_validator(mode="after")
    def _params_fit_kind(self) -> ConditioningConfig:
        if self.kind == "partial_solution":
            ps = self.fractions
            if not ps or any(not 0 < p < 1 for p in ps) or len(set(ps)) != len(ps):
                raise ValueError("partial_solution: p must be a fraction in (0, 1), or a list of distinct ones")
        elif self.p is not None:
            raise ValueError(f"p applies to partial_solution only, not {self.kind}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def fractions(self) -> list[float]:
        if self.kind != "partial_solution":
            return []
        if self.p is None:
            return [0.5]
        return list(self.p) if isinstance(self.p, list) else [self.p]
