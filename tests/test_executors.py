"""How shards are grouped into tasks: even batches, enough of them for every engine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flows.executors import MAX_AUTO_SHARDS_PER_TASK, batch_count, batches
from pipeline.config import config_from_dict
from pipeline.stages import ShardPlan


def _cfg(**extra):
    return config_from_dict({"output_dir": "/tmp/x", "model": {"path": "m"}, "problems": {"source": "p"}, **extra})


@given(st.integers(1, 3000), st.integers(1, 16), st.one_of(st.none(), st.integers(1, 50)), st.sampled_from([1, 4]))
def test_batches_cover_every_shard_once_in_order_and_even(shards, engines, per_task, per_engine):
    cfg = _cfg(shards_per_task=per_task)
    plans = [ShardPlan(i, 4 * i, 4 * i + 4, f"k{i}") for i in range(shards)]
    out = batches(plans, batch_count(cfg, shards, engines, per_engine))
    assert [p for b in out for p in b.plans] == plans
    sizes = [len(b.plans) for b in out]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    if per_task is not None:
        assert max(sizes) <= per_task and len(out) == -(-shards // per_task)
    else:
        assert max(sizes) <= MAX_AUTO_SHARDS_PER_TASK
        # every engine gets the same number of batches (at least four) while there are shards for them
        assert len(out) == min(shards, len(out)) and (len(out) % engines == 0 or len(out) == shards)
        assert len(out) >= min(shards, per_engine * engines)


def test_the_local_executor_keeps_a_small_run_in_one_batch_so_every_shard_overlaps():
    assert batch_count(_cfg(), 5, 1, per_engine=1) == 1
    assert batch_count(_cfg(), 200, 1, per_engine=1) == 7  # batches of at most 32


def test_two_hundred_shards_on_eight_engines_give_each_engine_25():
    plans = [ShardPlan(i, i, i + 1, "k") for i in range(200)]
    out = batches(plans, batch_count(_cfg(), 200, 8))
    assert len(out) == 32 and sorted({len(b.plans) for b in out}) == [6, 7]
    # taken in turn, four batches per engine hold 25 shards each
    assert {sum(len(out[e + 8 * k].plans) for k in range(4)) for e in range(8)} == {25}


def test_a_verifier_stage_that_fails_once_is_retried_in_its_batch_and_one_that_keeps_failing_names_its_shard(
    prefect_harness, tmp_path, monkeypatch
):
    import json

    import pytest

    from flows.generate import generate_flow
    from pipeline import stages
    from pipeline.errors import ShardFailedError

    from .conftest import QUICKSTART

    real, calls = stages.finish_shard, []

    def flaky(cfg, run, plan, pool):
        calls.append(plan.index)
        if plan.index == 1 and calls.count(1) <= failures:
            raise OSError("disk full (simulated)")
        return real(cfg, run, plan, pool)

    monkeypatch.setattr(stages, "finish_shard", flaky)
    sim = ["model.engine=sim", "problems.limit=12", "shard_size=4", "retries.delay_s=0"]
    failures = 1
    run = generate_flow(str(QUICKSTART), [f"output_dir={tmp_path / 'a'}", *sim])
    doc = json.loads((tmp_path / "a" / "run.json").read_text())
    assert sorted(calls) == [0, 1, 1, 2] and sorted(doc["shards"], key=int) == ["0", "1", "2"] and run
    failures, calls[:] = 5, []
    with pytest.raises(ShardFailedError, match=r"shard 1 \(problems 4\.\.7\) failed after 2 tries: OSError: disk full"):
        generate_flow(str(QUICKSTART), [f"output_dir={tmp_path / 'b'}", *sim])
    assert calls.count(1) == 2 and 2 in calls  # shard 2, generated before, was still verified and kept
