"""One shard's texts between the engine and the tables: the requests a shard's engine call makes,
what each one stands for, and the per-completion fields computed before verification (hint-leak
flags, the two ExPO scores), turned into the rows of ``samples_pending``.

Plain functions of a shard's problems, the config and an engine; :mod:`pipeline.stages` runs them
in order and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import RunConfig, SamplingConfig, ScoringConfig
from pipeline.engines import Engine, Request, Result, Sampling, derive_seed
from pipeline.leaks import detect_leak
from pipeline.manifest import model_label
from pipeline.prompts import Message, PromptTemplate, encode_chat, get_template
from pipeline.sampling import model_generation_config
from pipeline.sampling import resolve as resolve_sampling
from pipeline.scoring import NO_SCORES, ScoreCounts, ScoreInput, Scores, literal_target, score_texts
from pipeline.text import storable


@dataclass(frozen=True)
class RequestMeta:
    """Which problem and prompt an engine request stands for."""

    problem: dict[str, Any]
    kind: str  # cot | explanation
    messages: list[Message]


@dataclass(frozen=True)
class Extra:
    """Per-completion fields computed after generation: leak flag and the two scores."""

    hint_leak: bool | None = None
    hint_leak_reason: str | None = None
    scores: Scores = NO_SCORES


@dataclass
class Generated:
    """One shard's engine call: the requests, what they stand for, and what came back (texts made
    storable on arrival; ``unstorable`` says which were not, per (request id, sample index))."""

    problems: list[dict[str, Any]]
    requests: list[Request]
    meta: dict[str, RequestMeta]
    results: list[Result]
    unstorable: dict[tuple[str, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for res in self.results:
            for i, c in enumerate(res.completions):
                c.text, problem = storable(c.text)
                if problem is not None:
                    self.unstorable[res.request_id, i] = problem

    def pairs(self) -> list[tuple[Request, Result, RequestMeta]]:
        return [(q, r, self.meta[q.request_id]) for q, r in zip(self.requests, self.results, strict=True)]


def _sampling(s: SamplingConfig, model: dict[str, Any], n: int, seed: int) -> Sampling:
    return Sampling(n=n, max_tokens=s.max_tokens, seed=seed, **resolve_sampling(s, model))


def build_requests(
    problems: list[dict[str, Any]], cfg: RunConfig, engine: Engine, template: PromptTemplate
) -> tuple[list[Request], dict[str, RequestMeta]]:
    """Both kinds of request for every problem of a shard, for a single engine call."""
    gen = cfg.generation
    model = model_generation_config(cfg.model.path, cfg.model.revision)
    requests: list[Request] = []
    meta: dict[str, RequestMeta] = {}
    for p in problems:
        wanted = [
            ("cot", gen.rollouts, gen.sampling, None),
            ("explanation", gen.explanations, gen.explanation_params, p["answer"]),
        ]
        for kind, n, params, answer in wanted:
            if n == 0:
                continue
            messages = template.messages(kind, p["question"], answer, system=cfg.prompts.system)
            rid = f"{p['problem_id']}/{kind}"
            seed = derive_seed(params.seed, p["problem_id"], kind)
            requests.append(Request(rid, encode_chat(engine.tokenizer, messages), _sampling(params, model, n, seed)))
            meta[rid] = RequestMeta(p, kind, messages)
    return requests, meta


def leak_flags(gen: Generated, template: PromptTemplate) -> list[list[tuple[bool | None, str | None]]]:
    """Hint-leak flags of every explanation (None for CoTs, which saw no hint)."""
    flags = []
    for _, res, m in gen.pairs():
        row: list[tuple[bool | None, str | None]] = []
        for c in res.completions:
            if m.kind == "explanation":
                leak = detect_leak(c.text, template.hint(m.problem["answer"]), m.problem["question"])
                row.append((leak is not None, leak.reason if leak else None))
            else:
                row.append((None, None))
        flags.append(row)
    return flags


def score_shard(
    gen: Generated, engine: Engine, template: PromptTemplate, cfg: ScoringConfig, system: str | None = None
) -> tuple[list[list[Scores]], list[dict[str, Any]], ScoreCounts]:
    """Both scores of every completion and of each problem's expert solution, all after the
    problem's plain CoT prompt (``system`` as the requests had it), in one engine call (a CoT's own
    log-probs give its nll_mean)."""
    plain = {
        p["problem_id"]: encode_chat(engine.tokenizer, template.messages("cot", p["question"], system=system))
        for p in gen.problems
    }
    items: list[ScoreInput] = []
    for _, res, m in gen.pairs():
        pid, gold = m.problem["problem_id"], m.problem["answer"]
        others = 0  # CoTs of this problem so far whose answer is not the gold
        for c in res.completions:
            if m.kind != "cot" or c.token_logprobs is None:
                items.append(ScoreInput(plain[pid], c.text, gold))
                continue
            literal = literal_target(c.text, gold)
            wanted = literal or cfg.cot_answers == "all" or others < cfg.cot_answers
            others += not literal
            n = len(c.token_ids) - (c.finish_reason == "stop")  # the stop token is not the text's
            generated = (c.token_ids[:n], c.token_logprobs[:n])
            items.append(ScoreInput(plain[pid], c.text, gold, generated=generated, answer_pass=wanted))
    experts = [p for p in gen.problems if p["expert_solution"]]
    items.extend(ScoreInput(plain[p["problem_id"]], p["expert_solution"], p["answer"], expert=True) for p in experts)
    all_scores, counts = score_texts(engine, items)
    flat = iter(all_scores)
    scores = [[next(flat) for _ in res.completions] for res in gen.results]
    expert_rows = []
    for p in experts:
        sc = next(flat)
        expert_rows.append(
            {
                "problem_id": p["problem_id"],
                "expert_nll_mean": sc.nll_mean,
                "expert_nll_tokens": sc.nll_tokens,
                "expert_answer_logprob": sc.answer_logprob,
            }
        )
    return scores, expert_rows, counts


def sample_rows(cfg: RunConfig, index: int, gen: Generated, extras: list[list[Extra]], engine_name: str) -> list[dict]:
    """The rows of a pending shard: one per completion, verdicts left to the verifier stage (an
    engine failure is decided here: its rows carry the ``error`` verdict)."""
    label = model_label(cfg.model.path)
    version = get_template(cfg.prompts.template).version
    rows = []
    for (req, res, m), xs in zip(gen.pairs(), extras, strict=True):
        completions = [None] * req.sampling.n if res.error is not None else res.completions
        for i, c in enumerate(completions):
            x = xs[i] if c is not None else Extra()
            # Verdicts are the verifier stage's; an engine failure, or a text that could not be
            # stored as it came, is decided here.
            problem = f"engine: {res.error}" if c is None else gen.unstorable.get((req.request_id, i))
            problem = f"completion: {problem}" if c is not None and problem else problem
            rows.append(
                {
                    "sample_id": f"{m.problem['problem_id']}/{m.kind}/{i}",
                    "problem_id": m.problem["problem_id"],
                    "shard": index,
                    "kind": m.kind,
                    "sample_index": i,
                    "level": m.problem["level"],
                    "subject": m.problem["subject"],
                    "prompt": m.messages,
                    "completion": c.text if c else "",
                    "gold": m.problem["answer"],
                    "extracted": None,
                    "parsed_answer": None,
                    "verdict": "error" if problem else None,
                    "verdict_detail": problem,
                    "extracted_by": None,
                    "alt_verdict": None,
                    "finish_reason": c.finish_reason if c else "error",
                    "prompt_tokens": res.prompt_tokens,
                    "completion_tokens": len(c.token_ids) if c else 0,
                    "cumulative_logprob": c.cumulative_logprob if c else None,
                    "hint_leak": x.hint_leak,
                    "hint_leak_reason": x.hint_leak_reason,
                    "nll_mean": x.scores.nll_mean,
                    "nll_tokens": x.scores.nll_tokens,
                    "answer_logprob": x.scores.answer_logprob,
                    "model": label,
                    "engine": engine_name,
                    "template_version": version,
                    "seed": req.sampling.seed,
                }
            )
    return rows
