"""The generate flow on a local two-worker Ray cluster (prefect-ray), against the local executor."""

import itertools
import json
import os

import pytest

from pipeline.store import RunDir, table_differences

from .conftest import QUICKSTART

pytestmark = pytest.mark.slow

# vLLM's sampler sums log-probabilities in an order that depends on the thread count (Ray gives each
# engine task its own CPU, the local run both); texts, tokens, verdicts and scores are bit-equal.
FLOAT_TOLERANT = {("samples", "cumulative_logprob")}


def test_quickstart_on_a_local_ray_cluster_gives_the_local_tables(
    prefect_harness, quickstart_run, tmp_path, monkeypatch
):
    from flows.generate import generate_flow

    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("EXPO_DATA_EVENTS", str(events))  # inherited by the Ray workers
    out = tmp_path / "qs-ray"
    run = RunDir(generate_flow(str(QUICKSTART), overrides=[f"output_dir={out}", "executor=ray", "ray.num_cpus=2"]))
    assert table_differences(quickstart_run, run, float_tolerant=FLOAT_TOLERANT) == []

    log = [json.loads(line) for line in events.read_text().splitlines()]
    loads = [e["pid"] for e in log if e["event"] == "engine.loading"]
    generated_by = {e["pid"] for e in log if e["event"] == "shard.start"}
    # One long-lived engine per worker process, loaded once (Ray may hand engine tasks to a third
    # worker that ran verifier stages before), never once per shard, never in the flow's process.
    assert len(loads) == len(set(loads)) < 5
    assert generated_by <= set(loads) and os.getpid() not in loads
    assert len([e for e in log if e["event"] == "shard.start"]) == 5
    doc = json.loads(run.run_json.read_text())
    assert doc["timings"]["executor"] == "ray"
    assert {s["engine"]["pid"] for s in doc["shards"].values()} == generated_by
    assert doc["model"]["engine"] == "vllm" and doc["model"]["chat_template_digest"]
    assert (
        doc["tables"]["dpo"]["files"].keys()
        == json.loads(quickstart_run.run_json.read_text())["tables"]["dpo"]["files"].keys()
    )


def test_the_simulated_engine_runs_the_same_stages_on_ray_with_at_most_max_engines_at_once(prefect_harness, tmp_path):
    """The simulated engine (model.engine: sim) through the Ray executor, one engine stage at a time
    (ray.max_engines: 1) beside the verifier stages: the same tables as the local executor."""
    from flows.generate import generate_flow

    sim = ["model.engine=sim", "model.sim.seconds_per_call=0.3", "problems.limit=24", "shard_size=4"]
    local = RunDir(generate_flow(str(QUICKSTART), overrides=[f"output_dir={tmp_path / 'local'}", *sim]))
    ray_settings = ["executor=ray", "ray.num_cpus=2", "ray.max_engines=1"]
    run = RunDir(generate_flow(str(QUICKSTART), overrides=[f"output_dir={tmp_path / 'ray'}", *sim, *ray_settings]))
    assert table_differences(local, run) == []
    doc = json.loads(run.run_json.read_text())
    assert doc["model"]["engine"] == "sim" and doc["timings"]["executor"] == "ray" and len(doc["shards"]) == 6
    engine = sorted((s["stages"]["generate"][0], s["stages"]["score"][1]) for s in doc["shards"].values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(engine))  # never two engine stages at once
    assert read_rows(run, "dpo") > 0


def read_rows(run, name):
    return json.loads(run.run_json.read_text())["tables"][name]["rows"]
