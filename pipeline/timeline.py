"""When things ran: stage stamps of shards, how they overlapped, and the laps of a whole run.

Stage stamps are wall-clock epoch seconds, so stamps taken in different processes (the flow, a
verifier thread, a Ray worker) lie on one axis; durations are measured with the monotonic clock.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable

from schemas.run_doc import ShardRecord, StageTimeline, Worker

ENGINE_STAGES = ("generate", "score")
VERIFIER_STAGES = ("verify", "write")
Interval = tuple[float, float]


def stamp() -> float:
    """Wall-clock stage stamp (epoch seconds): comparable across processes and Ray workers."""
    return round(time.time(), 3)


def this_worker() -> Worker:
    return Worker(host=platform.node(), pid=os.getpid())


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _length(intervals: list[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def _intersection(xs: list[Interval], ys: list[Interval]) -> float:
    total = 0.0
    for a, b in xs:
        for c, d in ys:
            total += max(0.0, min(b, d) - max(a, c))
    return total


def stage_timeline(records: Iterable[ShardRecord]) -> StageTimeline:
    """How the shard stages of one invocation lay in time: engine busy (generate + score), verifier
    busy (verify + write), the time both ran at once, and the engine's share of the span. With
    overlap, ``overlap_s`` approaches the verifier's busy time and the engine idles only for the
    last shard's verification."""
    engine: list[Interval] = []
    cpu: list[Interval] = []
    shards = 0
    for r in records:
        if not r.stages:
            continue
        shards += 1
        engine += [(r.stages[k][0], r.stages[k][1]) for k in ENGINE_STAGES if k in r.stages]
        cpu += [(r.stages[k][0], r.stages[k][1]) for k in VERIFIER_STAGES if k in r.stages]
    if not engine and not cpu:
        return StageTimeline(shards=0)
    eng, ver = _union(engine), _union(cpu)
    everything = _union(eng + ver)
    span = everything[-1][1] - everything[0][0]
    return StageTimeline(
        shards=shards,
        span_s=round(span, 3),
        engine_busy_s=round(_length(eng), 3),
        verifier_busy_s=round(_length(ver), 3),
        overlap_s=round(_intersection(eng, ver), 3),
        engine_utilisation=round(_length(eng) / span, 4) if span > 0 else None,
    )


class Laps:
    """Seconds between named marks of one run (``problems``, ``shards``, ``build``, ...)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.laps: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.laps[f"{name}_s"] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return round(time.monotonic() - self.start, 3)
