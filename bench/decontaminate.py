"""Decontamination speed: training problems checked per second against a 5,000-question benchmark.

    python bench/decontaminate.py [--benchmark 5000] [--train 7500] [--words 40] [--planted 100]

Writes a benchmark file and a training file of MATH-sized questions (``--words`` words on average,
drawn from the vocabulary of the problem files in data/), plants ``--planted`` benchmark questions
in the training file (half verbatim, half with their first and last words changed, from questions of
at least 12 words), and runs the
check as ``expo-data decontaminate`` does: read both files through the problem readers, index the
benchmark, look up every training question. Prints the index and check times, problems checked per
second, and how many planted copies were found (all must be; the random questions share no 8-gram).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _vocabulary() -> list[str]:
    from pipeline.contamination import words

    vocab: set[str] = set()
    for f in (ROOT / "data" / "problems").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            vocab.update(words(row.get("problem") or row.get("question") or ""))
    return sorted(vocab)


def _question(rng: random.Random, vocab: list[str], mean: int) -> str:
    n = max(4, int(rng.gauss(mean, mean / 3)))
    return " ".join(rng.choice(vocab) for _ in range(n)) + "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", type=int, default=5000)
    ap.add_argument("--train", type=int, default=7500)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--planted", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pipeline.contamination import check_source, parse_source

    rng = random.Random(args.seed)
    vocab = _vocabulary()
    bench = [_question(rng, vocab, args.words) for _ in range(args.benchmark)]
    train = [_question(rng, vocab, args.words) for _ in range(args.train - args.planted)]
    # Reworded copies keep all but two words: planted from questions long enough to keep an 8-gram.
    planted = rng.sample([i for i, q in enumerate(bench) if len(q.split()) >= 12], args.planted)
    for k, i in enumerate(planted):
        w = bench[i].split()
        train.append(bench[i] if k % 2 == 0 else " ".join(["Now", *w[1:-1], "please?"]))
    rng.shuffle(train)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, rows in (("benchmark", bench), ("train", train)):
            paths[name] = Path(tmp) / f"{name}.jsonl"
            paths[name].write_text("".join(json.dumps({"problem": q, "solution": "\\boxed{1}"}) + "\n" for q in rows))
        t0 = time.perf_counter()
        check = check_source(parse_source(str(paths["train"])), [parse_source(str(paths["benchmark"]))], 8)
        total = time.perf_counter() - t0
    mean_words = sum(len(q.split()) for q in bench) / len(bench)
    print(f"benchmark: {args.benchmark} questions, {mean_words:.1f} words on average; training: {len(train)}")
    print(f"index: {check.index_s:.2f} s; check: {check.check_s:.2f} s; total with reading: {total:.2f} s")
    print(f"found: {len(check.findings)} of {args.planted} planted")
    print(f"problems_per_s_vs_{args.benchmark}: {len(train) / check.check_s:.0f}")
    print(f"end_to_end_problems_per_s: {len(train) / total:.0f}")
    if len(check.findings) != args.planted:
        raise SystemExit("the check missed a planted copy or found a random one")


if __name__ == "__main__":
    main()
