"""Held-out means held out: the one check that evaluation problems are not among the training ones.

The online loop and the experiment call :func:`check_held_out` before they train; a held-out score
on problems the policy trained on measures memory, not reasoning. Questions are compared after
normalisation (case, whitespace), so a copy that differs only in spacing is still caught.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.errors import ConfigError

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def overlapping(train: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(held-out problem_id, training problem_id) for every held-out question a training problem has."""
    index = {normalise(p["question"]): p["problem_id"] for p in train}
    return [(p["problem_id"], index[key]) for p in heldout if (key := normalise(p["question"])) in index]


def check_held_out(train: Any, heldout: Any, allow_key: str) -> int:
    """Refuse held-out problems (a ``ProblemsConfig``) whose question the training problems hold;
    ``allow_key`` names the setting that lets a user accept the overlap. Returns the held-out count."""
    from pipeline.problems import load_problems
    from pipeline.verify import VerifierPool

    with VerifierPool(workers=1) as pool:
        train_rows = load_problems(train, pool.check_golds).problems
        heldout_rows = load_problems(heldout, pool.check_golds).problems
    pairs = overlapping(train_rows, heldout_rows)
    if pairs:
        shown = ", ".join(f"{h} = {t}" for h, t in pairs[:3])
        raise ConfigError(
            f"{len(pairs)} held-out problem(s) from {heldout.source} also appear in the training problems "
            f"({train.source}), e.g. {shown}; use a disjoint split, or set {allow_key}: true"
        )
    return len(heldout_rows)
