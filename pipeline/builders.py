"""The training tables as polars frames over one samples shard: ExP-DPO pairs and baselines, GRPO
groups, ExP-SFT rows, QuestA's augmented groups. Pure functions; :mod:`pipeline.build` runs them
shard by shard and writes what they return, :mod:`pipeline.curation` says which rules they apply.

Rules (``build`` in the run config):
- chosen explanation: kind ``explanation`` of the conditioning ``build.positives`` names (ExPO's
  ``answer`` by default; every ``name@p`` variant of a curriculum), verdict ``correct``, not a hint
  leak (unless allowed),
  ranked by ``best_explanation`` (default: lowest ``nll_mean``; ties and missing scores fall back
  to sample order);
- rejected: an own CoT whose verdict is in ``rejected_verdicts`` (default incorrect and no_answer;
  timeouts and errors are unknown, not wrong), in sample order;
- pairs: chosen rank i with rejected rank i (no sample reused within a problem), or, with
  ``allow_reuse``, every combination best-first; at most ``pairs_per_problem``;
- ``dpo_expert`` and ``dpo_self`` take exactly the ``dpo`` pairs and replace only the chosen side
  (the expert solution; an own correct CoT ranked like explanations). A pair whose problem has no such
  candidate is left out of that set and counted;
- ``grpo_questa``: per problem and partial-solution fraction, the texts sampled after QuestA's
  augmented prompt as the group (rewards and advantages as ``grpo``'s), the larger fraction first;
- the curation rules (:class:`pipeline.curation.Rules`) filter candidates, pairs and groups.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

import schemas
from pipeline import conditionings
from pipeline.config import BuildConfig
from pipeline.curation import NO_RULES, Rules, normalised_text

CHOSEN_COLS = ["chosen_sample_id", "chosen_text", "chosen_nll_mean", "chosen_answer_logprob"]


def trl_solution(gold: str) -> pl.Expr:
    """The gold inside ``\\boxed{}``: TRL's accuracy_reward parses every gold format that way,
    while raw LaTeX outside math delimiters (``x^2+6x+9``, ``[-3,4)``) makes it skip the row."""
    return pl.concat_str(pl.lit("\\boxed{"), pl.col(gold), pl.lit("}"))


def _assistant(col: str) -> pl.Expr:
    return pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(col)))


def _ranked(frame: pl.LazyFrame, rule: str, name: str) -> pl.LazyFrame:
    """Order candidates within each problem by the rule, and number them 0, 1, ... as ``name``."""
    if rule == "lowest_nll":
        keys, desc = ["problem_id", "nll_mean", "sample_index"], [False, False, False]
    elif rule == "highest_answer_logprob":
        keys, desc = ["problem_id", "answer_logprob", "sample_index"], [False, True, False]
    elif rule == "first":
        keys, desc = ["problem_id", "sample_index"], [False, False]
    else:
        raise ValueError(f"unknown ranking rule {rule!r}")
    return frame.sort(keys, descending=desc, nulls_last=True).with_columns(
        pl.int_range(pl.len()).over("problem_id").alias(name)
    )


def positive(cfg: BuildConfig) -> pl.Expr:
    """Texts of the conditioning that gives positives (``build.positives``; a partial solution's
    curriculum is one entry with a ``name@p`` variant per fraction)."""
    cond = pl.col("conditioning")
    return (pl.col("kind") == "explanation") & ((cond == cfg.positives) | cond.str.starts_with(cfg.positives + "@"))


def _unique_texts(frame: pl.LazyFrame) -> pl.LazyFrame:
    """``dedup``: the first of a problem's texts with the same normalised text, in sample order."""
    return (
        frame.with_columns(normalised_text("completion").alias("_norm"))
        .sort(["problem_id", "sample_index", "sample_id"])
        .unique(subset=["problem_id", "_norm"], keep="first", maintain_order=True)
        .drop("_norm")
    )


def candidates(samples: pl.LazyFrame, cfg: BuildConfig, rules: Rules = NO_RULES) -> dict[str, pl.LazyFrame]:
    """A shard's ranked candidates (positives, rejected CoTs, own correct CoTs), its plain prompts,
    and, with a pass-rate window, the problems inside it."""
    leak_ok = pl.lit(True) if cfg.include_hint_leaks else ~pl.col("hint_leak").fill_null(False)
    text_ok = pl.lit(True)
    if rules.max_tokens is not None:
        text_ok = pl.col("completion_tokens").fill_null(0) <= rules.max_tokens
    whole = pl.col("finish_reason").fill_null("") != "length"
    chosen_ok = text_ok & whole if rules.truncated in ("not_chosen", "drop") else text_ok
    rejected_ok = text_ok & whole if rules.truncated == "drop" else text_ok
    cot = pl.col("kind") == "cot"
    correct = pl.col("verdict") == "correct"
    frames = {
        "explanations": samples.filter(positive(cfg) & correct & leak_ok & chosen_ok),
        "rejected": samples.filter(cot & pl.col("verdict").is_in(cfg.rejected_verdicts) & rejected_ok),
        "correct_cots": samples.filter(cot & correct & chosen_ok),
    }
    if rules.dedup:
        frames = {name: _unique_texts(f) for name, f in frames.items()}
    plain_prompt = (
        samples.filter(cot)
        .sort(["problem_id", "sample_index"])
        .group_by("problem_id", maintain_order=True)
        .agg(pl.col("prompt").first().alias("plain_prompt"))
    )
    out = {
        "explanations": _ranked(frames["explanations"], cfg.best_explanation, "e_rank"),
        "rejected": _ranked(frames["rejected"], "first", "r_rank"),
        "correct_cots": _ranked(frames["correct_cots"], cfg.best_explanation, "c_rank"),
        "plain_prompt": plain_prompt,
    }
    if rules.pass_rate is not None:
        lo, hi = rules.pass_rate
        rates = samples.filter(cot).group_by("problem_id").agg(correct.cast(pl.Float64).mean().alias("_rate"))
        out["window"] = rates.filter(pl.col("_rate").is_between(lo, hi)).select("problem_id")
    return out


def _in_window(frame: pl.LazyFrame, c: dict[str, pl.LazyFrame]) -> pl.LazyFrame:
    return frame.join(c["window"], on="problem_id", how="semi") if "window" in c else frame


def _pairs(c: dict[str, pl.LazyFrame], cfg: BuildConfig, rules: Rules = NO_RULES) -> pl.LazyFrame:
    e = _in_window(c["explanations"], c).select(
        "problem_id",
        "e_rank",
        pl.col("sample_id").alias("chosen_sample_id"),
        pl.col("completion").alias("chosen_text"),
        pl.col("nll_mean").alias("chosen_nll_mean"),
        pl.col("answer_logprob").alias("chosen_answer_logprob"),
        pl.col("completion_tokens").alias("_chosen_tokens"),
    )
    r = c["rejected"].select(
        "problem_id",
        "r_rank",
        "level",
        "subject",
        "gold",
        pl.col("prompt").alias("plain_prompt"),
        pl.col("sample_id").alias("rejected_sample_id"),
        pl.col("completion").alias("rejected_text"),
        pl.col("nll_mean").alias("rejected_nll_mean"),
        pl.col("answer_logprob").alias("rejected_answer_logprob"),
        pl.col("completion_tokens").alias("_rejected_tokens"),
    )
    pairs = e.join(r, on="problem_id", how="inner")
    if not cfg.allow_reuse:
        pairs = pairs.filter(pl.col("e_rank") == pl.col("r_rank"))
    if rules.max_length_ratio is not None:
        sides = pl.col("_chosen_tokens").fill_null(0), pl.col("_rejected_tokens").fill_null(0)
        ratio = pl.max_horizontal(*sides) / pl.max_horizontal(pl.min_horizontal(*sides), pl.lit(1))
        pairs = pairs.filter(ratio <= rules.max_length_ratio)
    return (
        pairs.drop("_chosen_tokens", "_rejected_tokens")
        .with_columns((pl.col("e_rank") + pl.col("r_rank")).alias("_order"))
        .sort(["problem_id", "_order", "r_rank"])
        .with_columns(pl.int_range(pl.len()).over("problem_id").cast(pl.Int32).alias("pair_index"))
        .filter(pl.col("pair_index") < cfg.pairs_per_problem)
        .drop("_order")
    )


def _pair_table(pairs: pl.LazyFrame, source: str) -> pl.LazyFrame:
    return pairs.select(
        pl.col("plain_prompt").alias("prompt"),
        _assistant("chosen_text").alias("chosen"),
        _assistant("rejected_text").alias("rejected"),
        "problem_id",
        "pair_index",
        "level",
        "subject",
        "gold",
        pl.lit(source).alias("chosen_source"),
        "chosen_sample_id",
        "rejected_sample_id",
        "chosen_nll_mean",
        "chosen_answer_logprob",
        "rejected_nll_mean",
        "rejected_answer_logprob",
    )


def _first_of_each(pairs: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """With ``allow_reuse``, two ``dpo`` pairs that share their rejected side can get the same
    baseline chosen (one expert solution, or fewer correct CoTs than explanations): keep the first
    such pair only, never the same preference twice."""
    ordered = pairs.sort(["problem_id", "pair_index"])
    return ordered.unique(subset=["problem_id", *keys], keep="first", maintain_order=True)


def _with_expert(pairs: pl.LazyFrame, problems: pl.LazyFrame, cfg: BuildConfig) -> pl.LazyFrame:
    expert = problems.select(
        "problem_id",
        pl.lit(None, dtype=pl.String).alias("chosen_sample_id"),
        pl.col("expert_solution").alias("chosen_text"),
        pl.col("expert_nll_mean").alias("chosen_nll_mean"),
        pl.col("expert_answer_logprob").alias("chosen_answer_logprob"),
    ).filter(pl.col("chosen_text").is_not_null())
    joined = pairs.drop(CHOSEN_COLS).join(expert, on="problem_id", how="inner")
    return _first_of_each(joined, ["rejected_sample_id"]) if cfg.allow_reuse else joined


def _with_own_correct(pairs: pl.LazyFrame, correct: pl.LazyFrame, cfg: BuildConfig) -> pl.LazyFrame:
    own = correct.select(
        "problem_id",
        "c_rank",
        pl.len().over("problem_id").alias("_n_correct"),
        pl.col("sample_id").alias("chosen_sample_id"),
        pl.col("completion").alias("chosen_text"),
        pl.col("nll_mean").alias("chosen_nll_mean"),
        pl.col("answer_logprob").alias("chosen_answer_logprob"),
    )
    joined = pairs.drop(CHOSEN_COLS).join(own, on="problem_id", how="inner")
    want = pl.col("pair_index") % pl.col("_n_correct") if cfg.allow_reuse else pl.col("pair_index")
    chosen = joined.filter(pl.col("c_rank") == want).drop("c_rank", "_n_correct")
    return _first_of_each(chosen, ["chosen_sample_id", "rejected_sample_id"]) if cfg.allow_reuse else chosen


def _groups(rollouts: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """One row per group (a problem's CoTs, or a problem's texts of one conditioning): the texts in
    sample order, their 0/1 rewards, group-normalised advantages and the pass rate."""
    reward = (pl.col("verdict") == "correct").cast(pl.Float64)
    mean = reward.mean().over(keys)
    std = reward.std(ddof=1).over(keys)  # as TRL's GRPOTrainer (torch.std, unbiased)
    advantage = pl.when(std.fill_null(0.0) > 0).then((reward - mean) / std).otherwise(0.0)
    return (
        rollouts.sort([*keys, "sample_index"])
        .with_columns(reward.alias("_reward"), advantage.alias("_advantage"))
        .group_by(keys, maintain_order=True)
        .agg(
            pl.col("prompt").first(),
            pl.col("gold").first(),
            pl.col("completion").alias("rollouts"),
            pl.col("_reward").alias("rollout_rewards"),
            pl.col("_advantage").alias("rollout_advantages"),
            pl.col("_reward").mean().alias("pass_rate"),
        )
    )


def _grpo_rows(
    groups: pl.LazyFrame, c: dict[str, pl.LazyFrame], problems: pl.LazyFrame, cfg: BuildConfig
) -> pl.LazyFrame:
    best = (
        c["explanations"]
        .filter(pl.col("e_rank") == 0)
        .select(
            "problem_id", pl.col("completion").alias("explanation"), pl.col("sample_id").alias("explanation_sample_id")
        )
    )
    info = problems.select("problem_id", "level", "subject", "expert_solution", "source", "_index")
    return (
        groups.join(info, on="problem_id", how="inner")
        .join(best, on="problem_id", how="left")
        .with_columns(
            trl_solution("gold").alias("solution"),
            pl.lit(cfg.grpo_data_source).alias("data_source"),
            pl.lit("math").alias("ability"),
            pl.struct(style=pl.lit("rule"), ground_truth=pl.col("gold")).alias("reward_model"),
            pl.struct(
                index=pl.col("_index"), problem_id=pl.col("problem_id"), level=pl.col("level"), source=pl.col("source")
            ).alias("extra_info"),
        )
    )


def _unequal(groups: pl.LazyFrame, rules: Rules) -> pl.LazyFrame:
    """``grpo_equal_rewards: drop``: keep the groups whose rewards differ (an advantage signal)."""
    if not rules.drop_equal_rewards:
        return groups
    return groups.filter(pl.col("rollout_rewards").list.max() > pl.col("rollout_rewards").list.min())


def _grpo(
    samples: pl.LazyFrame, c: dict[str, pl.LazyFrame], problems: pl.LazyFrame, cfg: BuildConfig, rules: Rules
) -> pl.LazyFrame:
    groups = _unequal(_groups(samples.filter(pl.col("kind") == "cot"), ["problem_id"]), rules)
    return _grpo_rows(groups, c, problems, cfg).select(schemas.GRPO.names)


def _grpo_questa(
    samples: pl.LazyFrame,
    c: dict[str, pl.LazyFrame],
    problems: pl.LazyFrame,
    cfg: BuildConfig,
    fractions: dict[str, float],
    rules: Rules,
) -> pl.LazyFrame:
    """QuestA's rows: per problem and fraction, the augmented prompt and the texts sampled after it
    as the group, in curriculum order (the larger fraction first)."""
    if not fractions:
        return pl.from_arrow(schemas.empty("grpo_questa")).lazy()
    texts = samples.filter((pl.col("kind") == "explanation") & pl.col("conditioning").is_in(list(fractions)))
    groups = _unequal(_groups(texts, ["problem_id", "conditioning"]), rules)
    cuts = []
    for p in problems.select("problem_id", "expert_solution", "answer").collect().iter_rows(named=True):
        for label, frac in fractions.items():
            cut = conditionings.cut_solution(p["expert_solution"] or "", frac, p["answer"])
            if cut is not None:
                cuts.append((p["problem_id"], label, cut.text, frac, cut.shown))
    shown = pl.LazyFrame(
        cuts,
        schema={
            "problem_id": pl.String,
            "conditioning": pl.String,
            "prompt_augmentation": pl.String,
            "augmentation_p": pl.Float64,
            "augmentation_shown": pl.Float64,
        },
        orient="row",
    )
    rows = _grpo_rows(groups.join(shown, on=["problem_id", "conditioning"], how="inner"), c, problems, cfg)
    return rows.sort(["_index", "augmentation_p"], descending=[False, True]).select(schemas.GRPO_QUESTA.names)


def _sft(c: dict[str, pl.LazyFrame]) -> pl.LazyFrame:
    return (
        _in_window(c["explanations"], c)
        .join(c["plain_prompt"], on="problem_id", how="inner")
        .select(
            pl.col("plain_prompt").alias("prompt"),
            _assistant("completion").alias("completion"),
            "problem_id",
            "level",
            "subject",
            "gold",
            "sample_id",
            pl.col("e_rank").cast(pl.Int32).alias("rank"),
            "nll_mean",
            "answer_logprob",
        )
    )


def _in_problem_order(frame: pl.LazyFrame, problems: pl.LazyFrame, *keys: str) -> pl.LazyFrame:
    order = problems.select("problem_id", "_index")
    return frame.join(order, on="problem_id", how="inner").sort(["_index", *keys]).drop("_index")


def to_arrow(frame: pl.DataFrame, name: str) -> pa.Table:
    target = schemas.schema(name)
    return frame.to_arrow().select(target.names).cast(target)


def tables(
    samples: pl.LazyFrame, problems: pl.LazyFrame, cfg: BuildConfig, rules: Rules, fractions: dict[str, float]
) -> dict[str, pl.LazyFrame]:
    """Every training table of one samples shard under these rules, rows in problem order."""
    c = candidates(samples, cfg, rules)
    pairs = _pairs(c, cfg, rules)
    frames = {
        "dpo": _pair_table(pairs, "explanation"),
        "dpo_expert": _pair_table(_with_expert(pairs, problems, cfg), "expert"),
        "dpo_self": _pair_table(_with_own_correct(pairs, c["correct_cots"], cfg), "cot"),
        "grpo": _grpo(samples, c, problems, cfg, rules),
        "sft": _sft(c),
    }
    for name, frame in frames.items():
        keys = ("pair_index",) if name.startswith("dpo") else ("rank",) if name == "sft" else ()
        frames[name] = _in_problem_order(frame, problems, *keys)
    frames["grpo_questa"] = _grpo_questa(samples, c, problems, cfg, fractions, rules)
    return frames
