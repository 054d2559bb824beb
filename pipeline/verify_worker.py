"""The verifier's worker process: Math-Verify parsing and comparison, one job at a time, each item
under an interval timer. Started by :class:`pipeline.verify.VerifierPool` as
``python -m pipeline.verify_worker``; it imports Math-Verify and the answer normalisation only, so a
worker starts fast and holds little memory.

Protocol over a socket pair: the worker sends ``("ready", antlr_version)``; then for each job ``(gold, [answers],
check)`` it sends ``("gold", status, parsed)``, with ``check`` one ``("check", status, detail)`` (the
gold compared with itself and with another value: what every answer's comparison will cost), and
one ``("item", status, parsed, detail)`` per answer.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from pipeline.answers import clean_answer

MAX_PARSED_CHARS = 400


class _Deadline(BaseException):
    """Raised by the interval timer. A BaseException, so library `except Exception` can't eat it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Deadline()


def _short(obj: Any) -> str:
    s = str(obj)
    return s if len(s) <= MAX_PARSED_CHARS else s[:MAX_PARSED_CHARS] + "..."


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    return parse("\\boxed{" + clean_answer(text) + "}", parsing_timeout=None)


def _equivalent(gold: list[Any], pred: list[Any]) -> bool:
    from math_verify import verify

    # Gold first: Math-Verify is deliberately asymmetric.
    return bool(verify(gold, pred, timeout_seconds=None))


def _guarded(soft_timeout_s: float, fn: Any, *args: Any) -> tuple[str, Any]:
    """Run one parse or comparison under the interval timer: (status, value or error detail)."""
    signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
    try:
        return "ok", fn(*args)
    except _Deadline:
        return "timeout", None
    except MemoryError:
        return "error", "memory limit exceeded"
    except RecursionError:
        return "error", "recursion limit exceeded"
    except Exception as e:
        return "error", f"{type(e).__name__}: {_short(e)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _setup(memory_limit_mb: int) -> None:
    if memory_limit_mb > 0:
        try:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401 - import once, before the first deadline starts ticking

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and shuts us down


def _check(conn: Connection, soft_timeout_s: float, gold: str, gold_parsed: list[Any]) -> None:
    """Compare the gold with itself and with a different value, each under the deadline: a gold that
    parses but whose comparison cannot finish (``(10^{10^{10}})!``) would cost every sample the
    full deadline."""
    for other in (gold, "1" if clean_answer(gold) == "0" else "0"):
        status, other_parsed = _guarded(soft_timeout_s, _parse, other)
        if status == "ok":
            status, detail = _guarded(soft_timeout_s, _equivalent, gold_parsed, other_parsed)
        else:
            detail = other_parsed
        if status != "ok":
            conn.send(("check", status, None if status == "timeout" else detail))
            return
    conn.send(("check", "ok", None))


def _job(conn: Connection, soft_timeout_s: float, gold: str, items: list[str], check: bool = False) -> None:
    """One problem: parse the gold once (and check what comparing it costs, when asked), then parse
    and compare each answer against it."""
    status, gold_parsed = _guarded(soft_timeout_s, _parse, gold)
    if status == "ok" and not any(not isinstance(x, str) for x in gold_parsed):
        # Only Math-Verify's raw-string fallback matched: nothing a prediction can be compared to.
        conn.send(("gold", "unparseable", None))
        return
    if status != "ok":
        conn.send(("gold", status, gold_parsed))
        return
    conn.send(("gold", "ok", _short(gold_parsed[0])))
    if check:
        _check(conn, soft_timeout_s, gold, gold_parsed)
    for extracted in items:
        status, pred = _guarded(soft_timeout_s, _parse, extracted)
        if status != "ok":
            conn.send(("item", status, None, pred))
            continue
        if not pred:
            conn.send(("item", "incorrect", None, "answer could not be parsed"))
            continue
        status, same = _guarded(soft_timeout_s, _equivalent, gold_parsed, pred)
        if status != "ok":
            conn.send(("item", status, _short(pred[0]), same))
        else:
            conn.send(("item", "correct" if same else "incorrect", _short(pred[0]), None))


def antlr_version() -> str | None:
    """The ANTLR runtime Math-Verify's LaTeX parser (latex2sympy2_extended) runs on here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("antlr4-python3-runtime")
    except PackageNotFoundError:
        return None


def worker_main(conn: Connection, soft_timeout_s: float, memory_limit_mb: int) -> None:
    _setup(memory_limit_mb)
    conn.send(("ready", antlr_version()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        _job(conn, soft_timeout_s, *msg)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    worker_main(Connection(int(sys.argv[2])), float(sys.argv[3]), int(sys.argv[4]))
