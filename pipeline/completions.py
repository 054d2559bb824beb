"""One shard's texts between the engine and the tables: the requests a shard's engine call makes,
what each one stands for, and the per-completion fields computed before verification (hint-leak
flags, the two ExPO scores), turned into the rows of ``samples_pending``.

Plain functions of a shard's problems, the config and an engine; :mod:`pipeline.stages` runs them
in order and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import conditionings
from pipeline.config import RunConfig, SamplingConfig, ScoringConfig
from pipeline.engines import Engine, Request, Result, Sampling, derive_seed
from pipeline.leaks import detect_leak
from pipeline.manifest import model_label
from pipeline.prompts import Message, PromptTemplate, encode_chat, get_template
from pipeline.sampling import request_defaults
from pipeline.sampling import resolve as resolve_sampling
from pipeline.scoring import NO_SCORES, ScoreCounts, ScoreInput, Scores, score_texts, surely_gold
from pipeline.text import storable


@dataclass(frozen=True)
class RequestMeta:
    """Which problem and prompt an engine request stands for. Conditioned requests (kind
    ``explanation``) name their conditioning, the tag their sample ids carry, and the text whose
    copy in a completion is a hint leak (the answer sentence; None where nothing is to leak)."""

    problem: dict[str, Any]
    kind: str  # cot | explanation
    messages: list[Message]
    conditioning: str | None = None
    tag: str = "cot"
    needle: str | None = None
    entry: str = "cot"  # what scoring.kinds and explanations_for name: cot, or the conditioning's entry


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


def _request(
    engine: Engine,
    model: dict[str, Any],
    params: SamplingConfig,
    n: int,
    seed_tag: str,
    meta: RequestMeta,
) -> Request:
    pid = meta.problem["problem_id"]
    seed = derive_seed(params.seed, pid, seed_tag)
    return Request(f"{pid}/{meta.tag}", encode_chat(engine.tokenizer, meta.messages), _sampling(params, model, n, seed))


def build_requests(
    problems: list[dict[str, Any]], cfg: RunConfig, engine: Engine, template: PromptTemplate
) -> tuple[list[Request], dict[str, RequestMeta]]:
    """The CoT requests and every conditioning's that needs nothing generated first, for one engine
    call (``abstract_hint`` waits for its hints: :func:`hinted_requests`). A problem a conditioning
    cannot serve (no expert solution to cut) gets no request of it."""
    gen = cfg.generation
    model = request_defaults(cfg.generation, cfg.model.path, cfg.model.revision)
    system = cfg.prompts.system
    requests: list[Request] = []
    meta: dict[str, RequestMeta] = {}

    def add(params: SamplingConfig, n: int, seed_tag: str, m: RequestMeta) -> None:
        req = _request(engine, model, params, n, seed_tag, m)
        requests.append(req)
        meta[req.request_id] = m

    for p in problems:
        if gen.rollouts:
            add(
                gen.sampling,
                gen.rollouts,
                "cot",
                RequestMeta(p, "cot", template.messages("cot", p["question"], system=system)),
            )
        for v in conditionings.variants(cfg):
            if v.n == 0 or v.kind == "abstract_hint":
                continue
            ins = v.insert(template)
            if v.kind == "partial_solution":
                cut = conditionings.cut_solution(p["expert_solution"] or "", v.p or 0.0, p["answer"])
                if cut is None:
                    continue
                text, needle = ins.fill(partial=cut.text), None
            elif v.kind == "none":
                text, needle = "", None
            else:
                text = ins.fill(answer=p["answer"])
                # ExPO's sentence copied into a text is a leak; STaR's bare "(68)" is too short to tell.
                needle = text if v.kind == "answer" else None
            m = RequestMeta(
                p,
                "explanation",
                template.conversation(p["question"], text, system),
                v.label,
                v.sample_tag,
                needle,
                v.entry,
            )
            # ExPO's own explanation keeps the seed it had before conditionings existed.
            add(gen.explanation_params, v.n, "explanation" if v.is_default else v.label, m)
    return requests, meta


@dataclass(frozen=True)
class HintMeta:
    problem: dict[str, Any]
    label: str  # the abstract_hint entry (one variant each)
    messages: list[Message]


def hint_requests(
    problems: list[dict[str, Any]], cfg: RunConfig, engine: Engine
) -> tuple[list[Request], dict[str, HintMeta]]:
    """NuRL's first request, per problem and ``abstract_hint`` variant: question and gold in, one hint out."""
    model = request_defaults(cfg.generation, cfg.model.path, cfg.model.revision)
    params = cfg.generation.explanation_params
    requests: list[Request] = []
    meta: dict[str, HintMeta] = {}
    for v in conditionings.variants(cfg):
        if v.kind != "abstract_hint" or v.n == 0:
            continue
        hint_params = params.model_copy(update={"max_tokens": v.config.hint_max_tokens})
        for p in problems:
            msgs = conditionings.hint_request(p["question"], p["answer"], cfg.prompts.system)
            seed = derive_seed(params.seed, p["problem_id"], v.label, "hint")
            rid = f"{p['problem_id']}/{v.label}/hint"
            requests.append(Request(rid, encode_chat(engine.tokenizer, msgs), _sampling(hint_params, model, 1, seed)))
            meta[rid] = HintMeta(p, v.label, msgs)
    return requests, meta


def hint_rows(
    requests: list[Request], meta: dict[str, HintMeta], results: list[Result], engine_name: str, model: str
) -> list[dict[str, Any]]:
    """The ``hints`` rows of a shard: every hint written, usable or not, with the reason it is not."""
    rows = []
    for req, res in zip(requests, results, strict=True):
        m = meta[req.request_id]
        c = res.completions[0] if res.error is None and res.completions else None
        raw, problem = storable(c.text) if c is not None else ("", None)
        hint = conditionings.extract_hint(raw)
        if c is None:
            reason = f"engine: {res.error}"
        elif problem is not None:
            reason = f"completion: {problem}"
        else:
            reason = conditionings.hint_problem(hint, m.problem["answer"], m.problem["question"], c.finish_reason)
        rows.append(
            {
                "problem_id": m.problem["problem_id"],
                "conditioning": m.label,
                "hint": hint,
                "usable": reason is None,
                "reject_reason": reason,
                "level": m.problem["level"],
                "subject": m.problem["subject"],
                "gold": m.problem["answer"],
                "prompt": m.messages,
                "completion": raw,
                "finish_reason": c.finish_reason if c is not None else "error",
                "completion_tokens": len(c.token_ids) if c is not None else 0,
                "model": model,
                "engine": engine_name,
                "template_version": conditionings.HINT_REQUEST.version,
                "seed": req.sampling.seed,
            }
        )
    return rows


def hinted_requests(
    problems: list[dict[str, Any]],
    hints: list[dict[str, Any]],
    cfg: RunConfig,
    engine: Engine,
    template: PromptTemplate,
) -> tuple[list[Request], dict[str, RequestMeta]]:
    """NuRL's second request: the plain prompt with the problem's usable hint in the slot."""
    model = request_defaults(cfg.generation, cfg.model.path, cfg.model.revision)
    usable = {(h["problem_id"], h["conditioning"]): h["hint"] for h in hints if h["usable"]}
    requests: list[Request] = []
    meta: dict[str, RequestMeta] = {}
    for v in conditionings.variants(cfg):
        if v.kind != "abstract_hint" or v.n == 0:
            continue
        for p in problems:
            hint = usable.get((p["problem_id"], v.label))
            if hint is None:
                continue
            msgs = template.conversation(p["question"], v.insert(template).fill(hint=hint), cfg.prompts.system)
            m = RequestMeta(p, "explanation", msgs, v.label, v.sample_tag, None, v.entry)
            req = _request(engine, model, cfg.generation.explanation_params, v.n, v.label, m)
            requests.append(req)
            meta[req.request_id] = m
    return requests, meta


def leak_flags(gen: Generated) -> list[list[tuple[bool | None, str | None]]]:
    """Hint-leak flags of every conditioned text (None for CoTs, which saw no hint): the shown
    answer sentence copied, or any pattern of the leak detector."""
    flags = []
    for _, res, m in gen.pairs():
        row: list[tuple[bool | None, str | None]] = []
        for c in res.completions:
            if m.kind == "explanation":
                leak = detect_leak(c.text, m.needle, m.problem["question"])
                row.append((leak is not None, leak.reason if leak else None))
            else:
                row.append((None, None))
        flags.append(row)
    return flags


def score_shard(
    gen: Generated,
    engine: Engine,
    template: PromptTemplate,
    cfg: ScoringConfig,
    system: str | None = None,
    extraction: str = "boxed_or_final",
) -> tuple[list[list[Scores]], list[dict[str, Any]], ScoreCounts]:
    """Both scores of every completion and of each problem's expert solution, all after the
    problem's plain CoT prompt (``system`` as the requests had it), in one engine call (a CoT's own
    log-probs give its nll_mean). ``extraction`` is the verifier's: it tells the CoTs that are
    certainly right from the candidate rejected sides that ``cfg.cot_answers`` counts. Texts of a
    kind ``cfg.kinds`` leaves out get null scores and cost nothing."""
    plain = {
        p["problem_id"]: encode_chat(engine.tokenizer, template.messages("cot", p["question"], system=system))
        for p in gen.problems
    }
    items: list[ScoreInput | None] = []  # None: a text scoring.kinds leaves out
    for _, res, m in gen.pairs():
        pid, gold = m.problem["problem_id"], m.problem["answer"]
        others = 0  # CoTs of this problem so far whose answer is not the gold
        for c in res.completions:
            if not cfg.scores(m.entry):
                items.append(None)
                continue
            if m.kind != "cot" or c.token_logprobs is None:
                items.append(ScoreInput(plain[pid], c.text, gold))
                continue
            right = surely_gold(c.text, gold, extraction)
            wanted = right or cfg.cot_answers == "all" or others < cfg.cot_answers
            others += not right
            n = len(c.token_ids) - (c.finish_reason == "stop")  # the stop token is not the text's
            generated = (c.token_ids[:n], c.token_logprobs[:n])
            items.append(ScoreInput(plain[pid], c.text, gold, generated=generated, answer_pass=wanted))
    experts = [p for p in gen.problems if p["expert_solution"]] if cfg.scores("expert") else []
    items.extend(ScoreInput(plain[p["problem_id"]], p["expert_solution"], p["answer"], expert=True) for p in experts)
    wanted = [x for x in items if x is not None]
    computed, counts = score_texts(engine, wanted)
    given = iter(computed)
    flat = iter([NO_SCORES if x is None else next(given) for x in items])
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
                    "sample_id": f"{m.problem['problem_id']}/{m.tag}/{i}",
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
                    "conditioning": m.conditioning,
                }
            )
    return rows
