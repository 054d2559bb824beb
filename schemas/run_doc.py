"""``run.json``: the document that says what a run dir holds and how it was made.

It is the most-read document of the project (the CLI, the report, the dataset card, rebuilds, the
online loop), so it has one definition here and one owner (:class:`pipeline.store.RunDir`), which
reads, updates and writes it atomically. Every section keeps keys it does not know (a newer
expo-data may add some), so reading and rewriting a document never drops them; a document missing
what every run.json has fails with the key named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import BuildConfig, RunConfig, ScoringConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class EngineInfo(Section):
    """What the engine stage reports about the engine that wrote a run's rows."""

    engine: str | None = None
    max_model_len: int | None = None
    per_request_seeds: bool | None = None
    chat_template_digest: str | None = None
    chat_template: str | None = None


class ModelInfo(EngineInfo):
    """The model a run sampled, and the engine that ran it."""

    id: str | None = None  # a Hub id as it is, a local folder by its name only
    revision: str | None = None
    fingerprint: str | None = None


class PromptsInfo(Section):
    version: str | None = None
    user: str | None = None
    answer_sentence: str | None = None
    digest: str | None = None
    system: str | None = None  # prompts.system: None for the chat template's default
    warnings: list[str] = Field(default_factory=list)


class VerifierInfo(Section):
    version: str | None = None
    math_verify: str | None = None


class BenchmarkInfo(Section):
    source: str
    questions: int = 0


class ContaminationInfo(Section):
    """``problems.decontaminate`` as applied: the benchmarks indexed and what overlapped."""

    ngram: int | None = None  # None: whole questions compared
    benchmarks: list[BenchmarkInfo] = Field(default_factory=list)
    contaminated: int = 0
    index_s: float | None = None


class ProblemsSummary(Section):
    rows_read: int = 0
    valid: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    filtered_out: int = 0
    beyond_limit: int = 0
    contamination: ContaminationInfo | None = None
    fingerprint: str | None = None  # of the sources and the problems config: a rerun reuses the tables


class Worker(Section):
    host: str
    pid: int


class ShardRecord(Section):
    """One shard as the invocation that generated it recorded it. ``stages`` holds [start, end]
    epoch seconds of generate, score, verify and write."""

    index: int
    key: str
    problems: int = 0
    rows: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    verify_s: float | None = None
    write_s: float | None = None
    total_s: float | None = None
    engine: Worker | None = None
    verifier: Worker | None = None
    stages: dict[str, list[float]] = Field(default_factory=dict)
    # What scoring cost (pipeline/scoring.py): tokens generated, teacher-forced passes, target
    # positions they scored for generated texts and for expert solutions, answer scores reused.
    generated_tokens: int | None = None
    score_passes: int | None = None
    scored_tokens: int | None = None
    scored_expert_tokens: int | None = None
    answers_reused: int | None = None
    # generation.explanations_for: problems whose explanation-like requests were not made, and the
    # texts and hint requests that saved.
    explanations_skipped_problems: int | None = None
    explanations_skipped_texts: int | None = None
    explanations_skipped_by_entry: dict[str, int] | None = None  # texts, per conditioning entry
    hint_requests_skipped: int | None = None


class ExplanationSaving(Section):
    """``generation.explanations_for`` over the run: what was not generated. The tokens are an
    estimate: the texts not made times the mean length of the explanation-like texts that were."""

    setting: str
    problems: int = 0
    problems_skipped: int = 0  # problems some conditioning was not asked for
    texts_skipped: int = 0
    texts_skipped_by_entry: dict[str, int] = Field(default_factory=dict)
    hint_requests_skipped: int = 0
    texts_generated: int = 0
    mean_text_tokens: float | None = None
    est_tokens_saved: int | None = None


class LastInvocation(Section):
    shards_generated: list[int] = Field(default_factory=list)
    shards_skipped: list[int] = Field(default_factory=list)


class KindSummary(Section):
    samples: int
    verdicts: dict[str, int]
    accuracy: float | None
    problems: int
    problems_with_a_correct_sample: int


class LevelCell(Section):
    correct: int
    samples: int
    accuracy: float | None


class RunSummary(Section):
    """Counts and accuracy by kind and by level (level keys are "1".."5" and "none")."""

    samples: int = 0
    by_kind: dict[str, KindSummary] = Field(default_factory=dict)
    by_level: dict[str, dict[str, LevelCell]] = Field(default_factory=dict)


class BuildCoverage(Section):
    total: int
    with_verified_explanation: int
    with_rejectable_cot: int
    paired: int
    without_verified_explanation: int
    without_rejectable_cot: int


class HintLeaks(Section):
    explanations: int
    hint_leaks: int
    correct_leaks: int


class FunnelStep(Section):
    """One curation rule (pipeline/curation.py): the rows it removed from each table, or with
    ``applied`` false the rows it would remove."""

    rule: str
    unit: str  # what the rule looks at: problems, texts, pairs, groups
    applied: bool
    setting: str = ""
    removed: dict[str, int] = Field(default_factory=dict)
    removed_by_level: dict[str, dict[str, int]] = Field(default_factory=dict)


class Funnel(Section):
    """Rows per table with no curation rule, then each rule in order. Rows written (train plus
    validation) = candidates minus what the applied steps removed."""

    candidates: dict[str, int] = Field(default_factory=dict)
    candidates_by_level: dict[str, dict[str, int]] = Field(default_factory=dict)
    steps: list[FunnelStep] = Field(default_factory=list)


class BuildStats(Section):
    """What the builders made: rows per table and level, and what they could not use, and why."""

    settings: BuildConfig | None = None
    rows: dict[str, int] = Field(default_factory=dict)  # the train split
    rows_by_level: dict[str, dict[str, int]] = Field(default_factory=dict)
    validation_rows: dict[str, int] = Field(default_factory=dict)  # empty without a validation split
    validation_problems: int = 0
    problems: BuildCoverage | None = None
    hint_leaks: HintLeaks | None = None
    dpo_pairs_without_candidate: dict[str, int] = Field(default_factory=dict)
    funnel: Funnel | None = None


class ComparisonRow(Section):
    """One conditioning at one level (or "all"): see pipeline/comparison.py. The defaults are a
    conditioning that produced no text."""

    conditioning: str
    kind: str | None = None
    level: str
    problems: int = 0  # problems with at least one text of this conditioning
    texts: int = 0
    accuracy: float | None = None
    leak_rate: float | None = None
    positives: int = 0  # verified correct and not flagged: what a builder can train on
    nll_mean: float | None = None  # mean over positives, after the plain prompt (lower = in-distribution)
    answer_logprob: float | None = None  # mean over positives (higher = leads to the gold)
    texts_per_positive: float | None = None  # texts and hint requests generated per positive (cost)
    hint_requests: int = 0
    rescued: int = 0  # problems with no correct CoT that got a positive
    all_wrong: int = 0  # problems with no correct CoT


class HintStats(Section):
    written: int
    usable: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)


class ConditioningsDoc(Section):
    """What each conditioning was (kind, parameters, versioned insert) and what it yielded."""

    variants: dict[str, Any] = Field(default_factory=dict)
    comparison: list[ComparisonRow] = Field(default_factory=list)
    hints: HintStats | None = None


class TableEntry(Section):
    rows: int
    files: dict[str, str]  # path relative to the run dir -> sha256 (validation parts included)
    validation_rows: int | None = None  # rows of the validation split, where the table has one


class StageTimeline(Section):
    shards: int = 0
    span_s: float | None = None
    engine_busy_s: float | None = None
    verifier_busy_s: float | None = None
    overlap_s: float | None = None
    engine_utilisation: float | None = None


class Timings(Section):
    problems_s: float | None = None
    shards_s: float | None = None
    build_s: float | None = None
    executor: str | None = None
    shard_stages: StageTimeline | None = None
    total_s: float | None = None


class RebuiltFrom(Section):
    source: str
    revision: str | None = None


class RunDoc(Section):
    expo_data_version: str
    name: str
    status: Literal["running", "complete"]
    created: str
    updated: str | None = None
    # The config as run: paths are absolute in memory, recorded relative to the run dir where they
    # can be (RunDir does both), so a run dir moved with its inputs still reads.
    config: RunConfig | None = None
    config_fingerprint: str | None = None
    model: ModelInfo | None = None
    prompts: PromptsInfo | None = None
    verifier: VerifierInfo | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    schemas: dict[str, int | None] = Field(default_factory=dict)
    problems: ProblemsSummary | None = None
    shards: dict[str, ShardRecord] = Field(default_factory=dict)
    last_invocation: LastInvocation | None = None
    summary: RunSummary | None = None
    build: BuildStats | None = None
    explanations_for: ExplanationSaving | None = None
    conditionings: ConditioningsDoc | None = None
    scoring: ScoringConfig | None = None
    # What requests were sampled with: per kind the effective parameters, and what the model's
    # generation_config.json set (see pipeline/sampling.py).
    sampling: dict[str, Any] | None = None
    tables: dict[str, TableEntry] = Field(default_factory=dict)
    timings: Timings | None = None
    rebuilt_from: RebuiltFrom | None = None
    # What the derived tables, summary and report were made from (pipeline.manifest.outputs_key):
    # a rerun that generates nothing and finds the same key and every file leaves them as they are.
    outputs_key: str | None = None

    def rows(self, table: str) -> int | None:
        """Rows of a table as the manifest records them (None when the table is not there)."""
        entry = self.tables.get(table)
        return entry.rows if entry is not None else None

    def to_json(self) -> dict[str, Any]:
        """The document as JSON data; top-level sections this run does not have are left out."""
        absent = {name for name in type(self).model_fields if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=absent)
