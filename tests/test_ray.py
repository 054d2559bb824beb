"""The generate flow on a local two-worker Ray cluster (prefect-ray), against the local executor."""

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
