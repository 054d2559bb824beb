"""pass@k of a policy on a problem set, by level, with our verifier and generation engines.

pass@k uses the unbiased estimator of Chen et al. (2021): with n samples of which c are correct,
pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems. It is computed as a product, never with
factorials, so it stays exact for any n. k must not exceed n: with fewer samples than k the
estimator is undefined, and we refuse rather than report a biased number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import ModelConfig, ProblemsConfig, SamplingConfig
from pipeline.config_files import validate
from pipeline.engines import Engine, Request, Sampling, derive_seed, get_engine
from pipeline.errors import ConfigError
from pipeline.problems import load_problems
from pipeline.prompts import DEFAULT_TEMPLATE, encode_chat, get_template
from pipeline.sampling import resolve as resolve_sampling
from pipeline.sources import resolve_path
from pipeline.verify import VerifierPool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n with c correct,
    is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass(frozen=True)
class EvalSpec:
    samples: int = 4
    ks: tuple[int, ...] = (1, 4)
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0
    template: str = DEFAULT_TEMPLATE
    system: str | None = None  # the system turn, as prompts.system: None leaves the chat template's default

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError("samples must be >= 1")
        bad = [k for k in self.ks if k < 1 or k > self.samples]
        if bad or not self.ks:
            raise ConfigError(f"every k must be in 1..samples ({self.samples}); got {list(self.ks)}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed
        )


def eval_inputs(
    model: str,
    problems: str,
    engine: str = "vllm",
    max_model_len: int | None = None,
    limit: int | None = None,
    split: str | None = None,
    cwd: str | Path | None = None,
) -> tuple[ModelConfig, ProblemsConfig]:
    """The model and problem configs of an evaluation given as command-line values: paths resolve
    against the current directory, Hub ids stay as they are, bad values fail naming the option."""
    here = Path(cwd) if cwd else Path.cwd()
    model_cfg = validate(
        ModelConfig,
        {"path": resolve_path(model, here), "engine": engine, "max_model_len": max_model_len},
        source="--model/--engine/--max-model-len",
    )
    problems_cfg = validate(
        ProblemsConfig,
        {"source": resolve_path(problems, here), "limit": limit, "split": split},
        source="--problems/--limit/--split",
    )
    return model_cfg, problems_cfg


def _aggregate(counts: list[tuple[int | None, int]], n: int, ks: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"problems": len(counts)}
    for k in ks:
        vals = [pass_at_k(n, c, k) for _, c in counts]
        out[f"pass@{k}"] = round(sum(vals) / len(vals), 6) if vals else None
    return out


def evaluate(
    model: ModelConfig,
    problems: ProblemsConfig,
    spec: EvalSpec,
    pool: VerifierPool,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Sample ``spec.samples`` CoTs per problem (plain prompt, no hint), verify them and report
    pass@k overall and by level. Problems the loader rejects are counted, not evaluated."""
    t0 = time.monotonic()
    loaded = load_problems(problems, pool.check_golds)
    template = get_template(spec.template)
    engine = engine or get_engine(model, seed=spec.seed)
    params = spec.sampling()
    requests = []
    for p in loaded.problems:
        ids = encode_chat(engine.tokenizer, template.messages("cot", p["question"], system=spec.system))
        seed = derive_seed(params.seed, p["problem_id"], "eval")
        sampling = Sampling(n=spec.samples, max_tokens=params.max_tokens, seed=seed, **resolve_sampling(params, {}))
        requests.append(Request(p["problem_id"], ids, sampling))
    progress.emit("eval.start", problems=len(requests), samples=spec.samples)
    results = engine.generate(requests, call_seed=derive_seed(params.seed, "eval"))
    groups = []
    for p, res in zip(loaded.problems, results, strict=True):
        groups.append((p["answer"], [c.text for c in res.completions]))
    verdicts = pool.verify_groups(groups)
    counts: list[tuple[int | None, int]] = []
    per_problem = []
    for p, res, vs in zip(loaded.problems, results, verdicts, strict=True):
        # An engine error (e.g. a prompt longer than the context) counts as n wrong samples.
        correct = 0 if res.error else sum(v.verdict == "correct" for v in vs)
        counts.append((p["level"], correct))
        per_problem.append({"problem_id": p["problem_id"], "level": p["level"], "correct": correct})
    by_level = {}
    for level in sorted({lv for lv, _ in counts}, key=lambda v: (v is None, v)):
        name = "unknown" if level is None else str(level)
        by_level[name] = _aggregate([x for x in counts if x[0] == level], spec.samples, spec.ks)
    result = {
        "model": model.path,
        "engine": model.engine,
        "problems_source": problems.source,
        "samples": spec.samples,
        "ks": list(spec.ks),
        "sampling": params.model_dump(),
        "template": template.version,
        "rejected": len(loaded.rejected),
        "overall": _aggregate(counts, spec.samples, spec.ks),
        "by_level": by_level,
        "per_problem": per_problem,
        "seconds": round(time.monotonic() - t0, 3),
    }
    progress.emit("eval.done", **{k: v for k, v in result["overall"].items()})
    return result
