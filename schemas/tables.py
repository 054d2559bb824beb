"""The Arrow schema of every table expo-data writes, with its version, and what readers add to a
table written by an older version (``UPGRADES``). The registry, the checks and the builders of
tables are in :mod:`schemas`."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

META_TABLE = b"expo_data.table"
META_VERSION = b"expo_data.schema_version"

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)


def _schema(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={META_TABLE: name.encode(), META_VERSION: str(version).encode()})


PROBLEMS = _schema(
    "problems",
    2,
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),  # gold, as written by the source
        pa.field("expert_solution", pa.string()),
        pa.field("level", pa.int8()),  # 1-5 for MATH; null where the source has none
        pa.field("subject", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # file path or hub id[:config]/split
        pa.field("source_row", pa.int64(), nullable=False),  # row index within the source
        # The two ExPO scores of the expert solution (null until generation scored it, or when off).
        pa.field("expert_nll_mean", pa.float64()),
        pa.field("expert_nll_tokens", pa.int32()),
        pa.field("expert_answer_logprob", pa.float64()),
    ],
)

EXPERT_SCORES = _schema(
    "expert_scores",
    1,
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("expert_nll_mean", pa.float64()),
        pa.field("expert_nll_tokens", pa.int32()),
        pa.field("expert_answer_logprob", pa.float64()),
    ],
)
"""Per-shard scores of expert solutions, joined into ``problems`` when a run is finalised."""

PROBLEMS_REJECTED = _schema(
    "problems_rejected",
    1,
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("problem_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),  # a code from pipeline.problems.REASONS
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),  # the source row as JSON, truncated
    ],
)

SAMPLES = _schema(
    "samples",
    4,  # 4: conditioning
    [
        pa.field("sample_id", pa.string(), nullable=False),  # problem_id/kind/index
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # cot | explanation
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("subject", pa.string()),
        pa.field("prompt", MESSAGES, nullable=False),  # the chat messages the model saw
        pa.field("completion", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("extracted", pa.string()),  # the final answer as read (pipeline.answers.read_answer), raw
        pa.field("parsed_answer", pa.string()),  # Math-Verify's parse of it
        pa.field("verdict", pa.string(), nullable=False),  # correct|incorrect|no_answer|timeout|error
        pa.field("verdict_detail", pa.string()),
        pa.field("extracted_by", pa.string()),  # box | boxes | statement; null: no answer found
        pa.field("alt_verdict", pa.string()),  # the other extraction policy's verdict, where it reads otherwise
        pa.field("finish_reason", pa.string(), nullable=False),  # stop | length | error
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),
        pa.field("cumulative_logprob", pa.float64()),  # raw-model log-prob of the sampled tokens
        pa.field("hint_leak", pa.bool_()),  # explanations only: refers to being given the answer
        pa.field("hint_leak_reason", pa.string()),
        # ExPO's two properties, under the policy after the *plain* CoT prompt (null when off):
        pa.field("nll_mean", pa.float64()),  # mean per-token NLL of the completion (in-distribution)
        pa.field("nll_tokens", pa.int32()),
        pa.field("answer_logprob", pa.float64()),  # log p(\boxed{gold} | prompt, completion cut before its answer)
        pa.field("model", pa.string(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        # What a kind-explanation text was conditioned on (pipeline/conditionings.py): answer (ExPO),
        # partial_solution@p (QuestA), abstract_hint (NuRL), star, none, or a config's own name;
        # null for CoTs.
        pa.field("conditioning", pa.string()),
    ],
)

UPGRADES: dict[str, dict[int, dict[str, pl.Expr]]] = {
    "samples": {
        3: {
            "conditioning": pl.when(pl.col("kind") == "explanation")
            .then(pl.lit("answer"))
            .otherwise(pl.lit(None, pl.String))
        }
    }
}
"""Columns a table gained since an older version, and what they hold in a table of that version:
readers fill them in (``store.read_table``, ``store.scan_table``), so run dirs written before still
read and build. Table -> old version -> added column -> its value."""


def _pair_schema(name: str) -> pa.Schema:
    """ExP-DPO and its baselines: TRL's conversational preference format plus provenance."""
    return _schema(
        name,
        1,
        [
            pa.field("prompt", MESSAGES, nullable=False),  # the plain CoT prompt (no answer in it)
            pa.field("chosen", MESSAGES, nullable=False),
            pa.field("rejected", MESSAGES, nullable=False),
            pa.field("problem_id", pa.string(), nullable=False),
            pa.field("pair_index", pa.int32(), nullable=False),
            pa.field("level", pa.int8()),
            pa.field("subject", pa.string()),
            pa.field("gold", pa.string(), nullable=False),
            pa.field("chosen_source", pa.string(), nullable=False),  # explanation | expert | cot
            pa.field("chosen_sample_id", pa.string()),  # null for expert solutions
            pa.field("rejected_sample_id", pa.string(), nullable=False),
            pa.field("chosen_nll_mean", pa.float64()),
            pa.field("chosen_answer_logprob", pa.float64()),
            pa.field("rejected_nll_mean", pa.float64()),
            pa.field("rejected_answer_logprob", pa.float64()),
        ],
    )


DPO = _pair_schema("dpo")
DPO_EXPERT = _pair_schema("dpo_expert")
DPO_SELF = _pair_schema("dpo_self")

GRPO = _schema(
    "grpo",
    2,  # 2: data_source names verl's scorer (build.grpo_data_source); the problems' source in extra_info
    [
        pa.field("prompt", MESSAGES, nullable=False),
        # The gold written so that TRL's accuracy_reward (Math-Verify) parses it: \boxed{gold}.
        pa.field("solution", pa.string(), nullable=False),
        # verl's RL dataset fields. data_source is what verl's default reward dispatches on.
        pa.field("data_source", pa.string(), nullable=False),
        pa.field("ability", pa.string(), nullable=False),
        pa.field(
            "reward_model",
            pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())]),
            nullable=False,
        ),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("index", pa.int64()),
                    pa.field("problem_id", pa.string()),
                    pa.field("level", pa.int8()),
                    pa.field("source", pa.string()),  # the problems' source: file path or hub id[:config]/split
                ]
            ),
            nullable=False,
        ),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("subject", pa.string()),
        # The G rollouts of the plain prompt ("completions" would collide with TRL's reward kwargs).
        pa.field("rollouts", pa.list_(pa.string()), nullable=False),
        pa.field("rollout_rewards", pa.list_(pa.float64()), nullable=False),
        pa.field("rollout_advantages", pa.list_(pa.float64()), nullable=False),
        pa.field("pass_rate", pa.float64(), nullable=False),
        pa.field("explanation", pa.string()),  # best verified, non-leaking explanation: the ExP-SFT target
        pa.field("explanation_sample_id", pa.string()),
        pa.field("expert_solution", pa.string()),
    ],
)

GRPO_QUESTA = _schema(
    "grpo_questa",
    1,
    [
        # grpo's columns; the prompt is QuestA's augmented one (the plain prompt with part of the expert
        # solution in the hint slot), which trainers read as they read grpo's (and evaluate without).
        *GRPO,
        pa.field("prompt_augmentation", pa.string(), nullable=False),  # the part of the solution shown
        pa.field("augmentation_p", pa.float64(), nullable=False),  # the fraction asked for (curriculum stage)
        pa.field("augmentation_shown", pa.float64(), nullable=False),  # the share of characters shown
    ],
)

HINTS = _schema(
    "hints",
    1,
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("conditioning", pa.string(), nullable=False),  # the abstract_hint entry that asked for it
        pa.field("hint", pa.string(), nullable=False),  # the hint as extracted from the completion
        pa.field("usable", pa.bool_(), nullable=False),  # passed the leak checks: safe to show
        pa.field("reject_reason", pa.string()),  # empty | truncated | boxed | states_answer | leak:<reason> | ...
        pa.field("level", pa.int8()),
        pa.field("subject", pa.string()),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),  # the request that wrote it (question and gold)
        pa.field("completion", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
    ],
)
"""NuRL's hints (``abstract_hint``): one per problem, written by the model from question and gold,
leak-checked. A trainer injects the usable ones online (ExP-GRPO's ``grpo.nurl``)."""

SFT = _schema(
    "sft",
    1,
    [
        pa.field("prompt", MESSAGES, nullable=False),  # the plain CoT prompt
        pa.field("completion", MESSAGES, nullable=False),  # the explanation, as the assistant turn
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("subject", pa.string()),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 0 = the best explanation of its problem
        pa.field("nll_mean", pa.float64()),
        pa.field("answer_logprob", pa.float64()),
    ],
)

VERIFIED = _schema(
    "verified",
    2,
    [
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("extracted", pa.string()),
        pa.field("parsed_answer", pa.string()),
        pa.field("verdict_detail", pa.string()),
        pa.field("extracted_by", pa.string()),
        pa.field("alt_verdict", pa.string()),
    ],
)
"""Columns `expo-data verify` appends to a user's file (the user's own columns stay as they are)."""

SAMPLES_PENDING = pa.schema(
    [f.with_nullable(True) if f.name == "verdict" else f for f in SAMPLES],
    metadata={META_TABLE: b"samples_pending", META_VERSION: SAMPLES.metadata[META_VERSION]},
)
"""A samples shard between the engine stage and the verifier stage: verdict is null until verified
(``error`` where the engine failed). Internal to a run dir, never published."""
