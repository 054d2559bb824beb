"""The two ExPO properties of a positive candidate, measured under the policy.

Both are teacher-forced passes through ``Engine.score`` after the *plain* CoT prompt (the answer
sentence removed), because that is the context the text is trained in:

- ``nll_mean``: -1/|c| * sum_t log pi(c_t | q, c_<t), over the text's tokens (no end-of-sequence
  token: expert solutions have none). Low means in-distribution; the paper found expert solutions at
  about twice the NLL of self-explanations.
- ``answer_logprob``: log pi("\\boxed{a*" | q, c') where c' is the text cut before its final answer
  (the last box; the whole text when it has none). How strongly the reasoning leads to the gold
  answer, a judge-free stand-in for the paper's step judge. (The closing brace is not scored: see
  :func:`answer_target`.)

The text and the answer are tokenised separately (what the model would emit after c' need not merge
with c' the way one string would), with the whitespace before the box moved to the answer side, as
byte-level BPE tokenises it; all pairs of a shard go to the engine in one call. A pair that
does not fit the context gets null scores instead of failing the shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.answers import cut_before_answer
from pipeline.engines import Engine
from pipeline.engines.base import fits


@dataclass(frozen=True)
class ScoreInput:
    prompt_ids: list[int]  # the plain CoT prompt, chat-rendered and tokenised
    text: str
    gold: str


@dataclass(frozen=True)
class Scores:
    nll_mean: float | None
    nll_tokens: int | None
    answer_logprob: float | None


NO_SCORES = Scores(None, None, None)


def answer_target(gold: str) -> str:
    """The scored answer: the box opening and the gold, without the closing brace. Tokenisers merge
    that brace with what follows ("}." is one token in the tiny model's vocabulary and in Qwen's), so
    its probability would measure punctuation habits, not knowledge of the answer."""
    return "\\boxed{" + gold


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def score_texts(engine: Engine, items: list[ScoreInput]) -> list[Scores]:
    """Both scores for every item, in one batched ``Engine.score`` call."""
    tok = engine.tokenizer
    limit = engine.max_model_len
    prefixes: list[list[int]] = []
    targets: list[list[int]] = []
    slots: list[tuple[int, str]] = []  # (item index, "nll" | "answer")
    for i, item in enumerate(items):
        text_ids = _encode(tok, item.text)
        if text_ids and fits(len(item.prompt_ids) + len(text_ids), limit):
            prefixes.append(item.prompt_ids)
            targets.append(text_ids)
            slots.append((i, "nll"))
        cut = cut_before_answer(item.text)
        stripped = cut.rstrip()
        # Whitespace before the box goes with the answer ("is \\boxed" tokenises as "is", " \\", ...):
        # a cut ending in a bare space would put an unnatural token before the target.
        cut_ids = _encode(tok, stripped)
        box_ids = _encode(tok, cut[len(stripped) :] + answer_target(item.gold))
        prefix = item.prompt_ids + cut_ids
        if box_ids and fits(len(prefix) + len(box_ids), limit):
            prefixes.append(prefix)
            targets.append(box_ids)
            slots.append((i, "answer"))
    logprobs = engine.score(prefixes, targets) if prefixes else []
    nll: dict[int, tuple[float, int]] = {}
    answer: dict[int, float] = {}
    for (i, what), lps in zip(slots, logprobs, strict=True):
        if what == "nll":
            nll[i] = (-sum(lps) / len(lps), len(lps))
        else:
            answer[i] = float(sum(lps))
    return [
        Scores(
            nll_mean=nll[i][0] if i in nll else None,
            nll_tokens=nll[i][1] if i in nll else None,
            answer_logprob=answer.get(i),
        )
        for i in range(len(items))
    ]
