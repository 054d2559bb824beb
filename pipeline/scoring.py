"""The two ExPO properties of a positive candidate, measured under the policy.

Both are measured after the *plain* CoT prompt (the answer sentence removed), because that is the
context the text is trained in:

- ``nll_mean``: -1/|c| * sum_t log pi(c_t | q, c_<t), over the text's tokens (no end-of-sequence
  token: expert solutions have none). Low means in-distribution; the paper found expert solutions at
  about twice the NLL of self-explanations.
- ``answer_logprob``: log pi("\\boxed{a*" | q, c') where c' is the text cut before its final answer
  (the last box; the whole text when it has none). How strongly the reasoning leads to the gold
  answer, a judge-free stand-in for the paper's step judge. (The closing brace is not scored: see
  :func:`answer_target`.)

The text and the answer are tokenised separately (what the model would emit after c' need not merge
with c' the way one string would), with the whitespace before the box moved to the answer side, as
byte-level BPE tokenises it. A pair that does not fit the context gets null scores instead of
failing the shard.

**One pass per text, at most.** With a 152k vocabulary a teacher-forced position costs about as much
as a generated token, so nothing is computed twice:

- a CoT was generated after the plain prompt, so its ``nll_mean`` is the mean of the raw log-probs
  generation returned for its tokens (the stop token left out): no pass at all;
- every other text (explanations were generated after the hinted prompt, expert solutions were not
  generated) gets one teacher-forced pass after the plain prompt; a text without a final answer is
  its own c', so the gold's box is scored in that same pass, right after it;
- ``answer_logprob`` is read from those same log-probs when the text's tokens begin with c' and the
  box of the gold, i.e. the text's final answer is literally ``\\boxed{gold`` and tokenises at the
  same boundaries as the separate encoding; only other texts need the pass with the gold put in.

The numbers are those of two separate passes (a test checks it), except that a CoT's ``nll_mean``
is over the tokens it was sampled as, which can differ from the re-encoded text's tokens when a
model samples a non-canonical tokenisation.

**Score what is used.** Positives (explanations, expert solutions, correct CoTs) get both scores.
A CoT whose answer is not the gold needs its own pass for ``answer_logprob``; only the first
``scoring.cot_answers`` of them per problem get one (in sample order: the order ``build`` takes
rejected sides in, and a fixed sample for the report), or all with ``cot_answers: all``. Scoring
runs before the verifier, so "the gold" here is what string work settles (:func:`surely_gold`: the
verifier's reading and its fast path); a right answer only sympy can settle (``0.75`` for gold
``\\frac{3}{4}``) uses up one of those places. ``scoring.kinds`` narrows scoring to some kinds of
text ('cot', 'expert', conditioning names); the others get null scores and no pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.answers import cut_before_answer, fast_verdict, gold_answer, read_answer
from pipeline.engines import Engine
from pipeline.engines.base import fits


@dataclass(frozen=True)
class ScoreInput:
    prompt_ids: list[int]  # the plain CoT prompt, chat-rendered and tokenised
    text: str
    gold: str
    # A text sampled after ``prompt_ids``: its token ids and their raw log-probs as generation
    # returned them, the stop token left out. None: the text is teacher-forced.
    generated: tuple[list[int], list[float]] | None = None
    # Whether answer_logprob is wanted when it costs a pass of its own.
    answer_pass: bool = True
    expert: bool = False  # an expert solution: its positions are counted apart


@dataclass(frozen=True)
class Scores:
    nll_mean: float | None
    nll_tokens: int | None
    answer_logprob: float | None


NO_SCORES = Scores(None, None, None)


@dataclass
class ScoreCounts:
    """What scoring computed: passes and target positions, for run.json and the benches."""

    passes: int = 0
    targets: int = 0  # target tokens of generated texts whose log-prob a teacher-forced pass computed
    expert_targets: int = 0  # the same for expert solutions
    answers_reused: int = 0  # answer_logprob read from a text's own log-probs


def answer_target(gold: str) -> str:
    """The scored answer: the box opening and the gold, without the closing brace. Tokenisers merge
    that brace with what follows ("}." is one token in the tiny model's vocabulary and in Qwen's), so
    its probability would measure punctuation habits, not knowledge of the answer."""
    return "\\boxed{" + gold


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def answer_split(tokenizer: Any, text: str, gold: str) -> tuple[list[int], list[int]]:
    """c' and the answer target as token ids: the text cut before its final answer, and the box of
    the gold with the whitespace that preceded the cut."""
    cut = cut_before_answer(text)
    stripped = cut.rstrip()
    # Whitespace before the box goes with the answer ("is \\boxed" tokenises as "is", " \\", ...):
    # a cut ending in a bare space would put an unnatural token before the target.
    return _encode(tokenizer, stripped), _encode(tokenizer, cut[len(stripped) :] + answer_target(gold))


def literal_target(text: str, gold: str) -> bool:
    """Whether the text's final answer starts with the scored target itself (``\\boxed{`` and the
    gold): then its answer_logprob usually comes free with the text's own log-probs."""
    return text[len(cut_before_answer(text)) :].lstrip().startswith(answer_target(gold))


def surely_gold(text: str, gold: str, extraction: str) -> bool:
    """Whether the verifier will certainly call this text's answer the gold: its final box is
    literally the gold's, or its reading under ``extraction`` equals the gold by the verifier's own
    string fast path. Such a CoT is a positive, never a rejected side, so it is scored in full and
    does not use up ``scoring.cot_answers``."""
    if literal_target(text, gold):
        return True
    reading = read_answer(text, extraction)
    return reading is not None and fast_verdict(gold_answer(gold), reading.answer) is True


def score_texts(engine: Engine, items: list[ScoreInput]) -> tuple[list[Scores], ScoreCounts]:
    """Both scores for every item, from generation's log-probs where they exist and otherwise from
    batched ``Engine.score`` calls (the texts', then the answers'); returns the scores and what
    computing them cost."""
    tok = engine.tokenizer
    limit = engine.max_model_len
    counts = ScoreCounts()
    prefixes: list[list[int]] = []
    targets: list[list[int]] = []
    slots: list[tuple[int, str]] = []  # (item index, "text" | "answer")
    texts: dict[int, list[int]] = {}  # each text's tokens, where its nll_mean can be had
    own: dict[int, list[float]] = {}  # the log-probs of the text's own pass (or generation)
    reused: dict[int, tuple[int, int]] = {}  # answer_logprob = sum of own[i][a:b]
    for i, item in enumerate(items):
        cut_ids, box_ids = answer_split(tok, item.text, item.gold)
        want_box = item.answer_pass and bool(box_ids)
        scored: list[int] = []  # the tokens whose log-probs this text gets: generated, or its pass's target
        if item.generated is not None:
            texts[i], own[i] = item.generated
            scored = texts[i]
        else:
            text_ids = _encode(tok, item.text)
            # A text without a final answer is its own c': the gold's box goes right after it, in the same pass.
            merged = (
                want_box and text_ids == cut_ids and fits(len(item.prompt_ids) + len(text_ids) + len(box_ids), limit)
            )
            if text_ids and (merged or fits(len(item.prompt_ids) + len(text_ids), limit)):
                texts[i] = text_ids
                slots.append((i, "text"))
                prefixes.append(item.prompt_ids)
                scored = text_ids + box_ids if merged else text_ids
                targets.append(scored)
        if box_ids and scored[: len(cut_ids) + len(box_ids)] == cut_ids + box_ids:
            reused[i] = (len(cut_ids), len(cut_ids) + len(box_ids))
        elif want_box and fits(len(item.prompt_ids) + len(cut_ids) + len(box_ids), limit):
            slots.append((i, "answer"))
            prefixes.append(item.prompt_ids + cut_ids)
            targets.append(box_ids)
    # Texts first, answers in a second call: an engine with a prefix cache (vLLM) then finds a
    # text's c' computed already when its answer is scored.
    texts_first = [k for k, (_, what) in enumerate(slots) if what == "text"]
    answers_next = [k for k, (_, what) in enumerate(slots) if what == "answer"]
    logprobs: list[list[float]] = [[] for _ in slots]
    for part in (texts_first, answers_next):
        if part:
            for k, lps in zip(part, engine.score([prefixes[k] for k in part], [targets[k] for k in part]), strict=True):
                logprobs[k] = lps
    counts.passes, counts.answers_reused = len(slots), len(reused)
    for (i, _), target in zip(slots, targets, strict=True):
        if items[i].expert:
            counts.expert_targets += len(target)
        else:
            counts.targets += len(target)
    answers: dict[int, float] = {}
    for (i, what), lps in zip(slots, logprobs, strict=True):
        if what == "text":
            own[i] = lps
        else:
            answers[i] = float(sum(lps))
    scores = []
    for i in range(len(items)):
        n = len(texts.get(i, []))
        lps = own.get(i, [])[:n]
        if i in reused and i in own:
            a, b = reused[i]
            answers[i] = float(sum(own[i][a:b]))
        scores.append(
            Scores(
                nll_mean=-sum(lps) / len(lps) if lps else None,
                nll_tokens=len(lps) if lps else None,
                answer_logprob=answers.get(i),
            )
        )
    return scores, counts
