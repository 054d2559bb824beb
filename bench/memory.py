"""Peak memory of the build and report stages at N and 10N problems (synthetic tables, no engine).

The builders scan one samples shard at a time and write each training set part by part; the report
reads only the columns it plots. So peak memory should depend on the shard size, not on the run's
size. Each stage runs in a fresh child process and reports its peak RSS (ru_maxrss).

    python bench/memory.py [--problems 2000] [--factor 10] [--shard-size 256]

Goal: peak(10N) / peak(N) <= 1.2 for each stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Solve the problem. Please reason step by step."}]
VERDICTS = ["correct", "incorrect", "incorrect", "incorrect", "no_answer"]


def _problem(i: int) -> dict:
    return {
        "problem_id": f"p{i:07d}",
        "question": f"Problem {i}: " + "what is the value of x? " * 8,
        "answer": str(i % 97),
        "expert_solution": "An expert derivation. " * 30 + f"So $\\boxed{{{i % 97}}}$.",
        "level": i % 5 + 1,
        "subject": "Algebra",
        "source": "synthetic.jsonl",
        "source_row": i,
        "expert_nll_mean": 2.0,
        "expert_nll_tokens": 200,
        "expert_answer_logprob": -20.0,
    }


def _sample(p: dict, kind: str, j: int, rng: random.Random) -> dict:
    verdict = rng.choice(VERDICTS) if kind == "cot" else rng.choice(["correct", "correct", "incorrect"])
    return {
        "sample_id": f"{p['problem_id']}/{kind}/{j}",
        "problem_id": p["problem_id"],
        "shard": 0,
        "kind": kind,
        "sample_index": j,
        "level": p["level"],
        "subject": p["subject"],
        "prompt": PROMPT,
        "completion": "Let us think step by step. " * 40 + f"So $\\boxed{{{rng.randint(0, 99)}}}$.",
        "gold": p["answer"],
        "extracted": "1",
        "parsed_answer": "1",
        "verdict": verdict,
        "verdict_detail": None,
        "extracted_by": None,
        "alt_verdict": None,
        "finish_reason": "stop",
        "prompt_tokens": 40,
        "completion_tokens": 300,
        "cumulative_logprob": -30.0,
        "hint_leak": False if kind == "explanation" else None,
        "hint_leak_reason": None,
        "nll_mean": rng.random(),
        "nll_tokens": 300,
        "answer_logprob": -rng.random() * 10,
        "model": "synthetic",
        "engine": "hf",
        "template_version": "expo-v1",
        "seed": 0,
    }


def make_run(root: Path, n: int, shard_size: int, rollouts: int = 8, explanations: int = 2) -> None:
    import schemas
    from pipeline.store import PROBLEMS_ROW_GROUP, RunDir, write_parquet
    from schemas.run_doc import RunDoc

    rng = random.Random(0)
    run = RunDir(root)
    problems = [_problem(i) for i in range(n)]
    # As the generate flow writes it: in row groups, so a shard's problems are read on their own.
    write_parquet(schemas.from_rows("problems", problems), run.problems, row_group_size=PROBLEMS_ROW_GROUP)
    for k in range(0, n, shard_size):
        rows = []
        for p in problems[k : k + shard_size]:
            rows += [_sample(p, "cot", j, rng) for j in range(rollouts)]
            rows += [_sample(p, "explanation", j, rng) for j in range(explanations)]
        write_parquet(schemas.from_rows("samples", rows), run.shard(k // shard_size))
    run.write_doc(RunDoc(expo_data_version="bench", name="synthetic", status="complete", created="-"))


STAGES = {
    "build": "from pipeline.build import build_datasets\nfrom pipeline.config import BuildConfig\n"
    "build_datasets(RunDir(sys.argv[1]), BuildConfig())",
    "report": "from pipeline.report import write_report\nwrite_report(RunDir(sys.argv[1]))",
}


def measure(stage: str, run_dir: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one stage in a fresh interpreter."""
    code = (
        "import resource, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.store import RunDir\n"
        "t0 = time.perf_counter()\n"
        f"{STAGES[stage]}\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, check=True)
    rss_kib, seconds = out.stdout.split()[-2:]
    return int(rss_kib) / 1024, float(seconds)


def baseline_rss() -> float:
    """Peak RSS of the same interpreter importing the stage modules and doing nothing."""
    code = (
        f"import resource, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "import pipeline.build, pipeline.report\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=256)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"imports alone: {baseline_rss():.0f} MiB peak RSS")
    results: dict[str, list[tuple[int, float, float]]] = {s: [] for s in STAGES}
    with tempfile.TemporaryDirectory(prefix="expo-membench-") as tmp:
        for n in (args.problems, args.problems * args.factor):
            root = Path(tmp) / f"run-{n}"
            t0 = time.perf_counter()
            make_run(root, n, args.shard_size)
            size = sum(f.stat().st_size for f in root.rglob("*.parquet")) / 2**20
            print(f"N={n}: {n * 10} samples, {size:.0f} MiB of Parquet (made in {time.perf_counter() - t0:.0f}s)")
            for stage in STAGES:
                rss, secs = measure(stage, root)
                results[stage].append((n, rss, secs))
                print(f"  {stage:<7} peak RSS {rss:7.0f} MiB  {secs:6.1f}s")
    worst = 0.0
    for stage, rows in results.items():
        (n1, r1, _), (n2, r2, _) = rows
        ratio = r2 / r1
        worst = max(worst, ratio)
        print(f"{stage}: peak RSS at {n2} / at {n1} problems = {ratio:.2f}x (goal <= 1.2)")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
