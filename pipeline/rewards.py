"""Rewards that judge as our labels do, for trainers we do not run.

- :class:`VerifierReward` is a TRL reward function, a drop-in where one would write
  ``trl.rewards.accuracy_reward``: ``GRPOTrainer(reward_funcs=[VerifierReward()], ...)`` on our
  ``grpo`` table (or any dataset with a gold column). ``expo-data train grpo`` uses it too.
- :func:`compute_score` has verl's custom reward signature: ``custom_reward_function.path=
  pkg://pipeline.rewards`` and ``custom_reward_function.name=compute_score``.

Both read a completion's final answer by the rule of our labels (:mod:`pipeline.answers`) and compare
it with the gold through our :class:`~pipeline.verify.VerifierPool`: Math-Verify in worker processes
with hard deadlines. That is what makes them safe in any thread: verl calls a synchronous
``compute_score`` from an executor thread of its reward loop, where Math-Verify's own signal-based
timeouts raise (and a scorer built on them returns 0 for every row).

Verdicts become rewards as follows: ``correct`` 1.0; ``incorrect``, ``no_answer``, and a completion
whose comparison timed out or failed, 0.0; a gold answer that cannot be parsed makes no judgement at
all: ``None`` for TRL (which leaves the row out of the reward, as ``accuracy_reward`` does), 0.0 for
verl (which needs a number).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.verify import GOLD_FAILED, Verdict, VerifierPool, shared_pool

DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_EXTRACTION = "boxed_or_final"


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as message lists and plain ones as strings."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return str(completion)


def reward_of(verdict: Verdict) -> float | None:
    """A verdict as a reward; None when the gold could not be judged (see the module docstring)."""
    if verdict.verdict == "correct":
        return 1.0
    if verdict.verdict in ("error", "timeout") and (verdict.detail or "").startswith(GOLD_FAILED):
        return None
    return 0.0


def _gold_of(value: Any) -> str:
    """A gold as a row holds it: verl's ``reward_model`` struct, or a string (``solution``, raw or
    ``\\boxed{...}``: the verifier reads a boxed gold by the completions' rule)."""
    if isinstance(value, dict):
        return str(value["ground_truth"])
    return "" if value is None else str(value)


def judge(pool: VerifierPool, golds: Sequence[str], texts: Sequence[str]) -> list[Verdict]:
    """One verdict per (gold, text). Consecutive rows with the same gold (TRL repeats each prompt G
    times in a row) become one verifier job, so each gold is parsed once per group."""
    groups: list[tuple[str, list[int]]] = []
    for i, gold in enumerate(golds):
        if groups and groups[-1][0] == gold:
            groups[-1][1].append(i)
        else:
            groups.append((gold, [i]))
    verdicts = pool.verify_groups([(gold, [texts[i] for i in idx]) for gold, idx in groups])
    out: list[Verdict | None] = [None] * len(texts)
    for (_, idx), vs in zip(groups, verdicts, strict=True):
        for i, v in zip(idx, vs, strict=True):
            out[i] = v
    return out  # type: ignore[return-value]


class VerifierReward:
    """TRL reward function: 1.0 when our verifier accepts a completion's final answer against the
    row's gold, 0.0 when it does not, None when the gold itself cannot be parsed.

    ``gold_column`` names the dataset column that holds the gold: ``solution`` (TRL's convention, and
    our ``grpo`` table's: ``\\boxed{gold}``), ``reward_model`` (verl's struct) or any column of gold
    strings. ``pool`` defaults to the process's shared verifier pool for these settings.
    """

    def __init__(
        self,
        gold_column: str = "solution",
        pool: VerifierPool | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        extraction: str = DEFAULT_EXTRACTION,
        python: str | None = None,
    ):
        self.gold_column = gold_column
        self._pool = pool
        self._settings = (workers, timeout_s, extraction, python)
        self.__name__ = "expo_verifier"  # TRL logs each reward function under its name

    @property
    def pool(self) -> VerifierPool:
        if self._pool is None:
            self._pool = shared_pool(*self._settings)
        return self._pool

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float | None]:
        if self.gold_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("prompts", "completion_ids", "trainer_state"))
            raise KeyError(
                f"VerifierReward reads the gold from the dataset column {self.gold_column!r}, which this "
                f"dataset does not have (its columns: {columns}); pass gold_column=..."
            )
        golds = [_gold_of(g) for g in kwargs[self.gold_column]]
        texts = [completion_text(c) for c in completions]
        return [reward_of(v) for v in judge(self.pool, golds, texts)]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    extraction: str = DEFAULT_EXTRACTION,
    python: str | None = None,
    **_: Any,
) -> float:
    """verl's custom reward function: our verdict on ``solution_str`` against ``ground_truth``, for
    rows of any ``data_source``. The keyword settings come from ``custom_reward_function.reward_kwargs``
    (verl passes other keywords too, which are ignored). ``python``: the interpreter of an environment
    with expo-data's pins, for the verifier's processes; verl's own environment has a Math-Verify that
    reads LaTeX differently (see :data:`pipeline.verify.ANTLR_RUNTIME`), and the verifier refuses to
    run there. Safe from any thread."""
    pool = shared_pool(workers, timeout_s, extraction, python)
    (verdict,) = judge(pool, [str(ground_truth)], [solution_str or ""])
    return reward_of(verdict) or 0.0
