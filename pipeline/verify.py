"""Answer verification: last-box extraction, then Math-Verify in worker processes with hard deadlines.

Why processes: Math-Verify's own timeouts use ``signal.alarm``, which raises in any thread but the
main one (Prefect runs tasks in threads), and sympy can spin for minutes in C code that no signal
interrupts. Each worker (:mod:`pipeline.verify_worker`) runs items in its main thread under a soft
interval timer; the parent kills a worker that overruns the deadline plus a grace period, records
``timeout`` for the item it was on, and restarts it. Nothing here evaluates input text: parsing goes
through Math-Verify/latex2sympy only.

Gold answers are parsed once per problem: a job is one problem's gold plus all its predictions.
A cheap normalised-string comparison settles exact copies (the common case for explanations)
without touching sympy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from pipeline.answers import POLICIES, Reading, fast_verdict, gold_answer, read_answers
from pipeline.errors import VerifierError

VERIFIER_VERSION = "expo-verify-2"  # 2: box groups, final-answer statements, the gold guard
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
MAX_ANSWER_CHARS = 2000  # a "final answer" longer than this is not one; don't feed it to sympy
GOLD_FAILED = "gold answer: "  # how a verdict's detail starts when the gold, not the answer, failed
# Math-Verify's LaTeX parser (latex2sympy2_extended) ships a parser per ANTLR runtime, and they do
# not read alike: under 4.9.3 (which hydra-core and omegaconf pin, so verl's environments have it)
# "25\%" does not parse at all. Verdicts are only ours under the runtime pyproject.toml pins.
ANTLR_RUNTIME = "4.13.2"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # correct | incorrect | no_answer | timeout | error
    extracted: str | None = None
    parsed: str | None = None
    detail: str | None = None
    by: str | None = None  # how the answer was found: box | boxes | statement (None: no answer)
    alt_verdict: str | None = None  # the other extraction policy's verdict, where it reads otherwise


@dataclass(frozen=True)
class GoldCheck:
    ok: bool
    parsed: str | None
    reason: str | None = None  # unparseable_gold | gold_timeout | gold_error
    detail: str | None = None


@dataclass
class _Job:
    gold: str
    items: list[tuple[int, str]]  # (output slot, extracted answer)
    check: bool = False  # also compare the gold with itself and another value (loading problems)
    gold_parsed: str | None = None  # the gold's parse, while its check runs
    gold_done: bool = False


@dataclass
class _Worker:
    process: Any
    conn: Connection
    job: _Job | None = None
    next_item: int = 0
    deadline: float = 0.0
    results: dict[int, Verdict] = field(default_factory=dict)


OTHER_POLICY = {"boxed": "boxed_or_final", "boxed_or_final": "boxed"}
NO_ANSWER = {  # what each policy looked for and did not find
    "boxed": Verdict("no_answer", None, None, "no final answer: no \\boxed{}"),
    "boxed_or_final": Verdict("no_answer", None, None, "no final answer: no \\boxed{} and no final-answer statement"),
}


class _Plan:
    """The items of one verify_groups call: each distinct (group, answer) parsed once, the rest
    settled in the parent (no answer, too long, the literal fast path)."""

    def __init__(self, pool: VerifierPool):
        self.pool = pool
        self.jobs: dict[int, _Job] = {}
        self.slots: dict[tuple[int, str], int] = {}
        self.n = 0

    def add(self, g: int, gold: str, reading: Reading | None, policy: str) -> Verdict | int:
        """The verdict now, or the slot it will come back in. The other policy's readings (``policy``
        not the pool's) are left out of the pool's stats."""
        stats = self.pool.stats if policy == self.pool.extraction else dict.fromkeys(self.pool.stats, 0)
        if reading is None:
            stats["no_answer"] += 1
            return NO_ANSWER[policy]
        answer = reading.answer
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict("incorrect", answer[:MAX_ANSWER_CHARS], None, "answer too long to parse")
        if (fast := fast_verdict(gold, answer)) is not None:
            stats["fast_path"] += 1
            detail = "matches the gold string" if fast else "differs from the gold literal"
            return Verdict("correct" if fast else "incorrect", answer, None, detail)
        if (g, answer) in self.slots:
            stats["repeats"] += 1
            return self.slots[g, answer]
        slot = self.slots[g, answer] = self.n
        self.n += 1
        self.jobs.setdefault(g, _Job(gold=gold, items=[])).items.append((slot, answer))
        return slot

    @staticmethod
    def resolve(ref: Verdict | int, results: dict[int, Verdict]) -> Verdict:
        if isinstance(ref, Verdict):
            return ref
        if ref not in results:
            raise RuntimeError("verifier lost track of an item; this is a bug in expo-data")
        return results[ref]


class VerifierPool:
    """A pool of verifier processes with a hard deadline per parse/compare.

    Use as a context manager, or call :meth:`close`. Thread-safe by turns: callers in several
    threads (the flow's verifier stages) are served one batch at a time.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        memory_limit_mb: int = 4096,
        soft_timeout_s: float | None = None,
        extraction: str = "boxed_or_final",
        python: str | None = None,
    ):
        if extraction not in POLICIES:
            raise ValueError(f"unknown extraction policy {extraction!r}; use one of {', '.join(POLICIES)}")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.n_workers = workers
        self.extraction = extraction
        self.timeout_s = float(timeout_s)
        # The in-worker timer settles most overruns without a restart; the parent's kill is the
        # guarantee for code no signal interrupts.
        self.soft_timeout_s = float(soft_timeout_s) if soft_timeout_s else self.timeout_s
        self.grace_s = max(1.0, 0.5 * self.timeout_s)
        self.memory_limit_mb = memory_limit_mb
        # The interpreter the workers run in: another environment's, where this one's packages
        # would judge differently (see ANTLR_RUNTIME). It needs Math-Verify and this package.
        self.python = python or os.environ.get("EXPO_VERIFY_PYTHON") or sys.executable
        self._workers: list[_Worker] = []
        self._lock = threading.RLock()
        self.stats = {"fast_path": 0, "repeats": 0, "parsed": 0, "timeouts": 0, "restarts": 0, "no_answer": 0}

    # lifecycle ------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        # A fresh interpreter via subprocess, not multiprocessing: spawn/forkserver re-import the
        # caller's __main__ (breaking scripts without a main guard) and fork is unsafe in a process
        # that already runs threads (torch, Prefect).
        parent_sock, child_sock = socket.socketpair()
        cmd = [
            self.python,
            "-m",
            "pipeline.verify_worker",
            "--worker",
            str(child_sock.fileno()),
            repr(self.soft_timeout_s),
            str(self.memory_limit_mb),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL)
        child_sock.close()
        conn = Connection(parent_sock.detach())
        if not conn.poll(120):
            proc.kill()
            raise VerifierError("verifier worker did not start within 120 s")
        try:
            _, antlr = conn.recv()
        except EOFError:
            raise VerifierError(f"verifier worker exited at start (exit code {proc.wait()})") from None
        if antlr != ANTLR_RUNTIME:
            proc.kill()
            raise VerifierError(
                f"the verifier's interpreter ({self.python}) has antlr4-python3-runtime {antlr}, not "
                f"{ANTLR_RUNTIME}: Math-Verify's LaTeX parser reads differently under it (verl's "
                "environments pin 4.9.3 through hydra-core), so its verdicts would not be ours. Run the "
                "verifier in an environment that has expo-data's pins: EXPO_VERIFY_PYTHON=/path/to/python "
                "(or python=... in verl's custom_reward_function.reward_kwargs)."
            )
        return _Worker(process=proc, conn=conn)

    def _ensure_started(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                w.conn.send(None)
        for w in self._workers:
            try:
                w.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
            w.conn.close()
        self._workers = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # public API ------------------------------------------------------------------------------
    def verify_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[Verdict]]:
        """Verdicts for each (gold, completions) group: each completion's final answer, read by
        :func:`pipeline.answers.read_answer` under this pool's extraction policy, against the gold.
        Each verdict also says what the other policy would have given, where it reads otherwise."""
        plan = _Plan(self)
        entries = []
        for g, (gold, completions) in enumerate(groups):
            gold = gold_answer(gold)
            for text in completions:
                readings = read_answers(text or "")
                primary, other = readings[self.extraction], readings[OTHER_POLICY[self.extraction]]
                same = (primary.answer if primary else None) == (other.answer if other else None)
                ref = plan.add(g, gold, primary, self.extraction)
                alt = None if same else plan.add(g, gold, other, OTHER_POLICY[self.extraction])
                entries.append((g, primary, ref, alt))
        results = self._run(list(plan.jobs.values()))
        out: list[list[Verdict]] = [[] for _ in groups]
        for g, reading, ref, alt_ref in entries:
            v = plan.resolve(ref, results)
            if reading is not None and reading.by != "box":
                v = replace(v, detail=f"{reading.describe()}; {v.detail}" if v.detail else reading.describe())
            alt = plan.resolve(alt_ref, results).verdict if alt_ref is not None else None
            out[g].append(replace(v, by=reading.by if reading else None, alt_verdict=alt))
        return out

    def check_golds(self, golds: Sequence[str]) -> list[GoldCheck]:
        """Parse each gold answer once and compare it with itself and with another value, under the
        same deadlines (never the string fast path, which settles a gold equal to itself without
        sympy); used to validate problems. A gold whose comparison cannot finish is a timeout."""
        jobs = [_Job(gold=g, items=[], check=True) for g in golds]
        gold_results: dict[int, GoldCheck] = {}
        self._run(jobs, gold_results)
        return [gold_results[i] for i in range(len(golds))]

    # the event loop --------------------------------------------------------------------------
    def _run(self, jobs: list[_Job], gold_results: dict[int, GoldCheck] | None = None) -> dict[int, Verdict]:
        with self._lock:
            return self._run_locked(jobs, gold_results)

    def _run_locked(self, jobs: list[_Job], gold_results: dict[int, GoldCheck] | None) -> dict[int, Verdict]:
        results: dict[int, Verdict] = {}
        if not jobs:
            return results
        self._ensure_started()
        job_index = {id(j): k for k, j in enumerate(jobs)}
        pending: deque[_Job] = deque(jobs)

        def assign(w: _Worker, job: _Job) -> None:
            w.job, w.next_item = job, 0
            w.deadline = time.monotonic() + self.timeout_s + self.grace_s
            w.conn.send((job.gold, [e for _, e in job.items], job.check))

        def finish_gold(job: _Job, check: GoldCheck) -> None:
            job.gold_done = True
            if gold_results is not None:
                gold_results[job_index[id(job)]] = check
            if not check.ok:
                verdict = "timeout" if check.reason == "gold_timeout" else "error"
                for slot, extracted in job.items:
                    results[slot] = Verdict(verdict, extracted, None, f"{GOLD_FAILED}{check.detail}")

        while pending or any(w.job for w in self._workers):
            for w in self._workers:
                if w.job is None and pending:
                    assign(w, pending.popleft())
            busy = [w for w in self._workers if w.job is not None]
            now = time.monotonic()
            timeout = max(0.0, min(w.deadline for w in busy) - now)
            ready = wait([w.conn for w in busy], timeout=timeout)
            for w in busy:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        self._replace(w, pending, results, finish_gold, "verifier process died")
                        continue
                    self._handle(w, msg, results, finish_gold)
                elif time.monotonic() >= w.deadline:
                    self.stats["timeouts"] += 1
                    self._replace(w, pending, results, finish_gold, None)
        return results

    def _handle(self, w: _Worker, msg: tuple, results: dict[int, Verdict], finish_gold: Any) -> None:
        job = w.job
        assert job is not None
        w.deadline = time.monotonic() + self.timeout_s + self.grace_s
        if msg[0] == "check":
            _, status, info = msg
            if status == "ok":
                finish_gold(job, GoldCheck(True, job.gold_parsed))
            elif status == "timeout":
                finish_gold(job, self._comparison_timeout())
            else:
                finish_gold(job, GoldCheck(False, None, "gold_error", f"comparing the gold failed: {info}"))
            if status != "ok" or not job.items:
                w.job = None
            return
        if msg[0] == "gold":
            _, status, info = msg
            if status == "ok" and job.check:
                job.gold_parsed = info  # settled by the check that follows
                return
            if status == "ok":
                finish_gold(job, GoldCheck(True, info))
            elif status == "unparseable":
                finish_gold(job, GoldCheck(False, None, "unparseable_gold", "Math-Verify found no answer in it"))
            elif status == "timeout":
                finish_gold(job, GoldCheck(False, None, "gold_timeout", f"parsing exceeded {self.timeout_s:g} s"))
            else:
                finish_gold(job, GoldCheck(False, None, "gold_error", str(info)))
            if status != "ok" or not job.items:
                w.job = None
            return
        _, status, parsed, detail = msg
        slot, extracted = job.items[w.next_item]
        if status == "timeout":
            self.stats["timeouts"] += 1
            detail = f"exceeded {self.timeout_s:g} s"
        self.stats["parsed"] += 1
        results[slot] = Verdict(status, extracted, parsed, detail)
        w.next_item += 1
        if w.next_item == len(job.items):
            w.job = None

    def _comparison_timeout(self, killed: bool = False) -> GoldCheck:
        how = " (killed)" if killed else ""
        detail = f"comparing the gold with an answer exceeded {self.timeout_s:g} s{how}; parsing it did not"
        return GoldCheck(False, None, "gold_timeout", detail)

    def _replace(
        self, w: _Worker, pending: deque, results: dict[int, Verdict], finish_gold: Any, died: str | None
    ) -> None:
        """Kill a stuck or dead worker, settle the item it was on, requeue the rest of its job."""
        job = w.job
        w.process.kill()
        w.process.wait()
        w.conn.close()
        self.stats["restarts"] += 1
        if job is not None:
            if not job.gold_done:
                if died:
                    finish_gold(job, GoldCheck(False, None, "gold_error", died))
                elif job.gold_parsed is not None:
                    finish_gold(job, self._comparison_timeout(killed=True))
                else:
                    finish_gold(
                        job, GoldCheck(False, None, "gold_timeout", f"parsing exceeded {self.timeout_s:g} s (killed)")
                    )
            else:
                slot, extracted = job.items[w.next_item]
                if died:
                    results[slot] = Verdict("error", extracted, None, died)
                else:
                    results[slot] = Verdict("timeout", extracted, None, f"exceeded {self.timeout_s:g} s (killed)")
                rest = job.items[w.next_item + 1 :]
                if rest:
                    pending.appendleft(_Job(gold=job.gold, items=rest))
        fresh = self._spawn()
        w.process, w.conn, w.job, w.next_item = fresh.process, fresh.conn, None, 0


_SHARED: dict[tuple[int, float, str, str | None], VerifierPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(
    workers: int, timeout_s: float, extraction: str = "boxed_or_final", python: str | None = None
) -> VerifierPool:
    """The process's verifier pool for these settings, started once and reused by every shard stage
    in the process (a Ray worker takes many shards; starting interpreters per shard would cost
    seconds each). Closed by :func:`close_shared_pools`, or by the workers themselves when this
    process exits and their socket closes."""
    key = (workers, float(timeout_s), extraction, python)
    with _SHARED_LOCK:
        pool = _SHARED.get(key)
        if pool is None:
            pool = _SHARED[key] = VerifierPool(workers, timeout_s, extraction=extraction, python=python)
        return pool


def close_shared_pools() -> None:
    with _SHARED_LOCK:
        pools = list(_SHARED.values())
        _SHARED.clear()
    for pool in pools:
        pool.close()
