"""The run config: its sections, their defaults and the rules between them.

Every section forbids unknown keys (:class:`pipeline.config_files.Strict`): a misspelt ``rollout: 8``
must fail loudly rather than silently run with the default. How a YAML file, ``--set`` overrides and
relative paths become one of these objects is :mod:`pipeline.config_files`, shared by every config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config_files import Strict, load_yaml_model, validate
from pipeline.config_generation import ConditioningConfig as ConditioningConfig
from pipeline.config_generation import ConditioningKind as ConditioningKind
from pipeline.config_generation import ExplanationsFor as ExplanationsFor
from pipeline.config_generation import GenerationConfig as GenerationConfig
from pipeline.config_generation import SamplingConfig as SamplingConfig
from pipeline.errors import ConfigError
from pipeline.prompts import DEFAULT_TEMPLATE
from pipeline.sources import looks_like_hub_id


class SimConfig(Strict):
    """The simulated engine (``engine: sim``, pipeline/engines/sim.py): benchmarks and tests of the
    orchestration only. It loads the model's tokenizer, no weights."""

    seconds_per_call: float = Field(default=0.0, ge=0, description="sleep per generate call (a request batch)")
    score_seconds_per_call: float = Field(default=0.0, ge=0, description="sleep per score call")
    text_tokens: int = Field(default=32, ge=1, description="tokens per generated text (capped by max_tokens)")


class ModelConfig(Strict):
    path: str = Field(description="local model folder, or a Hugging Face Hub model id")
    revision: str | None = None
    engine: Literal["vllm", "hf", "sim"] = Field(
        default="vllm", description="vllm, hf (transformers), or sim: a simulated engine for benchmarks and tests"
    )
    sim: SimConfig | None = Field(default=None, description="the simulated engine's settings (engine: sim)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    cpu_kvcache_gib: int = Field(default=1, ge=1, description="vLLM CPU KV cache (GiB)")
    hf_batch_size: int = Field(default=16, ge=1, description="prompts per forward batch (hf engine)")
    hf_score_tokens: int = Field(
        default=4096,
        ge=1,
        description="tokens per scoring forward pass (hf engine): bounds scoring memory; a longer text goes alone",
    )
    trust_remote_code: bool = False


class ColumnMap(Strict):
    """Which source column holds which field; for generic sources, and to override the adapters."""

    id: str | None = None
    question: str | None = None
    answer: str | None = None
    solution: str | None = None
    level: str | None = None
    subject: str | None = None


OVERLAP_NGRAM = 8


def overlap_ngram_field(what: str) -> Any:
    """The n-gram size of a benchmark-overlap check (pipeline/contamination.py), one definition for
    every config that has one."""
    return Field(
        default=OVERLAP_NGRAM,
        ge=1,
        description=f"{what} that share a word n-gram of this size (after normalisation) overlap; null compares "
        "whole questions (for problem sets drawn from templates, which share phrases)",
    )


class SourceConfig(Strict):
    """Where problems are read from: a file, a folder or a Hub dataset, and how its rows map."""

    source: str = Field(description="JSONL/Parquet file, a folder, or a Hugging Face Hub dataset id")
    format: Literal["auto", "math", "gsm8k", "generic"] = "auto"
    subsets: list[str] | None = Field(default=None, description="Hub dataset configs (e.g. MATH subjects)")
    split: str | None = None
    revision: str | None = None
    columns: ColumnMap = Field(default_factory=ColumnMap)


class BenchmarkSource(SourceConfig):
    """A benchmark to decontaminate against: every question of it, whatever its level or gold."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v


class ProblemsConfig(SourceConfig):
    levels: list[int] | None = None
    subjects: list[str] | None = None
    limit: int | None = Field(default=None, gt=0)
    decontaminate: list[BenchmarkSource] = Field(
        default_factory=list,
        description="benchmarks (a path, or source/split/subsets as here): training problems that overlap "
        "one are quarantined with reason contaminated",
    )
    decontaminate_ngram: int | None = overlap_ngram_field("problems and benchmark questions")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(level < 1 or level > 5 for level in v):
            raise ValueError("levels must be between 1 and 5")
        return v


class PromptsConfig(Strict):
    template: str = DEFAULT_TEMPLATE
    system: str | None = Field(
        default=None,
        description="the system turn: unset for the chat template's default (none, or e.g. Qwen2.5's), "
        "'' for an empty one, or a text",
    )


class VerifierConfig(Strict):
    workers: int = Field(default=2, ge=1, description="verifier processes")
    timeout_s: float = Field(default=5.0, gt=0, description="hard deadline per answer")
    extraction: Literal["boxed", "boxed_or_final"] = Field(
        default="boxed_or_final",
        description="how a final answer is found: boxes only, or also a stated final answer after the last box "
        "(or in a text without one); see pipeline/answers.py",
    )
    overlap: bool = Field(
        default=True,
        description="verify shard k while the engine generates shard k+1 (off: one stage after the other, "
        "for CPU-only machines where engine and verifier compete for the same cores)",
    )


class ScoringConfig(Strict):
    """See pipeline/scoring.py: every text's nll_mean, and answer_logprob where it is used."""

    enabled: bool = Field(default=True, description="score nll_mean and answer_logprob")
    cot_answers: int | Literal["all"] = Field(
        default=1,
        description="CoTs per problem whose final answer is not the gold that get answer_logprob (a pass each), "
        "in sample order: build takes rejected sides in that order, so keep it >= build.pairs_per_problem; "
        "'all' for every CoT. Positives always get both scores",
    )

    kinds: Literal["all"] | list[str] = Field(
        default="all",
        description="which texts are scored: all, or a list of 'cot', 'expert' and conditioning names "
        "(answer, none, ...); texts left out get null scores and cost no pass",
    )

    def scores(self, kind: str) -> bool:
        """Whether texts of ``kind`` ('cot', 'expert' or a conditioning name) are scored."""
        return self.enabled and (self.kinds == "all" or kind in self.kinds)

    @field_validator("cot_answers")
    @classmethod
    def _cot_answers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("cot_answers must be >= 0 or 'all'")
        return v


# verl's default reward sends this name to its MATH scorer, which reads the last \boxed{} of a
# rollout: right for every problem format we write, since our prompts ask for a box (GSM8K rows
# included: verl's "openai/gsm8k" scorer reads "#### 68" and gives \boxed{68} 0.0).
GRPO_DATA_SOURCE = "lighteval/MATH"


class BuildConfig(Strict):
    """How training sets are cut from the samples; changing it only rebuilds derived tables."""

    pairs_per_problem: int = Field(default=1, ge=1, description="DPO pairs per problem")
    allow_reuse: bool = Field(default=False, description="reuse a chosen or rejected sample within a problem")
    best_explanation: Literal["lowest_nll", "highest_answer_logprob", "first"] = Field(
        default="lowest_nll", description="which verified explanation ranks first"
    )
    include_hint_leaks: bool = Field(default=False, description="let explanations flagged as hint leaks in")
    rejected_verdicts: list[Literal["incorrect", "no_answer", "timeout", "error"]] = Field(
        default_factory=lambda: ["incorrect", "no_answer"], min_length=1, description="which CoTs can be rejected"
    )
    positives: str = Field(
        default="answer",
        min_length=1,
        description="the conditioning whose verified texts become positives (dpo chosen, sft, grpo's "
        "explanation): answer = ExPO's self-explanation",
    )
    grpo_data_source: str = Field(
        default=GRPO_DATA_SOURCE,
        min_length=1,
        description="the grpo table's data_source: the name verl's default reward dispatches on (the "
        "problems' own source is in extra_info.source)",
    )
    # Curation (pipeline/curation.py). Every rule is off by default; what it would remove is counted.
    min_pass_rate: float = Field(
        default=0.0, ge=0, le=1, description="dpo/sft rows only from problems whose CoT pass rate is at least this"
    )
    max_pass_rate: float = Field(
        default=1.0, ge=0, le=1, description="... and at most this (ExPO is for problems the model cannot yet solve)"
    )
    grpo_equal_rewards: Literal["keep", "drop"] = Field(
        default="keep", description="grpo/grpo_questa groups whose rewards are all equal (no advantage signal)"
    )
    truncated: Literal["keep", "not_chosen", "drop"] = Field(
        default="keep",
        description="texts cut at max_tokens (finish_reason length): not_chosen = never a positive; drop = "
        "neither a positive nor a rejected side",
    )
    max_tokens: int | None = Field(default=None, ge=1, description="longest text (tokens) a pair or sft row uses")
    max_length_ratio: float | None = Field(
        default=None, ge=1, description="largest longer/shorter token ratio of a pair's two sides"
    )
    dedup: bool = Field(
        default=False,
        description="a problem's texts with the same normalised text are one candidate (never in grpo groups)",
    )
    validation_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="problems (by id, deterministic) whose rows go to a validation split"
    )

    @model_validator(mode="after")
    def _window(self) -> BuildConfig:
        if self.min_pass_rate > self.max_pass_rate:
            raise ValueError(f"min_pass_rate ({self.min_pass_rate}) is above max_pass_rate ({self.max_pass_rate})")
        return self


class RetriesConfig(Strict):
    """Retries of a shard whose stage failed (an engine crash; per-request errors never fail a
    shard), within its batch's task, with a freshly loaded engine."""

    shards: int = Field(default=1, ge=0, description="retries of a shard whose engine or verifier stage failed")
    delay_s: float = Field(default=10.0, ge=0, description="seconds between tries")


class PublishConfig(Strict):
    """Publish the run's datasets to the Hub when the generate flow ends (for scheduled runs)."""

    repo: str = Field(description="Hub dataset repo id, owner/name")
    private: bool | None = Field(default=None, description="None: leave an existing repo's visibility as it is")
    revision: str | None = Field(default=None, description="branch to commit to (created if missing)")
    tag: str | None = None
    license: str = Field(default="other", description="card license (the sources' and model's terms apply)")
    dry_run: str | None = Field(
        default=None,
        description="a folder: stage the release there (card, tables, the commit's operations) and push "
        "nothing; check what a scheduled run will publish before it goes live",
    )

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not looks_like_hub_id(v):
            raise ValueError("must be a Hub repo id, owner/name")
        return v


class RayConfig(Strict):
    """Where the shard tasks run when ``executor: ray``: one engine per Ray worker, reused for every
    shard that worker takes."""

    address: str | None = Field(
        default=None, description="null: start a local Ray cluster for the run; 'auto' or 'ray://host:10001'"
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local cluster (null: all)")
    gpus_per_engine: float | None = Field(
        default=None, ge=0, description="null: model.tensor_parallel_size on a GPU cluster, 0 on CPUs"
    )
    cpus_per_engine: float = Field(default=1, gt=0, description="CPUs reserved by each engine task")
    max_engines: int | None = Field(
        default=None,
        ge=1,
        description="at most this many engine stages at once on a local cluster (null: as CPUs and GPUs allow); "
        "verifier stages keep the other CPUs",
    )

    @model_validator(mode="after")
    def _max_engines_local(self) -> RayConfig:
        if self.max_engines is not None and self.address is not None:
            raise ValueError(
                "max_engines applies to a local cluster (address: null); on a running cluster the GPUs "
                "or cpus_per_engine each engine stage asks for bound how many run at once"
            )
        return self


class RunConfig(Strict):
    name: str = Field(default="run", pattern=r"^[A-Za-z0-9][\w.-]*$")
    output_dir: str
    model: ModelConfig
    problems: ProblemsConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    conditionings: list[ConditioningConfig] = Field(
        default_factory=lambda: [ConditioningConfig(kind="answer")],
        description="what the explanation-like requests are conditioned on; ExPO's answer by default",
    )
    build: BuildConfig = Field(default_factory=BuildConfig)
    shard_size: int = Field(default=64, ge=1, description="problems per shard")
    shards_per_task: int | None = Field(
        default=None,
        ge=1,
        description="shards per Prefect task (and Ray task), run one after the other with their verifier stages "
        "overlapped; null: on Ray four batches per engine, locally one, more where a batch would pass 32 shards",
    )
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    publish: PublishConfig | None = None
    executor: Literal["local", "ray"] = Field(
        default="local", description="local: shards run in this process; ray: on a Ray cluster (see ray)"
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _template_known(self) -> RunConfig:
        from pipeline.prompts import TEMPLATES

        if self.prompts.template not in TEMPLATES:
            raise ValueError(f"prompts.template {self.prompts.template!r} unknown; known: {', '.join(TEMPLATES)}")
        return self

    @model_validator(mode="after")
    def _conditionings(self) -> RunConfig:
        labels = [c.label for c in self.conditionings]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"conditionings: the name(s) {', '.join(repeated)} appear twice; give each entry a name")
        if self.build.positives not in labels:
            raise ValueError(
                f"build.positives {self.build.positives!r} is not one of the conditionings ({', '.join(labels)})"
            )
        setting = self.generation.explanations_for
        unknown = sorted(set(setting) - set(labels)) if isinstance(setting, dict) else []
        if unknown:
            raise ValueError(
                f"generation.explanations_for names {', '.join(unknown)}, not a conditioning ({', '.join(labels)})"
            )
        kinds = self.scoring.kinds
        unknown = sorted(set(kinds) - {"cot", "expert", *labels}) if kinds != "all" else []
        if unknown:
            raise ValueError(
                f"scoring.kinds names {', '.join(unknown)}: give 'cot', 'expert' or a conditioning "
                f"({', '.join(labels)})"
            )
        ranked = self.build.best_explanation != "first" and self.scoring.enabled
        if ranked and not self.scoring.scores(self.build.positives):
            raise ValueError(
                f"build.best_explanation {self.build.best_explanation} ranks the {self.build.positives!r} texts by a "
                f"score that scoring leaves out; add {self.build.positives!r} to scoring.kinds or use 'first'"
            )
        return self

    def check_scoring(self) -> None:
        """Before generating (not on a rebuild, which may ask for more pairs than were scored and
        leaves their answer_logprob null): every rejected side the build takes must be scored."""
        answers, pairs = self.scoring.cot_answers, self.build.pairs_per_problem
        if self.scoring.enabled and answers != "all" and answers < pairs:
            raise ConfigError(
                f"scoring.cot_answers ({answers}) is below build.pairs_per_problem ({pairs}): rejected sides past the "
                f"first {answers} would have no answer_logprob; set scoring.cot_answers to {pairs} or 'all'"
            )

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


# Fields that hold paths (dotted), resolved against the config file's folder when relative.
PATH_FIELDS = ("output_dir", "model.path", "problems.source", "problems.decontaminate[]", "publish.dry_run")


def load_config(path: str | Path, overrides: Iterable[str] = (), cwd: str | Path | None = None) -> RunConfig:
    return load_yaml_model(RunConfig, path, overrides, path_fields=PATH_FIELDS, cwd=cwd)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    return validate(RunConfig, raw, source)
