"""Labels users can trust: the final answer read as a peer would read it, one bad row never costs the
others, a gold that cannot be compared in time is quarantined, a user's mistake prints no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ProblemsConfig
from pipeline.problems import load_problems
from pipeline.verify import VerifierPool
from pipeline.verify_file import verify_file

from .conftest import run_quickstart_cli

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).parent / "data" / "peers"

# Where we and a peer disagree, and why (README: "Verifier").
DISAGREE = {
    # MATH's is_equiv compares strings, so a list in another order is wrong; we compare a list of
    # answers as a set, as Math-Verify does ("the roots are 4, 10, -2").
    "math_is_equiv/test_order/0": "a list in another order is the same set",
    "math_is_equiv/test_decimals/0": "a list in another order is the same set",
    # The gold is a sentence with two labelled boxes ("\boxed{1} papers and \boxed{2} bins"): a gold
    # is read by the same rule as an answer, and words between two boxes separate them.
    "math_verify/test_open_thoughts/test_open_thoughts/27": "words between boxes separate them",
}


def _peer_cases() -> list[dict]:
    cases = []
    for f in sorted(PEERS.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            if "\\boxed" not in case["prediction"]:
                if f.stem == "math_verify":
                    continue  # those test Math-Verify's reading of unboxed text
                case["prediction"] = "\\boxed{" + case["prediction"] + "}"
            cases.append(case)
    return cases


def test_peer_test_cases_agree_but_where_we_say_why(pool):
    cases = _peer_cases()
    verdicts = pool.verify_groups([(c["gold"], [c["prediction"]]) for c in cases])
    disagree = {
        c["id"]: f"gold {c['gold']!r}, read {v.extracted!r}: {v.verdict}, peer says {c['expected']}"
        for c, [v] in zip(cases, verdicts, strict=True)
        if (v.verdict == "correct") != c["expected"]
    }
    assert set(disagree) == set(DISAGREE), json.dumps(disagree, indent=1)
    assert len(cases) >= 170 and 1 - len(disagree) / len(cases) >= 0.98


def test_several_boxes_are_one_answer_the_text_around_them_decides(pool):
    groups = [
        (
            "1, -2",
            ["So $x = \\boxed{1}$ or $x = \\boxed{-2}$.", "We get $\\boxed{-2}$ and, after checking, $\\boxed{1}$."],
        ),
        ("\\{2,3,5\\}", ["The primes are $\\boxed{2}$, $\\boxed{3}$ and $\\boxed{5}$."]),
    ]
    [[roots, checked], [primes]] = pool.verify_groups(groups)
    assert roots.verdict == "correct" and roots.by == "boxes" and "2 boxes read together: 1 | -2" in roots.detail
    assert checked.verdict == "incorrect" and checked.by == "box" and checked.extracted == "1"  # words separate
    assert primes.verdict == "correct" and primes.extracted == "2, 3, 5"


def test_a_bad_row_is_that_rows_error_and_every_other_row_is_written(tmp_path):
    rows = [
        {"gold": "3", "prediction": "cut inside an emoji \udcff so \\boxed{3}"},
        {"gold": "4", "prediction": {"not": "text"}},
        {"gold": "5\x00", "prediction": "\\boxed{5}"},
        {"gold": "6", "prediction": "\\boxed{6}", "note": "x\ud83dy"},
        {"gold": "7", "prediction": "x" * 2_000_000 + "\\boxed{7}"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for out in (tmp_path / "out.jsonl", tmp_path / "out.parquet"):
        _, counts = verify_file(src, out)
        assert counts == {"error": 3, "correct": 2}
        got = pq.read_table(out).to_pylist() if out.suffix == ".parquet" else [json.loads(x) for x in out.open()]
        assert [r["verdict"] for r in got] == ["error", "error", "error", "correct", "correct"]
        assert "lone surrogate U+DCFF" in got[0]["verdict_detail"] and "\\udcff" in got[0]["verdict_detail"]
        assert got[1]["verdict_detail"] == "prediction is a dict, expected text"
        assert "NUL" in got[2]["verdict_detail"]
    # JSONL keeps every value as it was; Parquet stores U+FFFD where UTF-8 cannot hold it.
    assert next(json.loads(x) for x in (tmp_path / "out.jsonl").open())["prediction"] == rows[0]["prediction"]
    assert pq.read_table(tmp_path / "out.parquet").to_pylist()[3]["note"] == "x\ufffdy"


def test_an_engine_text_that_cannot_be_stored_is_that_samples_error():
    from pipeline.completions import Extra, Generated, RequestMeta, sample_rows
    from pipeline.config import config_from_dict
    from pipeline.engines import Completion, Request, Result, Sampling
    from pipeline.prompts import EXPO_V1

    cfg = config_from_dict({"output_dir": "/tmp/x", "model": {"path": "m"}, "problems": {"source": "p"}})
    problem = {"problem_id": "p1", "question": "Q", "answer": "3", "level": 1, "subject": None}
    request = Request("p1/cot", [1, 2], Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=0))
    texts = ["so \\boxed{3} \udcff", "so \\boxed{3}"]
    result = Result("p1/cot", 2, [Completion(t, [5], "stop", -1.0) for t in texts])
    gen = Generated(
        [problem], [request], {"p1/cot": RequestMeta(problem, "cot", EXPO_V1.messages("cot", "Q"))}, [result]
    )
    assert set(gen.unstorable) == {("p1/cot", 0)}
    rows = sample_rows(cfg, 0, gen, [[Extra(), Extra()]], "hf")
    assert [r["verdict"] for r in rows] == ["error", None]  # None: for the verifier stage
    assert rows[0]["completion"] == "so \\boxed{3} \ufffd" and "lone surrogate U+DCFF" in rows[0]["verdict_detail"]
    import schemas

    schemas.from_rows("samples_pending", rows)


@pytest.mark.slow
def test_a_problem_file_with_an_unstorable_question_runs(prefect_harness, tmp_path):
    from flows.generate import generate_flow
    from pipeline.store import RunDir, read_table

    src = tmp_path / "p.jsonl"
    rows = [
        {"problem": "What is $2+3$? \ud83d", "solution": "$\\boxed{5}$", "level": "Level 1", "type": "Algebra"},
        {"problem": "What is $2+3$?", "solution": "$\\boxed{5}$", "level": "Level 1", "type": "Algebra"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = [f"problems.source={src}", f"output_dir={tmp_path / 'run'}", "model.engine=hf", "generation.rollouts=2"]
    run = RunDir(generate_flow(str(ROOT / "data" / "quickstart.yaml"), settings))
    rejected = read_table(run.problems_rejected, "problems_rejected").to_pylist()
    assert [r["reason"] for r in rejected] == ["bad_text"] and "\\ud83d" in rejected[0]["raw"]
    assert read_table(run.samples, "samples").num_rows == 2 + 2


def _problems(tmp_path, rows, pool, **cfg):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_problems(ProblemsConfig(source=str(src), **cfg), pool.check_golds)


def test_problem_rows_quarantined_one_by_one(tmp_path, pool):
    base = {"level": "Level 1", "type": "Algebra", "unique_id": None}
    rows = [
        {**base, "problem": "What is 1+1? \ud83d", "solution": "\\boxed{2}", "unique_id": "emoji"},
        {**base, "problem": "Q", "solution": "\\boxed{\\frac{}}", "unique_id": "dup"},  # gold cannot parse
        {**base, "problem": "Q", "solution": "\\boxed{3}", "unique_id": "dup"},  # the valid copy stays
        {**base, "problem": "Q2", "solution": "\\boxed{4}", "unique_id": "dup"},  # a later copy does not
        {**base, "problem": "Q3", "solution": "\\boxed{5}", "unique_id": "lvl", "level": [1, 2]},
        {**base, "problem": "Q4", "solution": "\\boxed{6}", "unique_id": "subj", "type": {"a": 1}},
        {**base, "problem": "Q5", "solution": "\\boxed{7}", "unique_id": "ok"},
    ]
    ps = _problems(tmp_path, rows, pool)
    assert [(p["problem_id"], p["answer"]) for p in ps.problems] == [("dup", "3"), ("ok", "7")]
    reasons = {r["source_row"]: (r["reason"], r["detail"]) for r in ps.rejected}
    assert reasons[0][0] == "bad_text" and "lone surrogate U+D83D" in reasons[0][1]
    assert "\\ud83d" in next(r["raw"] for r in ps.rejected if r["source_row"] == 0)  # the original, escaped
    assert reasons[1][0] == "unparseable_gold" and reasons[3][0] == "duplicate_id"
    assert reasons[4] == ("bad_type", "level is a list, expected a number or text")
    assert reasons[5] == ("bad_type", "type is a dict, expected text")
    assert ps.summary()["filtered_out"] == 0
    import schemas

    schemas.from_rows("problems_rejected", ps.rejected)  # every quarantined row can be stored


def test_a_gold_whose_comparison_cannot_finish_is_quarantined(tmp_path):
    with VerifierPool(workers=1, timeout_s=1.0) as pool:
        checks = pool.check_golds(["(10^{10^{10}})!", "\\frac{1}{2}"])
    assert checks[0].reason == "gold_timeout" and "comparing the gold" in checks[0].detail
    assert checks[1].ok


@pytest.mark.slow
def test_a_burst_of_easy_items_meets_no_deadline():
    """A deadline counts an item's own work, never its wait: 10,000 distinct easy answers on 2
    workers, every one parsed by Math-Verify, and not one times out."""
    groups = [(f"\\frac{{{i}}}{{{i + 1}}}", [f"\\boxed{{{i}/{i + 1}}}"]) for i in range(1, 10_001)]
    with VerifierPool(workers=2, timeout_s=1.0) as pool:
        verdicts = pool.verify_groups(groups)
        assert pool.stats["parsed"] == 10_000 and pool.stats["timeouts"] == 0
    assert {v.verdict for [v] in verdicts} == {"correct"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "has no rows"),
        ([{"a": 1, "b": 2}], "cannot tell which columns hold the question"),
        ([{"problem": "", "solution": "\\boxed{1}", "level": "Level 1"}], "no valid problems"),
    ],
)
def test_a_users_mistake_inside_a_flow_prints_its_message_and_no_traceback(lines, message, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    status, output = run_quickstart_cli(tmp_path, src)
    assert status == 2, output
    assert message in output and "Traceback" not in output
