"""Peak memory of a shard's engine stage (generate + score) against max_tokens, hf engine by default.

Each size runs in a fresh child process: write the problems, then one shard through the real stages
(render, generate, score, verify, write), and report the child's peak RSS (ru_maxrss). Generation
keeps no logits and scoring runs the output layer on a bounded number of positions, so peak memory
should follow the KV cache, not max_tokens times the vocabulary.

    python bench/engine_memory.py --model /tmp/qwen-vocab [--engine hf] [--max-tokens 256 1024]

Goal (real-vocabulary model, 16 problems x 6 texts, scoring on): peak at 1,024 under 6 GiB and
within 1.3x of the peak at 256.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    from pipeline import problem_table, stages
    from pipeline.config import config_from_dict
    from pipeline.engines import load_engine
    from pipeline.manifest import start_run
    from pipeline.verify import VerifierPool

    cfg = config_from_dict(
        {
            "name": "memory",
            "output_dir": tempfile.mkdtemp(prefix="expo-memory-"),
            "model": {"path": args.model, "engine": args.engine, "max_model_len": args.max_tokens[0] + 512},
            "problems": {"source": args.problems_file, "limit": args.problems},
            "generation": {
                "rollouts": 4,
                "explanations": 2,
                "sampling": {"temperature": 0.7, "max_tokens": args.max_tokens[0], "seed": 0},
            },
            "shard_size": args.problems,
        }
    )
    engine = load_engine(cfg.model, seed=0)
    t = time.perf_counter()
    with VerifierPool(workers=1, timeout_s=5.0) as pool:
        run = start_run(cfg, force=True)
        problem_table.write_problems(cfg, run, pool)
        [plan] = stages.plan_shards(cfg, run)
        outcome = stages.run_shard(cfg, run, plan, engine, pool)
    r = outcome.record
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "max_tokens": args.max_tokens[0],
        "peak_rss": peak,
        "seconds": time.perf_counter() - t,
        "generated_tokens": r.generated_tokens,
        "scored_tokens": r.scored_tokens,
        "generate_s": r.generate_s,
        "score_s": r.score_s,
    }
    print("RESULT " + json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--problems-file", default=str(ROOT / "data" / "problems" / "math.jsonl"))
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    results = []
    for n in args.max_tokens:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--engine", args.engine]
        cmd += ["--problems-file", args.problems_file, "--problems", str(args.problems), "--max-tokens", str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            return 1
        res = json.loads(line[len("RESULT ") :])
        results.append(res)
        print(
            f"max_tokens {n:5d}: peak RSS {res['peak_rss'] / 2**30:.2f} GiB, {res['generated_tokens']} tokens generated "
            f"({res['generate_s']:.1f}s), {res['scored_tokens']} scored ({res['score_s']:.1f}s)"
        )
    if len(results) > 1:
        print(
            f"rss_ratio_{results[-1]['max_tokens']}_to_{results[0]['max_tokens']}: {results[-1]['peak_rss'] / results[0]['peak_rss']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
