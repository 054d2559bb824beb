"""Verifier throughput: our pool vs the naive per-sample Math-Verify loop, same verdicts required.

The naive approach is what a reward function such as TRL's ``accuracy_reward`` does: for every
sample, parse the gold, parse the completion, verify, in one thread. Ours parses each gold once per
problem, settles exact and normalised-string matches without sympy, and spreads the rest over a
process pool with hard deadlines; an answer repeated within a group is parsed once.

    python bench/verifier.py [--problems 200] [--samples 8] [--workers 2]

Prints labels/s for both and the ratio; exits non-zero if any verdict differs.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def corpus(n_problems: int, samples: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Mixed answer kinds as a math run produces them: many exact repeats of the gold, equivalent
    rewrites, wrong answers and completions without a box."""
    rng = random.Random(seed)
    groups = []
    for p in range(n_problems):
        kind = p % 6
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if kind == 0:  # integers
            gold, same, wrong = str(a * b), f"{a * b}", str(a * b + 1)
        elif kind == 1:  # fractions
            gold, same, wrong = f"\\frac{{{a}}}{{{a + b}}}", f"{a}/{a + b}", f"\\frac{{{a + 1}}}{{{a + b}}}"
        elif kind == 2:  # sets
            gold, same, wrong = f"\\{{{a},{b}\\}}", f"\\{{{b},{a}\\}}", f"\\{{{a},{b + 1}\\}}"
        elif kind == 3:  # intervals
            gold, same, wrong = f"[{a},{a + b})", f"[{a}, {a + b})", f"({a},{a + b}]"
        elif kind == 4:  # expressions
            gold, same, wrong = f"{a}x+{b}", f"{b}+{a}x", f"{a}x-{b}"
        else:  # square roots
            gold, same, wrong = f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{b}}}\\cdot {a}", f"{a}\\sqrt{{{b + 1}}}"
        completions = []
        for _ in range(samples):
            r = rng.random()
            if r < 0.35:
                answer = gold  # the model's own notation usually repeats the gold's
            elif r < 0.55:
                answer = same
            elif r < 0.9:
                answer = wrong
            else:
                completions.append("I could not finish this one.")
                continue
            completions.append(f"Some reasoning about problem {p}. So the answer is $\\boxed{{{answer}}}$.")
        groups.append((gold, completions))
    return groups


def naive(groups: list[tuple[str, list[str]]]) -> list[list[bool]]:
    from math_verify import parse, verify

    out = []
    for gold, completions in groups:
        row = []
        for c in completions:
            g = parse("\\boxed{" + gold + "}")
            pred = parse(c)
            row.append(bool(g) and bool(pred) and bool(verify(g, pred)))
        out.append(row)
    return out


def ours(groups: list[tuple[str, list[str]]], workers: int) -> tuple[list[list[bool]], float, dict]:
    from pipeline.verify import VerifierPool

    with VerifierPool(workers=workers, timeout_s=5.0) as pool:
        # Start every worker (and its sympy import) outside the timing: a run does that once, while
        # it checks the problems' gold answers.
        pool.check_golds([str(i) for i in range(2 * workers)])
        t0 = time.perf_counter()
        verdicts = pool.verify_groups(groups)
        elapsed = time.perf_counter() - t0
        stats = dict(pool.stats)
    return [[v.verdict == "correct" for v in row] for row in verdicts], elapsed, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    groups = corpus(args.problems, args.samples)
    n = sum(len(c) for _, c in groups)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"corpus: {args.problems} problems x {args.samples} samples = {n} labels (6 answer kinds, 10% no box)")
    mine, t_ours, stats = ours(groups, args.workers)
    t0 = time.perf_counter()
    theirs = naive(groups)
    t_naive = time.perf_counter() - t0
    diff = [
        (gold, c)
        for (gold, cs), a, b in zip(groups, mine, theirs, strict=True)
        for c, x, y in zip(cs, a, b, strict=True)
        if x != y
    ]
    print(f"naive (parse gold + parse + verify per sample, 1 thread): {t_naive:7.2f}s  {n / t_naive:8.1f} labels/s")
    print(f"expo-data VerifierPool ({args.workers} workers):              {t_ours:7.2f}s  {n / t_ours:8.1f} labels/s")
    print(
        f"speed-up: {t_naive / t_ours:.2f}x   (fast path settled {stats.get('fast_path', 0)}, "
        f"repeated answers {stats.get('repeats', 0)}, no box {stats.get('no_answer', 0)})"
    )
    print(f"verdicts identical: {not diff} ({len(diff)} differ)")
    for gold, c in diff[:5]:
        print(f"  differs: gold {gold!r} completion {c[-60:]!r}")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
