"""Compare the tables of two run dirs by content (rows, columns, every value, in order).

    python scripts/compare_runs.py RUN_A RUN_B [--tolerant samples.cumulative_logprob ...]

Prints each difference and exits 1 if there is any: how a change that must not touch the data
(a refactoring, a new executor) shows that it did not.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.store import RunDir, table_differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--tolerant", nargs="*", default=[], help="table.column pairs compared to rel 1e-6")
    args = parser.parse_args()
    tolerant = [tuple(t.split(".", 1)) for t in args.tolerant]
    diffs = table_differences(RunDir(args.a), RunDir(args.b), float_tolerant=tolerant)
    for d in diffs:
        print(d)
    print(f"{'no' if not diffs else len(diffs)} difference(s) between {args.a} and {args.b}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
