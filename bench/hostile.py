"""Time the hostile-input corpus (tests/data/hostile_inputs.jsonl) end to end, case by case.

Every case ends in its exact outcome (the tests check that); this prints how long the corpus takes
and its slowest cases, which the verifier's deadlines bound: a case is never slower than the
deadline plus a worker restart.

    python bench/hostile.py [--timeout 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=5.0, help="verifier deadline per answer, seconds")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from pipeline.verify import VerifierPool
    from tests.test_hostile import CASES, check, run_case

    times: list[tuple[float, str]] = []
    with VerifierPool(workers=args.workers, timeout_s=args.timeout) as pool, tempfile.TemporaryDirectory() as tmp:
        pool.check_golds(["1"])  # start the workers outside the timings
        t0 = time.perf_counter()
        for i, case in enumerate(CASES):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            t = time.perf_counter()
            check(case, run_case(case, folder, pool))
            times.append((time.perf_counter() - t, case["id"]))
        total = time.perf_counter() - t0
    print(f"{len(CASES)} cases in {total:.1f}s (deadline {args.timeout:g}s, {args.workers} workers); slowest:")
    for seconds, case_id in sorted(times, reverse=True)[:5]:
        print(f"  {seconds:6.2f}s  {case_id}")
    bound = args.timeout + max(1.0, 0.5 * args.timeout) + 5.0  # deadline, grace, a worker restart
    slowest = max(t for t, _ in times)
    print(f"slowest case / bound: {slowest:.2f}s / {bound:.1f}s ({'within' if slowest <= bound else 'OVER'})")
    return 0 if slowest <= bound else 1


if __name__ == "__main__":
    raise SystemExit(main())
