"""Pipeline overhead over the raw engine, on the same shard of requests.

raw:      the engine alone, with the same prompt token ids and sampling (vLLM: ``LLM.generate``
          with the SamplingParams our engine builds; hf: ``model.generate`` batches as our engine
          issues them);
pipeline: what one shard task does: render and tokenise the prompts, generate, score both ExPO
          properties (at most one teacher-forced pass per text; a CoT's nll_mean comes from its own
          generation), verify, write the Parquet shard.

    python bench/overhead.py [--model data/tiny-model] [--engine vllm|hf] [--problems 64] [--shards 4]

Prints pipeline_time / raw_time, tokens/s, the time of each pipeline stage, scoring's time over
generation's, and what scoring computed: target positions scored over tokens generated (prompts
excluded; expert solutions counted apart) and passes per text. Engine load, problem loading and a
warm-up call are outside the timings. Run it with and without ``--no-scoring`` for both ratios.

With ``--shards K`` (K > 1) the problems are cut into K shards and the pipeline runs twice: serial
(each shard's stages one after the other) and overlapped, as the generate flow runs them (shard k is
verified in a worker thread, by the verifier's processes, while the engine generates and scores
shard k+1). It prints both ratios and the overlapped run's stage timeline (engine busy time,
verifier time hidden behind the engine, engine utilisation).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "data" / "tiny-model"))
    ap.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    ap.add_argument("--problems-file", default=str(ROOT / "data" / "problems" / "math.jsonl"))
    ap.add_argument("--problems", type=int, default=64, help="problems in all")
    ap.add_argument("--shards", type=int, default=1, help="cut the problems into this many shards")
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--explanations", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-scoring", action="store_true", help="leave the two ExPO scores out of the pipeline")
    args = ap.parse_args()

    from pipeline import problem_table
    from pipeline import stages as gen
    from pipeline.completions import build_requests
    from pipeline.config import config_from_dict
    from pipeline.engines import derive_seed, load_engine
    from pipeline.manifest import start_run
    from pipeline.prompts import get_template
    from pipeline.store import read_table
    from pipeline.timeline import stage_timeline
    from pipeline.verify import VerifierPool

    tmp = tempfile.mkdtemp(prefix="expo-overhead-")
    cfg = config_from_dict(
        {
            "name": "overhead",
            "output_dir": tmp,
            "model": {"path": args.model, "engine": args.engine, "max_model_len": args.max_model_len},
            "problems": {"source": args.problems_file, "limit": args.problems},
            "generation": {
                "rollouts": args.rollouts,
                "explanations": args.explanations,
                "sampling": {"temperature": 0.7, "max_tokens": args.max_tokens, "seed": 0},
            },
            "scoring": {"enabled": not args.no_scoring},
            "shard_size": -(-args.problems // args.shards),
        }
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    t0 = time.perf_counter()
    engine = load_engine(cfg.model, seed=0)
    device = getattr(engine, "device", None) or ("cuda" if _cuda() else "cpu")
    print(f"engine: {engine.name} on {device}, model {args.model} (loaded in {time.perf_counter() - t0:.1f}s)")
    with VerifierPool(workers=cfg.verifier.workers, timeout_s=cfg.verifier.timeout_s) as pool:
        run = start_run(cfg, force=True)
        problem_table.write_problems(cfg, run, pool)
        plans = gen.plan_shards(cfg, run)
        template = get_template(cfg.prompts.template)
        problems = read_table(run.problems, "problems").to_pylist()
        shard_requests = []
        for plan in plans:
            requests, _ = build_requests(problems[plan.start : plan.stop], cfg, engine, template)
            shard_requests.append((requests, derive_seed(cfg.generation.sampling.seed, plan.key)))
        n_requests = sum(len(r) for r, _ in shard_requests)
        n_texts = sum(q.sampling.n for r, _ in shard_requests for q in r)
        print(
            f"run: {len(problems)} problems in {len(plans)} shard(s), {n_requests} requests, {n_texts} texts "
            f"(G={args.rollouts}, {args.explanations} explanations, max_tokens {args.max_tokens})"
        )

        def raw() -> int:
            tokens = 0
            for requests, call_seed in shard_requests:
                if engine.name == "vllm":
                    from vllm.inputs import TokensPrompt

                    engine._fresh_cache()
                    outs = engine.llm.generate(
                        [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests],
                        [engine._params(r) for r in requests],
                        use_tqdm=False,
                    )
                    tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
                else:
                    results = engine.generate(requests, call_seed=call_seed)  # hf: our engine is model.generate
                    tokens += sum(len(c.token_ids) for r in results for c in r.completions)
            return tokens

        def clear() -> None:
            for plan in plans:
                for f in (run.shard(plan.index), run.expert_shard(plan.index), run.pending_shard(plan.index)):
                    f.unlink(missing_ok=True)

        def serial() -> list:
            clear()
            return [gen.run_shard(cfg, run, plan, engine, pool) for plan in plans]

        def overlapped() -> list:
            # The generate flow's local executor, without Prefect: the engine stage in this thread,
            # each shard's verifier stage in a worker thread as soon as it is generated.
            clear()
            with ThreadPoolExecutor(max_workers=1) as verifier:
                futures = []
                for plan in plans:
                    gen.generate_shard(cfg, run, plan, engine)
                    futures.append(verifier.submit(gen.finish_shard, cfg, run, plan, pool))
                return [f.result() for f in futures]

        pool.check_golds(["1"])
        raw()  # warm-up: compile, allocate the KV cache
        times: dict[str, list[float]] = {"raw": [], "serial": [], "overlapped": []}
        stages, timelines, tokens = [], [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            tokens = raw()
            times["raw"].append(time.perf_counter() - t)
            t = time.perf_counter()
            stages.append(serial())
            times["serial"].append(time.perf_counter() - t)
            if len(plans) > 1:
                t = time.perf_counter()
                timelines.append(stage_timeline(o.record for o in overlapped()).model_dump())
                times["overlapped"].append(time.perf_counter() - t)
    r, p = statistics.median(times["raw"]), statistics.median(times["serial"])
    print(f"raw engine:  {r:7.2f}s  ({tokens} generated tokens, {tokens / r:,.0f} tokens/s)")
    print(f"pipeline:    {p:7.2f}s  ({tokens / p:,.0f} tokens/s end to end, stages one after the other)")
    for key in ("generate_s", "score_s", "verify_s", "write_s"):
        print(
            f"  {key[:-2]:<9} {statistics.median(sum(getattr(s.record, key) for s in run_) for run_ in stages):7.2f}s"
        )
    busy = statistics.median(sum(s.record.total_s for s in run_) for run_ in stages)
    last = [s.record for s in stages[-1]]
    generated = sum(r.generated_tokens or 0 for r in last)
    if not args.no_scoring and generated:
        score_s, generate_s = (sum(getattr(r, k) for r in last) for k in ("score_s", "generate_s"))
        scored, expert = sum(r.scored_tokens or 0 for r in last), sum(r.scored_expert_tokens or 0 for r in last)
        print(f"score/generate time: {score_s / generate_s:.3f}")
        print(
            f"scored/generated tokens: {scored / generated:.3f}  ({scored} target positions for {generated} generated "
            f"tokens; expert solutions {expert} apart; {sum(r.score_passes or 0 for r in last) / n_texts:.2f} passes "
            f"per text; {sum(r.answers_reused or 0 for r in last)} answer scores read from a text's own pass)"
        )
    print(f"  render etc {p - busy:6.2f}s")
    print(f"ratio pipeline/raw: {p / r:.3f}  (goal <= 1.05 on a GPU with a real model)")
    if timelines:
        o = statistics.median(times["overlapped"])
        tl = timelines[len(timelines) // 2]
        print(f"overlapped:  {o:7.2f}s  ({tokens / o:,.0f} tokens/s end to end)")
        print(
            f"  engine busy {tl['engine_busy_s']:.2f}s of {tl['span_s']:.2f}s (utilisation {tl['engine_utilisation']:.1%}); "
            f"verifier {tl['verifier_busy_s']:.2f}s, of which {tl['overlap_s']:.2f}s beside the engine"
        )
        print(f"ratio overlapped/raw: {o / r:.3f}  (serial/overlapped: {p / o:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
