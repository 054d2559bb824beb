"""Curation: the rules on crafted runs, the funnel that counts them, the validation split, and the
benchmark-overlap index."""

import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import curation
from pipeline.build import build_datasets
from pipeline.config import BuildConfig
from pipeline.contamination import Entry, OverlapIndex, words
from pipeline.store import VALIDATION, read_table

from .test_build import _problem, _read, _run, _sample

DATASETS = ("dpo", "dpo_expert", "dpo_self", "grpo", "sft", "grpo_questa")


def _s(pid, kind, i, verdict, text=None, tokens=5, finish="stop", nll=None):
    row = _sample(pid, kind, i, verdict, nll=nll)
    row.update(completion=text or row["completion"], completion_tokens=tokens, finish_reason=finish)
    return row


def _cots(pid, verdicts):
    return [_s(pid, "cot", i, v) for i, v in enumerate(verdicts)]


def _expls(pid, n):
    return [_s(pid, "explanation", i, "correct", nll=0.1 * (i + 1)) for i in range(n)]


def _removed(stats, rule):
    return next(s for s in stats.funnel.steps if s.rule == rule)


def _check_reconciles(run, stats):
    """Rows written (train + validation) = rows with no rule minus what the applied rules removed."""
    f = stats.funnel
    for t in DATASETS:
        applied = sum(s.removed.get(t, 0) for s in f.steps if s.applied)
        written = stats.rows[t] + stats.validation_rows.get(t, 0)
        assert written == f.candidates[t] - applied, t
        assert len(_read(run, t)) == stats.rows[t]
        by_level = {}
        for r in _read(run, t) + _validation(run, t):
            by_level[str(r["level"])] = by_level.get(str(r["level"]), 0) + 1
        for level, n in f.candidates_by_level.get(t, {}).items():
            gone = sum(s.removed_by_level.get(t, {}).get(level, 0) for s in f.steps if s.applied)
            assert by_level.get(level, 0) == n - gone, (t, level)


def _validation(run, name):
    folder = run.table(name) / VALIDATION
    return read_table(folder, name).to_pylist() if folder.exists() else []


def test_the_pass_rate_window_picks_the_problems_that_give_dpo_and_sft_rows(tmp_path):
    # p0: no CoT right (rate 0); p1: one of four (0.25); p2: three of four (0.75)
    rows = _cots("p0", ["incorrect"] * 4) + _expls("p0", 2)
    rows += _cots("p1", ["correct", "incorrect", "incorrect", "incorrect"]) + _expls("p1", 2)
    rows += _cots("p2", ["correct", "correct", "correct", "incorrect"]) + _expls("p2", 2)
    problems = [_problem(p) for p in ("p0", "p1", "p2")]
    run = _run(tmp_path, problems, [rows])
    off = build_datasets(run, BuildConfig())
    assert {r["problem_id"] for r in _read(run, "dpo")} == {"p0", "p1", "p2"}
    assert [s.rule for s in off.funnel.steps] == ["truncated", "dedup", "equal_rewards"]  # no window: no step
    stats = build_datasets(run, BuildConfig(max_pass_rate=0.25))
    assert {r["problem_id"] for r in _read(run, "dpo")} == {"p0", "p1"}
    assert {r["problem_id"] for r in _read(run, "sft")} == {"p0", "p1"}
    assert len(_read(run, "grpo")) == 3  # grpo is not cut by the window
    step = _removed(stats, "pass_rate")
    assert step.applied and step.removed["dpo"] == 1 and step.removed["sft"] == 2 and step.removed["grpo"] == 0
    _check_reconciles(run, stats)
    build_datasets(run, BuildConfig(min_pass_rate=0.5))
    assert {r["problem_id"] for r in _read(run, "dpo")} == {"p2"}


def test_a_truncated_text_is_never_chosen_and_rejected_only_by_option(tmp_path):
    rows = [
        _s("p0", "explanation", 0, "correct", nll=0.1, finish="length"),  # the best ranked, but cut off
        _s("p0", "explanation", 1, "correct", nll=0.5),
        _s("p0", "cot", 0, "incorrect", finish="length"),
        _s("p0", "cot", 1, "incorrect"),
    ]
    run = _run(tmp_path, [_problem("p0")], [rows])
    kept = build_datasets(run, BuildConfig())
    [pair] = _read(run, "dpo")
    assert pair["chosen_sample_id"] == "p0/explanation/0" and pair["rejected_sample_id"] == "p0/cot/0"
    assert _removed(kept, "truncated").removed == dict.fromkeys(DATASETS, 0) | {"sft": 1}  # counted only
    build_datasets(run, BuildConfig(truncated="not_chosen"))
    [pair] = _read(run, "dpo")
    assert pair["chosen_sample_id"] == "p0/explanation/1" and pair["rejected_sample_id"] == "p0/cot/0"
    assert _read(run, "grpo")[0]["explanation"] == "p0 explanation 1"  # grpo's positive too
    stats = build_datasets(run, BuildConfig(truncated="drop"))
    [pair] = _read(run, "dpo")
    assert pair["rejected_sample_id"] == "p0/cot/1"
    assert len(_read(run, "grpo")[0]["rollouts"]) == 2  # the group keeps its G
    _check_reconciles(run, stats)


def test_length_caps_and_the_length_ratio_remove_what_they_should(tmp_path):
    rows = [
        _s("p0", "explanation", 0, "correct", tokens=10, nll=0.1),
        _s("p0", "cot", 0, "incorrect", tokens=100),  # 10x the chosen side
        _s("p1", "explanation", 0, "correct", tokens=40, nll=0.1),
        _s("p1", "cot", 0, "incorrect", tokens=60),
    ]
    run = _run(tmp_path, [_problem("p0"), _problem("p1")], [rows])
    stats = build_datasets(run, BuildConfig(max_length_ratio=2.0))
    assert [r["problem_id"] for r in _read(run, "dpo")] == ["p1"]
    assert _removed(stats, "length_ratio").removed["dpo"] == 1
    _check_reconciles(run, stats)
    stats = build_datasets(run, BuildConfig(max_tokens=50))
    assert [r["problem_id"] for r in _read(run, "dpo")] == []  # p0's CoT and p1's both exceed 50
    assert [r["problem_id"] for r in _read(run, "sft")] == ["p0", "p1"]
    assert _removed(stats, "max_tokens").removed["dpo"] == 2
    _check_reconciles(run, stats)


def test_duplicate_texts_are_one_candidate_but_stay_in_grpo_groups(tmp_path):
    rows = [
        _s("p0", "cot", 0, "incorrect", text="The answer is 3."),
        _s("p0", "cot", 1, "incorrect", text="the  ANSWER is 3."),  # the same, but for case and spacing
        _s("p0", "cot", 2, "incorrect", text="I think it is 4."),
        _s("p0", "explanation", 0, "correct", nll=0.1),
        _s("p0", "explanation", 1, "correct", nll=0.2),
    ]
    run = _run(tmp_path, [_problem("p0")], [rows])
    off = build_datasets(run, BuildConfig(pairs_per_problem=2))
    assert [p["rejected_sample_id"] for p in _read(run, "dpo")] == ["p0/cot/0", "p0/cot/1"]
    assert _removed(off, "dedup").removed["dpo"] == 0  # p0/cot/2 would take the second place
    stats = build_datasets(run, BuildConfig(pairs_per_problem=2, dedup=True))
    assert [p["rejected_sample_id"] for p in _read(run, "dpo")] == ["p0/cot/0", "p0/cot/2"]
    assert len(_read(run, "grpo")[0]["rollouts"]) == 3
    _check_reconciles(run, stats)


def test_grpo_groups_with_equal_rewards_are_dropped_by_option(tmp_path):
    rows = _cots("p0", ["incorrect"] * 4) + _cots("p1", ["correct", "incorrect", "incorrect", "incorrect"])
    rows += _cots("p2", ["correct"] * 4)
    run = _run(tmp_path, [_problem(p) for p in ("p0", "p1", "p2")], [rows])
    kept = build_datasets(run, BuildConfig())
    assert len(_read(run, "grpo")) == 3 and _removed(kept, "equal_rewards").removed["grpo"] == 2
    stats = build_datasets(run, BuildConfig(grpo_equal_rewards="drop"))
    assert [r["extra_info"]["problem_id"] for r in _read(run, "grpo")] == ["p1"]
    _check_reconciles(run, stats)


def test_the_validation_split_holds_whole_problems_and_is_the_same_on_every_build(tmp_path):
    pids = [f"p{i}" for i in range(40)]
    rows = []
    for pid in pids:
        rows += _cots(pid, ["incorrect", "incorrect"]) + _expls(pid, 2)
    run = _run(tmp_path, [_problem(p) for p in pids], [rows[: len(rows) // 2], rows[len(rows) // 2 :]])
    stats = build_datasets(run, BuildConfig(validation_fraction=0.25, pairs_per_problem=2))
    for name in ("dpo", "sft", "grpo"):
        train = {r["problem_id"] for r in _read(run, name)}
        held = {r["problem_id"] for r in _validation(run, name)}
        assert train and held and not train & held and train | held == set(pids)
    held = {r["problem_id"] for r in _validation(run, "dpo")}
    assert held == set(curation.validation_ids(pids, 0.25)) and stats.validation_problems == len(held)
    assert 4 <= len(held) <= 16
    assert all(r["problem_id"] in held for r in _validation(run, "sft"))
    _check_reconciles(run, stats)
    build_datasets(run, BuildConfig(validation_fraction=0.25, pairs_per_problem=2))
    assert {r["problem_id"] for r in _validation(run, "dpo")} == held
    build_datasets(run, BuildConfig())
    assert not (run.table("dpo") / VALIDATION).exists()


VERDICT = st.sampled_from(["correct", "incorrect", "no_answer"])


@st.composite
def curated_runs(draw):
    rows, problems = [], []
    for p in range(draw(st.integers(1, 5))):
        pid = f"p{p}"
        problems.append(_problem(pid, level=1 + p % 3))
        for kind in ("cot", "explanation"):
            for i in range(draw(st.integers(0, 4))):
                text = draw(st.sampled_from(["a", "A ", "b", "c d"]))
                row = _s(
                    pid,
                    kind,
                    i,
                    draw(VERDICT),
                    text=text,
                    tokens=draw(st.integers(1, 40)),
                    finish=draw(st.sampled_from(["stop", "length"])),
                    nll=draw(st.floats(0, 3)),
                )
                row["level"] = 1 + p % 3
                rows.append(row)
    lo = draw(st.sampled_from([0.0, 0.25]))
    cfg = BuildConfig(
        pairs_per_problem=draw(st.integers(1, 3)),
        allow_reuse=draw(st.booleans()),
        min_pass_rate=lo,
        max_pass_rate=draw(st.sampled_from([0.5, 1.0])),
        truncated=draw(st.sampled_from(["keep", "not_chosen", "drop"])),
        max_tokens=draw(st.sampled_from([None, 20])),
        max_length_ratio=draw(st.sampled_from([None, 1.5])),
        dedup=draw(st.booleans()),
        grpo_equal_rewards=draw(st.sampled_from(["keep", "drop"])),
        validation_fraction=draw(st.sampled_from([0.0, 0.5])),
    )
    return problems, rows, cfg


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=curated_runs())
def test_every_tables_rows_reconcile_with_the_funnel(tmp_path_factory, data):
    problems, rows, cfg = data
    run = _run(tmp_path_factory.mktemp("funnel"), problems, [rows])
    stats = build_datasets(run, cfg)
    _check_reconciles(run, stats)
    assert all(v >= 0 for s in stats.funnel.steps for v in s.removed.values())
    by_id = {r["sample_id"]: r for r in rows}
    for pair in _read(run, "dpo") + _validation(run, "dpo"):
        chosen, rejected = by_id[pair["chosen_sample_id"]], by_id[pair["rejected_sample_id"]]
        if cfg.truncated != "keep":
            assert chosen["finish_reason"] == "stop"
        if cfg.truncated == "drop":
            assert rejected["finish_reason"] == "stop"
        if cfg.max_tokens:
            assert max(chosen["completion_tokens"], rejected["completion_tokens"]) <= cfg.max_tokens
        if cfg.max_length_ratio:
            a, b = chosen["completion_tokens"], rejected["completion_tokens"]
            assert max(a, b) / min(a, b) <= cfg.max_length_ratio
        cots = [r for r in rows if r["problem_id"] == pair["problem_id"] and r["kind"] == "cot"]
        rate = sum(r["verdict"] == "correct" for r in cots) / len(cots)
        assert cfg.min_pass_rate <= rate <= cfg.max_pass_rate
    train = {r["problem_id"] for t in DATASETS for r in _read(run, t)}
    held = {r["problem_id"] for t in DATASETS for r in _validation(run, t)}
    assert not train & held


# ----------------------------------------------------------------------------------------------
# The overlap index


def test_words_drop_math_delimiters_and_the_punctuation_around_a_word():
    assert words("What is $23+45$?") == ["what", "is", "23+45"]
    assert words("  Compute \\(x^2\\), then   STOP. ") == ["compute", "x^2", "then", "stop"]


def test_a_long_question_overlaps_by_one_shared_8gram_and_a_short_one_only_whole():
    index = OverlapIndex(8)
    bench = "Let $f(x) = 3x^2 - 5$. What is the value of $f(f(1))$ when the function is applied twice?"
    index.add(bench, Entry("MATH-500/test", 7, "b7"))
    index.add("What is $23+45$?", Entry("MATH-500/test", 8, "b8"))
    reworded = "Suppose $f(x) = 3x^2 - 5$. What is the value of $f(f(1))$ when the function is used twice?"
    m = index.match(reworded)
    assert m is not None and m.entry.row == 7 and len(m.shared.split()) == 8
    assert "MATH-500/test row 7 (b7)" in m.detail()
    assert index.match("what is 23+45") is not None  # short: compared whole, after normalisation
    assert index.match("What is $23+46$?") is None
    assert index.match("Let $g(x) = 2x$. What is the value of $g(4)$ when the input is even?") is None
    whole = OverlapIndex(None)
    whole.add(bench, Entry("b", 0))
    assert whole.match(reworded) is None and whole.match(bench.upper()) is not None


def test_the_funnel_section_renders_for_the_report_and_card(tmp_path):
    rows = _cots("p0", ["incorrect"] * 2) + _expls("p0", 2)
    run = _run(tmp_path, [_problem("p0")], [rows])
    stats = build_datasets(run, BuildConfig(dedup=True))
    lines = curation.funnel_lines(stats)
    assert lines[0].startswith("| step |") and any(line.startswith("| dedup |") for line in lines)
    assert any(line.startswith("| truncated (off) |") for line in lines)
    assert json.loads(stats.model_dump_json())["funnel"]["steps"][0]["rule"] == "truncated"
    assert pl.DataFrame(_read(run, "dpo")).height == stats.rows["dpo"]
    with pytest.raises(ValueError, match="min_pass_rate"):
        BuildConfig(min_pass_rate=0.6, max_pass_rate=0.5)


# ----------------------------------------------------------------------------------------------
# The real path: a generate run with every curation setting, and the check alone


def _benchmark(path):
    """A benchmark holding two training questions verbatim (one short, in other case), one lightly
    reworded, and two unrelated ones."""
    rows = [
        "WHAT IS $23+45$?",  # quickstart row 0, short: compared whole
        "A fair six-sided die is rolled once. What is the probability that the number rolled is a multiple of "
        "$3$? Express your answer as a common fraction.",  # row 10 verbatim
        "A rectangle has length $8$ cm and width $5$ cm. Find the area of this rectangle in square centimeters.",
        "How many positive divisors does $36$ have?",
        "Simplify $\\sqrt{50}$.",
    ]
    path.write_text("".join(json.dumps({"problem": q, "solution": "\\boxed{1}"}) + "\n" for q in rows))
    return path


@pytest.mark.slow
def test_a_curated_run_quarantines_the_benchmarks_problems_and_its_tables_reconcile(prefect_harness, tmp_path):
    from datasets import load_dataset

    from flows.generate import generate_flow
    from pipeline.publish import stage
    from pipeline.store import RunDir

    from .conftest import QUICKSTART

    bench = _benchmark(tmp_path / "bench.jsonl")
    settings_ = [
        f"output_dir={tmp_path / 'run'}",
        "model.engine=hf",
        "problems.limit=16",
        "shard_size=8",
        "generation.sampling.max_tokens=64",
        f"problems.decontaminate=[{bench}]",
        "generation.explanations_for=unsolved",
        "build.validation_fraction=0.3",
        "build.truncated=not_chosen",
        "build.dedup=true",
    ]
    run = RunDir(generate_flow(str(QUICKSTART), overrides=settings_))
    doc = run.require_doc()
    rejected = read_table(run.problems_rejected, "problems_rejected").to_pylist()
    assert [(r["source_row"], r["reason"]) for r in rejected] == [
        (0, "contaminated"),
        (10, "contaminated"),
        (11, "contaminated"),
    ]
    assert all("bench.jsonl row" in r["detail"] for r in rejected)
    assert "row 2" in rejected[2]["detail"]  # the reworded one, found by an 8-gram it kept
    c = doc.problems.contamination
    assert c.contaminated == 3 and c.ngram == 8 and [b.questions for b in c.benchmarks] == [5]
    problems = read_table(run.problems, "problems").to_pylist()
    assert len(problems) == 16 and not {r["problem_id"] for r in rejected} & {p["problem_id"] for p in problems}
    # explanations only where no CoT was right, and the saving counted
    samples = read_table(run.samples, "samples").to_pylist()
    solved = {r["problem_id"] for r in samples if r["kind"] == "cot" and r["verdict"] == "correct"}
    explained = {r["problem_id"] for r in samples if r["kind"] == "explanation"}
    assert solved and explained  # both sides of the rule were exercised
    assert explained == {p["problem_id"] for p in problems} - solved
    e = doc.explanations_for
    assert e.setting == "unsolved" and e.problems == 16 and e.problems_skipped == len(solved)
    assert e.texts_skipped == 2 * len(solved) and e.texts_generated == 2 * len(explained)
    shards = doc.shards.values()
    assert sum(s.explanations_skipped_problems for s in shards) == len(solved)
    # the funnel, the split, the report and the card
    _check_reconciles(run, doc.build)
    assert [s.rule for s in doc.build.funnel.steps if s.applied] == ["truncated", "dedup"]
    for name in ("dpo", "sft", "grpo"):
        train = {r["problem_id"] for r in _read(run, name)}
        assert not train & {r["problem_id"] for r in _validation(run, name)}
    assert doc.build.validation_problems > 0
    assert "## Curation funnel" in (run.report / "report.md").read_text()
    release = stage(run.root, tmp_path / "release", "me/curated")
    assert "## Curation" in release.card and "split: validation" in release.card
    held = load_dataset(str(tmp_path / "release"), "grpo", split="validation")
    train = load_dataset(str(tmp_path / "release"), "grpo", split="train")
    assert held.num_rows == doc.build.validation_rows["grpo"] and train.num_rows == doc.build.rows["grpo"]


def test_decontaminate_alone_names_each_overlapping_row_and_exits_1(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    from .conftest import QUICKSTART

    bench = _benchmark(tmp_path / "bench.jsonl")
    problems = QUICKSTART.parent / "problems" / "math.jsonl"
    out = tmp_path / "found.jsonl"
    result = CliRunner().invoke(app, ["decontaminate", str(problems), "--against", str(bench), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "3 of 74 rows overlap" in result.output
    found = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(f["row"], f["benchmark_row"]) for f in found] == [(0, 0), (10, 1), (11, 2)]
    clean = CliRunner().invoke(
        app, ["decontaminate", str(bench), "--against", str(QUICKSTART.parent / "problems" / "gsm8k.jsonl")]
    )
    assert clean.exit_code == 0 and "0 of 5 rows overlap" in clean.output
