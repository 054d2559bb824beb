"""A deterministic engine for golden-table tests: the tiny model's tokenizer, and texts and log-probs
that are pure functions of each request's prompt tokens, seed and sample index.

Every request, its prompt and its seed are therefore pinned by the tables it produces: a change to
how prompts are rendered, how seeds are derived, which requests a shard makes or how rows are
built changes a table's digest, on any machine (no floating-point model in the loop).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.engines import Completion, Request, Result

ANSWER_SENTENCE = re.compile(r"The correct final answer is (.+?)\. ")


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class GoldenEngine:
    """Implements :class:`pipeline.engines.Engine` without a model."""

    name = "golden"
    supports_request_seed = True
    max_model_len = 4096

    def __init__(self, model_dir: str | Path, answers: dict[str, str] | None = None):
        """``answers`` (question -> gold) lets a third of plain-prompt texts be right."""
        from transformers import AutoTokenizer

        self.answers = answers or {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model_id = str(model_dir)
        self.calls: list[list[Request]] = []

    def _text(self, prompt: str, seed: int, i: int) -> str:
        h = _h(prompt, seed, i)
        hinted = ANSWER_SENTENCE.search(prompt)
        if hinted:
            answer = hinted.group(1)
            if h % 7 == 0:
                return f"We are told the answer is {answer}. So \\boxed{{{answer}}}."
            return f"Step {h % 5}: work it out carefully. The result is \\boxed{{{answer}}}."
        if h % 9 == 0:
            return "I am not sure where this goes."
        known = [a for q, a in self.answers.items() if q in prompt]
        if known and h % 3 == 0:
            return f"Adding it up step {h % 4}. So the answer is \\boxed{{{known[0]}}}."
        return f"Trying {h % 13}. So the answer is \\boxed{{{h % 10}}}."

    def generate(self, requests: list[Request], call_seed: int = 0) -> list[Result]:
        self.calls.append(list(requests))
        eos = self.tokenizer.eos_token_id
        out = []
        for req in requests:
            prompt = self.tokenizer.decode(req.prompt_ids)
            completions = []
            for i in range(req.sampling.n):
                text = self._text(prompt, req.sampling.seed, i)
                ids = [*self.tokenizer.encode(text, add_special_tokens=False), eos]
                lps = [-((_h(req.sampling.seed, i, k) % 1000) / 400.0) for k in range(len(ids))]
                completions.append(Completion(text, ids, "stop", sum(lps), lps))
            out.append(Result(req.request_id, len(req.prompt_ids), completions))
        return out

    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]:
        return [
            [-((_h(tuple(p[-4:]), tuple(t[: k + 1])) % 1000) / 300.0) for k in range(len(t))]
            for p, t in zip(prefix_ids, target_ids, strict=True)
        ]

    def close(self) -> None:
        pass


def content_digest(table: pa.Table, drop: tuple[str, ...] = (), with_meta: bool = True) -> str:
    """sha256 of a table's schema (names, types, and its metadata unless ``with_meta`` is off) and
    values, columns in ``drop`` left out: independent of how Parquet encoded the file."""
    keep = [n for n in table.column_names if n not in drop]
    t = table.select(keep)
    head = [[f.name, str(f.type), f.nullable] for f in t.schema]
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()} if with_meta else {}
    payload = json.dumps([head, meta, t.to_pylist()], sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def golden_settings(out: Path) -> list[str]:
    """The quickstart config, cut to six problems in two shards, with the golden engine."""
    return [
        f"output_dir={out}",
        "model.engine=hf",
        "problems.limit=6",
        "shard_size=3",
        "generation.rollouts=4",
        "generation.explanations=2",
        "build.pairs_per_problem=2",
        "scoring.cot_answers=2",
    ]


def install(cfg: Any, engine: GoldenEngine) -> None:
    """Make ``get_engine`` hand out ``engine`` for this run config."""
    from pipeline import engines

    engines.release_engines()
    engines._CACHE[engines.cache_key(cfg.model, cfg.generation.sampling.seed)] = engine


GOLDEN = Path(__file__).parent / "data" / "golden-expo-v1.json"
TABLES = ("samples", "dpo", "dpo_expert", "dpo_self", "grpo", "sft")


def run_golden(out: Path) -> Path:
    """The golden run through the real generate flow (Prefect, verifier, scoring, builders)."""
    from flows.generate import generate_flow
    from pipeline.config import load_config

    config = str(Path(__file__).parents[1] / "data" / "quickstart.yaml")
    settings = golden_settings(out)
    cfg = load_config(config, settings)
    problems = [json.loads(line) for line in Path(cfg.problems.source).read_text().splitlines() if line.strip()]
    answers = {p["problem"]: p["solution"].rsplit("\\boxed{", 1)[1].rsplit("}", 1)[0] for p in problems}
    install(cfg, GoldenEngine(cfg.model.path, answers))
    try:
        return Path(generate_flow(config, settings))
    finally:
        from pipeline import engines

        engines.release_engines()


def digests(root: Path, drop: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    from pipeline.store import RunDir, parquet_files, read_table

    run = RunDir(root)
    out: dict[str, Any] = {}
    for name in TABLES:
        where = run.samples if name == "samples" else run.table(name)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parquet_files(where)}
        table = read_table(where, name)
        out[name] = {
            "rows": table.num_rows,
            "content": content_digest(table, (drop or {}).get(name, ())),
            "values": content_digest(table, (drop or {}).get(name, ()), with_meta=False),
            "files": files,
        }
    return out


if __name__ == "__main__":  # records the golden file: run once, on the code the file stands for
    import sys
    import tempfile

    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness():
        root = run_golden(Path(tmp) / "golden")
        doc = {
            "what": "the tables of tests/golden_engine.py's run, as written before conditionings existed "
            "(samples schema 3); the conditioning column is left out of the samples digest",
            "recorded_with": sys.argv[1] if len(sys.argv) > 1 else "",
            "pyarrow": pa.__version__,
            "tables": digests(root),
        }
        GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps({k: v["rows"] for k, v in doc["tables"].items()}))
