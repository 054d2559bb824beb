"""Shards in two stages (engine, then verifier) and the overlap of one shard's verification with
the next shard's generation."""

import itertools
import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline import stages as gen
from pipeline.config import load_config
from pipeline.engines import get_engine
from pipeline.errors import RunDirError
from pipeline.store import RunDir
from pipeline.timeline import stage_timeline
from schemas.run_doc import ShardRecord, StageTimeline

from .conftest import QUICKSTART


def _stats(index, generate, score, verify, write):
    stages = {"generate": generate, "score": score, "verify": verify, "write": write}
    return ShardRecord(index=index, key="k", stages=stages)


def test_stage_timeline_measures_engine_busy_time_and_overlap():
    # Shard 0's verification (10-14) runs while shard 1 is generated (10-18): 4 s of overlap.
    stats = [
        _stats(0, [0, 8], [8, 10], [10, 13], [13, 14]),
        _stats(1, [10, 18], [18, 20], [20, 22], [22, 23]),
        ShardRecord(index=2, key="k"),  # a shard this invocation did not run: no stages
    ]
    t = stage_timeline(stats)
    assert t == StageTimeline(
        shards=2,
        span_s=23.0,
        engine_busy_s=20.0,
        verifier_busy_s=7.0,
        overlap_s=4.0,
        engine_utilisation=round(20 / 23, 4),
    )
    # Run one after the other, nothing overlaps and the engine idles during each verification.
    serial = [_stats(0, [0, 8], [8, 10], [10, 13], [13, 14]), _stats(1, [14, 22], [22, 24], [24, 26], [26, 27])]
    t = stage_timeline(serial)
    assert t.overlap_s == 0.0 and t.engine_busy_s == 20.0 and t.span_s == 27.0
    assert stage_timeline([ShardRecord(index=0, key="k")]) == StageTimeline(shards=0)


@pytest.mark.slow
def test_the_flow_verifies_a_shard_while_the_engine_generates_the_next(prefect_harness, quickstart_run, tmp_path):
    from flows.generate import generate_flow

    # Its own run (the quickstart's run dir is rerun by other tests); the engine is the quickstart's,
    # already loaded in this process.
    run = RunDir(
        generate_flow(str(QUICKSTART), [f"output_dir={tmp_path / 'run'}", "problems.limit=40", "shard_size=8"])
    )
    doc = json.loads(run.run_json.read_text())
    shards = [doc["shards"][str(i)] for i in range(len(doc["shards"]))]
    assert len(shards) == 5
    for s in shards:
        st = s["stages"]
        # Within a shard the stages follow each other...
        assert st["generate"][0] <= st["generate"][1] <= st["score"][0] <= st["score"][1]
        assert st["score"][1] <= st["verify"][0] <= st["verify"][1] <= st["write"][0] <= st["write"][1]
        assert s["total_s"] == pytest.approx(s["generate_s"] + s["score_s"] + s["verify_s"] + s["write_s"], abs=0.01)
    # ... and shard k's verification lies inside the engine's work on shard k+1: the engine does not
    # wait for the verifier.
    overlapping = 0
    for a, b in itertools.pairwise(shards):
        verify, engine = a["stages"]["verify"], [b["stages"]["generate"][0], b["stages"]["score"][1]]
        assert engine[0] < a["stages"]["verify"][1]  # the next shard started before this one was verified
        overlapping += min(verify[1], engine[1]) - max(verify[0], engine[0]) > 0
    assert overlapping == len(shards) - 1
    timeline = doc["timings"]["shard_stages"]
    assert timeline["shards"] == 5 and timeline["overlap_s"] > 0
    # Every verification but the last shard's ran beside the engine.
    last = shards[-1]["stages"]
    last_busy = (last["verify"][1] - last["verify"][0]) + (last["write"][1] - last["write"][0])
    assert timeline["overlap_s"] >= timeline["verifier_busy_s"] - last_busy - 0.05
    assert doc["timings"]["executor"] == "local"
    assert not any(run.samples_pending.glob("*.parquet"))

    # verifier.overlap: false runs the stages one after the other, into the same tables.
    serial = RunDir(
        generate_flow(
            str(QUICKSTART),
            [f"output_dir={tmp_path / 'serial'}", "problems.limit=40", "shard_size=8", "verifier.overlap=false"],
        )
    )
    doc = json.loads(serial.run_json.read_text())
    shards = [doc["shards"][str(i)] for i in range(len(doc["shards"]))]
    for a, b in itertools.pairwise(shards):
        assert a["stages"]["write"][1] <= b["stages"]["generate"][0]
    assert doc["timings"]["shard_stages"]["overlap_s"] == 0.0
    assert pq.read_table(serial.samples).equals(pq.read_table(run.samples))


@pytest.mark.slow
def test_a_generated_shard_is_verified_after_a_crash_without_the_engine(quickstart_run, tmp_path, pool):
    """The engine stage's file survives a crash between the stages: the rerun verifies it without
    loading a model, and writes the very shard an uninterrupted run wrote."""
    run = RunDir(tmp_path / "copy")
    shutil.copytree(quickstart_run.root, run.root)
    cfg = load_config(str(QUICKSTART), [f"output_dir={run.root}"])
    plan = gen.plan_shards(cfg, run)[1]
    original = pq.read_table(run.shard(1))
    run.shard(1).unlink()
    assert gen.needs_engine(run, plan)
    engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed)
    generated = gen.generate_shard(cfg, run, plan, engine)
    assert generated.record.rows == original.num_rows and not run.shard(1).exists()
    pending = pq.read_table(run.pending_shard(1))
    assert pending.schema.metadata[b"expo_data.table"] == b"samples_pending"
    assert pending.column("verdict").null_count == pending.num_rows  # no verdicts yet
    # "Crash" here; the next invocation sees the pending file and needs no engine.
    assert not gen.needs_engine(run, plan)
    assert gen.generate_shard(cfg, run, plan, None).resumed is True
    finished = gen.finish_shard(cfg, run, plan, pool)
    assert finished.record.generate_s == generated.record.generate_s  # the engine stage's stats came along
    assert finished.engine == generated.engine
    assert pq.read_table(run.shard(1)).equals(original)
    assert not run.pending_shard(1).exists()
    with pytest.raises(RunDirError, match="no generated rows"):
        run.shard(1).unlink()
        gen.finish_shard(cfg, run, plan, pool)
