"""Builders on hand-made sample tables: exact rules, hand-computed numbers, and properties."""

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from pipeline.build import build_datasets
from pipeline.config import BuildConfig
from pipeline.problem_table import finalize_problems
from pipeline.store import RunDir, read_table, write_parquet

PROMPT = [{"role": "user", "content": "q?\nPlease reason step by step, and put your final answer within \\boxed{}."}]


def _problem(pid, level=1, expert="so \\boxed{1}"):
    return {
        "problem_id": pid,
        "question": f"question {pid}",
        "answer": "1",
        "expert_solution": expert,
        "level": level,
        "subject": "Algebra",
        "source": "t.jsonl",
        "source_row": 0,
        "expert_nll_mean": None,
        "expert_nll_tokens": None,
        "expert_answer_logprob": None,
    }


def _sample(pid, kind, i, verdict, nll=None, leak=None, answer_lp=None, level=1, conditioning=None):
    if kind == "explanation":
        conditioning = conditioning or "answer"
    return {
        "sample_id": f"{pid}/{kind if conditioning in (None, 'answer') else conditioning}/{i}",
        "problem_id": pid,
        "shard": 0,
        "kind": kind,
        "sample_index": i,
        "level": level,
        "subject": "Algebra",
        "prompt": PROMPT,
        "completion": f"{pid} {kind} {i}",
        "gold": "1",
        "extracted": "1",
        "parsed_answer": "1",
        "verdict": verdict,
        "verdict_detail": None,
        "extracted_by": None,
        "alt_verdict": None,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cumulative_logprob": -1.0,
        "hint_leak": leak if kind == "explanation" else None,
        "hint_leak_reason": "told_answer" if leak else None,
        "nll_mean": nll,
        "nll_tokens": 5 if nll is not None else None,
        "answer_logprob": answer_lp,
        "model": "m",
        "engine": "hf",
        "template_version": "expo-v1",
        "seed": 0,
        "conditioning": conditioning,
    }


def _run(tmp_path, problems, samples_by_shard):
    run = RunDir(tmp_path / "run")
    write_parquet(schemas.from_rows("problems", problems), run.problems)
    for k, rows in enumerate(samples_by_shard):
        write_parquet(schemas.from_rows("samples", rows), run.shard(k))
    return run


def _read(run, name):
    return read_table(run.table(name), name).to_pylist()


def test_pairs_rank_and_reuse(tmp_path):
    rows = [
        _sample("a", "explanation", 0, "correct", nll=0.9),
        _sample("a", "explanation", 1, "correct", nll=0.2),
        _sample("a", "explanation", 2, "incorrect", nll=0.1),
        _sample("a", "cot", 0, "incorrect", nll=0.5),
        _sample("a", "cot", 1, "correct", nll=0.4),
        _sample("a", "cot", 2, "no_answer", nll=0.6),
        _sample("a", "cot", 3, "timeout", nll=0.6),
    ]
    run = _run(tmp_path, [_problem("a")], [rows])
    build_datasets(run, BuildConfig(pairs_per_problem=5))
    dpo = _read(run, "dpo")
    # no reuse: chosen rank i with rejected rank i; lowest nll first; timeouts never rejected
    assert [(r["chosen_sample_id"], r["rejected_sample_id"]) for r in dpo] == [
        ("a/explanation/1", "a/cot/0"),
        ("a/explanation/0", "a/cot/2"),
    ]
    assert dpo[0]["prompt"] == PROMPT and dpo[0]["chosen"] == [{"role": "assistant", "content": "a explanation 1"}]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": "a cot 0"}]
    build_datasets(run, BuildConfig(pairs_per_problem=3, allow_reuse=True))
    assert [(r["chosen_sample_id"], r["rejected_sample_id"]) for r in _read(run, "dpo")] == [
        ("a/explanation/1", "a/cot/0"),
        ("a/explanation/0", "a/cot/0"),
        ("a/explanation/1", "a/cot/2"),
    ]
    build_datasets(run, BuildConfig(best_explanation="first", rejected_verdicts=["incorrect"]))
    assert [(r["chosen_sample_id"], r["rejected_sample_id"]) for r in _read(run, "dpo")] == [
        ("a/explanation/0", "a/cot/0")
    ]


def test_highest_answer_logprob_rule(tmp_path):
    rows = [
        _sample("a", "explanation", 0, "correct", answer_lp=-5.0),
        _sample("a", "explanation", 1, "correct", answer_lp=-0.5),
        _sample("a", "cot", 0, "incorrect"),
    ]
    run = _run(tmp_path, [_problem("a")], [rows])
    build_datasets(run, BuildConfig(best_explanation="highest_answer_logprob"))
    assert _read(run, "dpo")[0]["chosen_sample_id"] == "a/explanation/1"
    assert _read(run, "grpo")[0]["explanation_sample_id"] == "a/explanation/1"


def test_hint_leaks_are_excluded_unless_allowed(tmp_path):
    rows = [
        _sample("a", "explanation", 0, "correct", nll=0.1, leak=True),
        _sample("a", "explanation", 1, "correct", nll=0.3, leak=False),
        _sample("a", "cot", 0, "incorrect"),
    ]
    run = _run(tmp_path, [_problem("a")], [rows])
    stats = build_datasets(run, BuildConfig())
    assert _read(run, "dpo")[0]["chosen_sample_id"] == "a/explanation/1"
    assert [r["sample_id"] for r in _read(run, "sft")] == ["a/explanation/1"]
    assert stats.hint_leaks.model_dump() == {"explanations": 2, "hint_leaks": 1, "correct_leaks": 1}
    build_datasets(run, BuildConfig(include_hint_leaks=True))
    assert _read(run, "dpo")[0]["chosen_sample_id"] == "a/explanation/0"


def test_three_dpo_sets_share_rejected_rows_and_count_what_is_missing(tmp_path):
    rows = [
        # a: explanation, expert, an own correct CoT -> in all three
        _sample("a", "explanation", 0, "correct"),
        _sample("a", "cot", 0, "incorrect"),
        _sample("a", "cot", 1, "correct"),
        # b: no expert solution, no correct CoT -> only in dpo
        _sample("b", "explanation", 0, "correct"),
        _sample("b", "cot", 0, "incorrect"),
        # c: no verified explanation -> in none (counted)
        _sample("c", "explanation", 0, "incorrect"),
        _sample("c", "cot", 0, "incorrect"),
    ]
    run = _run(tmp_path, [_problem("a"), _problem("b", expert=None), _problem("c")], [rows])
    stats = build_datasets(run, BuildConfig())
    dpo, expert, own = _read(run, "dpo"), _read(run, "dpo_expert"), _read(run, "dpo_self")
    assert [r["problem_id"] for r in dpo] == ["a", "b"]
    assert [r["problem_id"] for r in expert] == ["a"] and [r["problem_id"] for r in own] == ["a"]
    by_key = {(r["problem_id"], r["pair_index"]): r for r in dpo}
    for other, source in ((expert, "expert"), (own, "cot")):
        for r in other:
            base = by_key[(r["problem_id"], r["pair_index"])]
            for col in ("prompt", "rejected", "rejected_sample_id", "rejected_nll_mean", "gold", "level"):
                assert r[col] == base[col]
            assert r["chosen_source"] == source
    assert expert[0]["chosen"] == [{"role": "assistant", "content": "so \\boxed{1}"}]
    assert expert[0]["chosen_sample_id"] is None
    assert own[0]["chosen_sample_id"] == "a/cot/1"
    assert stats.dpo_pairs_without_candidate == {"dpo_expert": 1, "dpo_self": 1}
    assert stats.problems.without_verified_explanation == 1 and stats.problems.paired == 2


def test_grpo_advantages_by_hand(tmp_path):
    verdicts = ["correct", "incorrect", "no_answer", "correct"]
    rows = [_sample("a", "cot", i, v) for i, v in enumerate(verdicts)]
    rows += [_sample("b", "cot", i, "incorrect") for i in range(4)]
    rows += [_sample("a", "explanation", 0, "correct", nll=0.2)]
    run = _run(tmp_path, [_problem("a"), _problem("b", level=5, expert=None)], [rows])
    build_datasets(run, BuildConfig())
    a, b = _read(run, "grpo")
    assert a["rollout_rewards"] == [1.0, 0.0, 0.0, 1.0] and a["pass_rate"] == 0.5
    # mean 0.5; sample std (n-1) = sqrt(4 * 0.25 / 3) = 0.57735...
    std = math.sqrt(1 / 3)
    assert a["rollout_advantages"] == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert b["rollout_advantages"] == [0.0, 0.0, 0.0, 0.0] and b["pass_rate"] == 0.0
    assert a["rollouts"] == [f"a cot {i}" for i in range(4)]
    assert a["solution"] == "\\boxed{1}"
    assert a["reward_model"] == {"style": "rule", "ground_truth": "1"}
    assert a["extra_info"] == {"index": 0, "problem_id": "a", "level": 1, "source": "t.jsonl"}
    assert b["extra_info"]["index"] == 1 and b["level"] == 5
    # data_source names verl's MATH scorer (it reads the last box); the source stays in extra_info.
    assert a["data_source"] == "lighteval/MATH" and a["ability"] == "math"
    build_datasets(run, BuildConfig(grpo_data_source="my_scorer"))  # a name of the user's own reward
    assert {r["data_source"] for r in _read(run, "grpo")} == {"my_scorer"}
    assert a["explanation"] == "a explanation 0" and b["explanation"] is None
    assert a["expert_solution"] == "so \\boxed{1}" and b["expert_solution"] is None


def test_output_follows_problem_order_across_shards_and_batches_make_one_part_each(tmp_path, monkeypatch):
    from pipeline import build

    shard0 = [_sample("z", "explanation", 0, "correct"), _sample("z", "cot", 0, "incorrect")]
    shard1 = [_sample("a", "explanation", 0, "correct"), _sample("a", "cot", 0, "incorrect")]
    shard2 = [_sample("m", "explanation", 0, "correct"), _sample("m", "cot", 0, "incorrect")]
    run = _run(tmp_path, [_problem("z"), _problem("a"), _problem("m")], [shard0, shard1, shard2])
    stats = build_datasets(run, BuildConfig())
    assert [r["problem_id"] for r in _read(run, "dpo")] == ["z", "a", "m"]
    assert stats.rows == {"dpo": 3, "dpo_expert": 3, "dpo_self": 0, "grpo": 3, "sft": 3, "grpo_questa": 0}
    assert [p.name for p in run.table("dpo").iterdir()] == ["part-00000.parquet"]  # one batch: one part
    monkeypatch.setattr(build, "BUILD_BATCH_ROWS", 4)  # two shards' rows per batch
    assert build_datasets(run, BuildConfig()).rows == stats.rows
    assert [r["problem_id"] for r in _read(run, "dpo")] == ["z", "a", "m"]
    assert sorted(p.name for p in run.table("dpo").iterdir()) == ["part-00000.parquet", "part-00002.parquet"]


def test_rebuild_replaces_stale_parts(tmp_path):
    run = _run(
        tmp_path, [_problem("a")], [[_sample("a", "explanation", 0, "correct"), _sample("a", "cot", 0, "incorrect")]]
    )
    build_datasets(run, BuildConfig())
    (run.table("dpo") / "part-00099.parquet").write_bytes(b"stale")
    build_datasets(run, BuildConfig())
    assert sorted(p.name for p in run.table("dpo").iterdir()) == ["part-00000.parquet"]


def test_builders_refuse_foreign_tables(tmp_path):
    run = _run(tmp_path, [_problem("a")], [[_sample("a", "cot", 0, "incorrect")]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem_id": ["a"]}), run.shard(1))
    with pytest.raises(schemas.SchemaError, match=r"shard-00001\.parquet.*lacks column"):
        build_datasets(run, BuildConfig())


def test_finalize_problems_joins_expert_scores(tmp_path):
    run = _run(tmp_path, [_problem("a"), _problem("b")], [[_sample("a", "cot", 0, "incorrect")]])
    scores = [{"problem_id": "b", "expert_nll_mean": 2.5, "expert_nll_tokens": 7, "expert_answer_logprob": -1.5}]
    write_parquet(schemas.from_rows("expert_scores", scores), run.expert_shard(0))
    finalize_problems(run)
    table = read_table(run.problems, "problems")
    rows = {r["problem_id"]: r for r in table.to_pylist()}
    assert rows["b"]["expert_nll_mean"] == 2.5 and rows["a"]["expert_nll_mean"] is None
    assert [r["problem_id"] for r in table.to_pylist()] == ["a", "b"]  # order kept
    # A later pass without b's score keeps it; a new score for a is joined in.
    run.expert_shard(0).unlink()
    scores = [{"problem_id": "a", "expert_nll_mean": 1.0, "expert_nll_tokens": 3, "expert_answer_logprob": -0.5}]
    write_parquet(schemas.from_rows("expert_scores", scores), run.expert_shard(1))
    finalize_problems(run)
    rows = {r["problem_id"]: r for r in read_table(run.problems, "problems").to_pylist()}
    assert rows["a"]["expert_nll_mean"] == 1.0 and rows["b"]["expert_nll_mean"] == 2.5


def test_the_builder_reads_only_the_row_groups_of_a_shards_problems(tmp_path):
    """Problems are written in row groups; a shard's build decodes the groups its problems sit in."""
    from pipeline.problem_table import ProblemIndex
    from pipeline.store import PROBLEMS_ROW_GROUP

    n = PROBLEMS_ROW_GROUP * 3 + 5
    problems = [_problem(f"q{i:04d}") for i in range(n)]
    run = _run(tmp_path, problems, [[_sample("q0300", "cot", 0, "incorrect")]])
    write_parquet(schemas.from_rows("problems", problems), run.problems, row_group_size=PROBLEMS_ROW_GROUP)
    index = ProblemIndex(run.problems)
    assert index.rows == n and index.file.num_row_groups == 4
    import polars as pl

    reads = []
    original = index.file.read_row_group
    index.file.read_row_group = lambda rg, **kw: reads.append((rg, kw.get("columns"))) or original(rg, **kw)
    got = index.for_ids(pl.Series(["q0300", "q0301", "q0300", "missing"])).collect()
    assert sorted(got["problem_id"].to_list()) == ["q0300", "q0301"]
    assert dict(zip(got["problem_id"], got["_index"], strict=True)) == {"q0300": 300, "q0301": 301}
    assert reads == [(1, None)]  # the one row group holding rows 256..511


# ---------------------------------------------------------------------------------------------
# Properties over random sample tables

VERDICT = st.sampled_from(list(schemas.VERDICTS))


@st.composite
def sample_tables(draw):
    n_problems = draw(st.integers(1, 4))
    rows = []
    for p in range(n_problems):
        pid = f"p{p}"
        for kind in ("cot", "explanation"):
            for i in range(draw(st.integers(0, 4))):
                nll = draw(st.one_of(st.none(), st.floats(0, 5)))
                leak = draw(st.booleans()) if kind == "explanation" else None
                rows.append(_sample(pid, kind, i, draw(VERDICT), nll=nll, leak=leak))
    cfg = BuildConfig(
        pairs_per_problem=draw(st.integers(1, 4)),
        allow_reuse=draw(st.booleans()),
        best_explanation=draw(st.sampled_from(["lowest_nll", "highest_answer_logprob", "first"])),
    )
    return [_problem(f"p{p}") for p in range(n_problems)], rows, cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=sample_tables())
def test_builder_invariants(tmp_path_factory, data):
    problems, rows, cfg = data
    run = _run(tmp_path_factory.mktemp("prop"), problems, [rows])
    build_datasets(run, cfg)
    by_id = {r["sample_id"]: r for r in rows}
    for name in ("dpo", "dpo_expert", "dpo_self"):
        pairs = _read(run, name)
        for pair in pairs:
            rejected = by_id[pair["rejected_sample_id"]]
            assert rejected["kind"] == "cot" and rejected["verdict"] != "correct"
            assert rejected["verdict"] in cfg.rejected_verdicts
            assert rejected["problem_id"] == pair["problem_id"]
            if pair["chosen_sample_id"] is not None:
                chosen = by_id[pair["chosen_sample_id"]]
                assert chosen["problem_id"] == pair["problem_id"]
                assert chosen["verdict"] == "correct"
                assert not chosen["hint_leak"]
        if pairs:
            per_problem = pl.DataFrame(pairs)
            counts = per_problem.group_by("problem_id").len()
            assert counts["len"].max() <= cfg.pairs_per_problem
            if not cfg.allow_reuse:
                for col in ("chosen_sample_id", "rejected_sample_id"):
                    used = (
                        per_problem.filter(pl.col(col).is_not_null())
                        .group_by("problem_id")
                        .agg(pl.col(col).n_unique().alias("u"), pl.len().alias("n"))
                    )
                    assert (used["u"] == used["n"]).all()
            pairs_seen = [(p["chosen_sample_id"], p["rejected_sample_id"]) for p in pairs if p["chosen_sample_id"]]
            assert len(pairs_seen) == len(set(pairs_seen))
    for r in _read(run, "sft"):
        src = by_id[r["sample_id"]]
        assert src["kind"] == "explanation" and src["verdict"] == "correct" and not src["hint_leak"]
    for g in _read(run, "grpo"):
        assert len(g["rollouts"]) == len(g["rollout_rewards"]) == len(g["rollout_advantages"])
        assert abs(sum(g["rollout_advantages"])) < 1e-9


def test_positives_come_from_the_named_conditioning_and_a_curriculum_counts_as_one(tmp_path):
    rows = [
        _sample("a", "cot", 0, "incorrect"),
        _sample("a", "cot", 1, "incorrect"),
        _sample("a", "explanation", 0, "correct", nll=0.5),
        _sample("a", "explanation", 0, "correct", nll=0.1, conditioning="star"),
        _sample("a", "explanation", 0, "correct", nll=0.3, conditioning="questa@0.5"),
        _sample("a", "explanation", 0, "correct", nll=0.2, conditioning="questa@0.25"),
        _sample("a", "explanation", 1, "correct", nll=0.0, conditioning="questa_more"),  # another entry
    ]
    run = _run(tmp_path, [_problem("a")], [rows])
    build_datasets(run, BuildConfig())
    assert [r["chosen_sample_id"] for r in _read(run, "dpo")] == ["a/explanation/0"]
    build_datasets(run, BuildConfig(positives="star", pairs_per_problem=2))
    assert [r["chosen_sample_id"] for r in _read(run, "dpo")] == ["a/star/0"]
    assert [r["sample_id"] for r in _read(run, "sft")] == ["a/star/0"]
    stats = build_datasets(run, BuildConfig(positives="questa", pairs_per_problem=2))
    assert [r["chosen_sample_id"] for r in _read(run, "dpo")] == ["a/questa@0.25/0", "a/questa@0.5/0"]
    assert _read(run, "grpo")[0]["explanation_sample_id"] == "a/questa@0.25/0"
    assert stats.hint_leaks.explanations == 2  # counted over the positives' conditioning
