"""What ``generation.explanations_for`` saves: explanation tokens not generated, on a run where many
problems are solved.

    python bench/explanations_for.py [--config data/testbed.yaml] [--problems 128] [--settings all unsolved 0.5]

Runs one shard of the config's problems through the real stages (render, generate, score, verify,
write) once per setting, on one loaded engine, and prints per setting: problems that got
explanations, explanation texts and their tokens, texts not generated, all tokens generated, and
the engine time; then the saving against ``all`` (explanation tokens and all tokens). The testbed
model solves a good share of its training problems by plain CoT, the case the option is for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "data" / "testbed.yaml"))
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--settings", nargs="+", default=["all", "unsolved", "0.5"])
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from pipeline import problem_table, stages
    from pipeline.config import load_config
    from pipeline.engines import load_engine
    from pipeline.manifest import start_run
    from pipeline.verify import VerifierPool

    rows = []
    engine = None
    with VerifierPool(workers=2, timeout_s=5.0) as pool:
        for setting in args.settings:
            out = tempfile.mkdtemp(prefix="expo-explanations-for-")
            cfg = load_config(
                args.config,
                [
                    f"output_dir={out}",
                    f"problems.limit={args.problems}",
                    f"shard_size={args.problems}",
                    f"generation.explanations_for={setting}",
                ],
            )
            engine = engine or load_engine(cfg.model, seed=0)
            run = start_run(cfg, force=True)
            problem_table.write_problems(cfg, run, pool)
            [plan] = stages.plan_shards(cfg, run)
            t = time.perf_counter()
            outcome = stages.run_shard(cfg, run, plan, engine, pool)
            seconds = time.perf_counter() - t
            table = pq.read_table(run.shard(0), columns=["problem_id", "kind", "completion_tokens", "verdict"])
            samples = table.to_pylist()
            expl = [r for r in samples if r["kind"] == "explanation"]
            cots = [r for r in samples if r["kind"] == "cot"]
            r = outcome.record
            rows.append(
                {
                    "setting": setting,
                    "problems": r.problems,
                    "explained": len({x["problem_id"] for x in expl}),
                    "cot_pass": sum(x["verdict"] == "correct" for x in cots) / len(cots),
                    "texts": len(expl),
                    "expl_tokens": sum(x["completion_tokens"] for x in expl),
                    "skipped": r.explanations_skipped_texts or 0,
                    "tokens": r.generated_tokens,
                    "generate_s": r.generate_s,
                    "seconds": seconds,
                }
            )
    print(
        f"{'setting':>9} {'explained':>10} {'texts':>6} {'expl tok':>9} {'skipped':>8} {'all tok':>8} "
        f"{'gen s':>6} {'shard s':>8}"
    )
    for x in rows:
        print(
            f"{x['setting']:>9} {x['explained']:>4}/{x['problems']:<5} {x['texts']:>6} {x['expl_tokens']:>9} "
            f"{x['skipped']:>8} {x['tokens']:>8} {x['generate_s']:>6.1f} {x['seconds']:>8.1f}"
        )
    print(f"CoT pass rate: {rows[0]['cot_pass']:.1%}")
    base = next((x for x in rows if x["setting"] == "all"), None)
    if base:
        for x in rows:
            if x is base:
                continue
            saved = 1 - x["expl_tokens"] / base["expl_tokens"] if base["expl_tokens"] else 0.0
            all_saved = 1 - x["tokens"] / base["tokens"] if base["tokens"] else 0.0
            print(
                f"explanation_tokens_saved@{x['setting']}: {saved:.1%}  all_tokens_saved@{x['setting']}: {all_saved:.1%}"
            )


if __name__ == "__main__":
    main()
