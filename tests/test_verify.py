import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.answers import fast_verdict, normalise
from pipeline.errors import InputFileError
from pipeline.verify import VerifierPool
from pipeline.verify_file import verify_file

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "verifier_cases.jsonl").open()]


def test_case_file_is_big_and_covers_the_categories():
    assert len(CASES) >= 150
    cats = {c["category"] for c in CASES}
    for needed in [
        "fractions",
        "decimals",
        "percentages",
        "intervals",
        "sets",
        "equations",
        "units",
        "text",
        "no_answer",
        "several_boxes",
    ]:
        assert needed in cats
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("policy", ["boxed_or_final", "boxed"])
def test_labelled_cases(policy, pool):
    """Every case under both extraction policies (``expected_boxed`` where `boxed` differs), and
    each verdict says what the other policy gives where it reads otherwise."""
    key = "expected" if policy == "boxed_or_final" else "expected_boxed"
    with VerifierPool(workers=2, extraction=policy) as p:
        verdicts = p.verify_groups([(c["gold"], [c["prediction"]]) for c in CASES])
    wrong = [
        f"{c['id']}: gold {c['gold']!r}, got {v[0].verdict} ({v[0].extracted!r}), expected {c.get(key, c['expected'])}"
        for c, v in zip(CASES, verdicts, strict=True)
        if v[0].verdict != c.get(key, c["expected"])
    ]
    assert not wrong, "\n".join(wrong)
    other = "expected_boxed" if policy == "boxed_or_final" else "expected"
    for c, [v] in zip(CASES, verdicts, strict=True):
        theirs = c.get(other, c["expected"])
        assert (v.alt_verdict if v.alt_verdict is not None else v.verdict) == theirs, c["id"]


def test_parsed_answer_and_extraction_are_stored(pool):
    [[v]] = pool.verify_groups([("\\frac{1}{2}", ["so \\boxed{0.5}"])])
    assert v.verdict == "correct"
    assert v.extracted == "0.5"
    assert v.parsed is not None


def test_gold_is_parsed_once_per_group(pool):
    # One job per problem: many predictions, one gold. The stats count parsed predictions only.
    before = dict(pool.stats)
    golds = [("\\frac{3}{4}", ["\\boxed{0.75}", "\\boxed{3/4}", "\\boxed{\\frac{6}{8}}", "\\boxed{1}"])]
    [[a, b, c, d]] = pool.verify_groups(golds)
    assert [a.verdict, b.verdict, c.verdict, d.verdict] == ["correct", "correct", "correct", "incorrect"]
    assert pool.stats["parsed"] - before["parsed"] == 4


def test_fast_path_needs_no_sympy(pool):
    before = dict(pool.stats)
    [[v]] = pool.verify_groups([("\\dfrac{3}{4}", ["\\boxed{\\frac{3}{4}}."])])
    assert v.verdict == "correct"
    assert pool.stats["fast_path"] == before["fast_path"] + 1
    assert pool.stats["parsed"] == before["parsed"]


def test_normalise_is_conservative():
    assert fast_verdict("\\left(1, 2\\right)", "(1,2)") is True
    assert fast_verdict("5\\,000", "5000") is True
    assert fast_verdict("[1,2)", "[1,2]") is not True
    assert fast_verdict("12", "1,2") is not True
    assert normalise("$x = 3$.") == "x=3"


def test_hostile_answer_times_out_within_deadline():
    with VerifierPool(workers=1, timeout_s=1.0) as pool:
        pool.verify_groups([("1", ["\\boxed{1}"])])  # warm up: start the worker
        [[v, ok]] = pool.verify_groups([("5", ["\\boxed{(10^{10^{10}})!}", "\\boxed{5.0}"])])
        assert pool.stats["restarts"] == 0  # the worker's own timer stopped it: no kill needed
    # A factorial of 10^10^10 never finishes: a verdict at all means the deadline fired.
    assert v.verdict == "timeout" and v.detail == "exceeded 1 s"
    assert ok.verdict == "correct"  # the item after a timeout is still verified


def test_hard_kill_when_the_worker_does_not_answer():
    # Soft timer longer than the hard deadline: the parent must kill the worker and carry on.
    with VerifierPool(workers=1, timeout_s=1.0, soft_timeout_s=60) as pool:
        pool.verify_groups([("1", ["\\boxed{1}"])])
        [[v, ok], [other]] = pool.verify_groups(
            [("5", ["\\boxed{(10^{10^{10}})!}", "\\boxed{5}"]), ("2", ["\\boxed{3}"])]
        )
        assert pool.stats["restarts"] == 1
    assert v.verdict == "timeout" and "killed" in v.detail
    assert ok.verdict == "correct"
    assert other.verdict == "incorrect"


def test_deadlines_hold_with_every_worker_busy():
    hostile = "\\boxed{(10^{10^{10}})!}"
    with VerifierPool(workers=2, timeout_s=1.0) as pool:
        results = pool.verify_groups([("7", [hostile, "\\boxed{7}"]) for _ in range(4)])
    assert [r[0].verdict for r in results] == ["timeout"] * 4
    assert [r[1].verdict for r in results] == ["correct"] * 4


def test_check_golds(pool):
    checks = pool.check_golds(["\\frac{1}{2}", "\\text{Evelyn}", "", "{{{{"])
    assert [c.ok for c in checks] == [True, True, False, False]
    assert checks[2].reason == "unparseable_gold"


def test_no_answer_and_what_the_other_policy_reads(pool):
    [[none, empty, stated]] = pool.verify_groups([("3", ["we get 3", "", "the answer is 3"])])
    assert none.verdict == "no_answer" and empty.verdict == "no_answer" and none.by is None
    assert none.alt_verdict is None  # the other policy reads nothing either
    assert stated.verdict == "correct" and stated.by == "statement" and stated.alt_verdict == "no_answer"
    with VerifierPool(workers=1, extraction="boxed") as boxed:
        [[v]] = boxed.verify_groups([("3", ["the answer is 3"])])
    assert v.verdict == "no_answer" and v.alt_verdict == "correct"


def test_answers_that_are_python_code_are_never_executed(pool, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    [[v]] = pool.verify_groups([("1", [f"\\boxed{{{code}}}"])])
    assert v.verdict in ("incorrect", "error")
    assert not marker.exists()


def test_verify_file_jsonl(tmp_path):
    src = tmp_path / "preds.jsonl"
    rows = [
        {"id": 1, "gold": "\\frac{1}{2}", "prediction": "so \\boxed{0.5}"},
        {"id": 2, "gold": "3", "prediction": "it is 4, \\boxed{4}"},
        {"id": 3, "gold": "3", "prediction": "no box"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, counts = verify_file(src)
    assert out == tmp_path / "preds.verified.jsonl"
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["verdict"] for r in back] == ["correct", "incorrect", "no_answer"]
    assert back[0]["extracted"] == "0.5" and back[0]["id"] == 1
    assert counts == {"correct": 1, "incorrect": 1, "no_answer": 1}


def test_verify_file_parquet_and_custom_keys(tmp_path):
    src = tmp_path / "preds.parquet"
    pq.write_table(pa.table({"answer": ["2", "x=3"], "output": ["\\boxed{2}", "\\boxed{3}"]}), src)
    out, _ = verify_file(src, tmp_path / "out.parquet", gold_key="answer", prediction_key="output")
    table = pq.read_table(out)
    assert table.column("verdict").to_pylist() == ["correct", "correct"]
    assert {"answer", "output", "verdict", "extracted", "parsed_answer", "verdict_detail"} <= set(table.column_names)


def test_verify_file_names_the_row_and_field(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"gold": "1", "prediction": "\\\\boxed{1}"}\n{"gold": "2"}\n')
    with pytest.raises(InputFileError, match=r"row 2 has no 'prediction' field"):
        verify_file(src)
    src.write_text('{"gold": "1", "prediction": "x"}\nnot json\n')
    with pytest.raises(InputFileError, match=r"bad.jsonl:2: not a JSON object"):
        verify_file(src)


def test_verify_cli(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"gold": "7", "prediction": "\\boxed{7}"}) + "\n")
    result = CliRunner().invoke(app, ["verify", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.output
    assert "correct: 1" in result.output
    assert json.loads((tmp_path / "o.jsonl").read_text())["verdict"] == "correct"
    missing = CliRunner().invoke(app, ["verify", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_the_literal_fast_path_agrees_with_math_verify():
    """Integers, integer sets and integer-bounded intervals are settled without sympy, both ways;
    every such verdict must be Math-Verify's own."""
    import random

    from math_verify import parse, verify

    rng = random.Random(0)
    pairs = []
    for _ in range(40):
        a, b = rng.randint(-20, 20), rng.randint(-20, 20)
        pairs += [(str(a), str(b)), (str(a), f"0{abs(a)}" if a >= 0 else str(a))]
        pairs += [(f"\\{{{a},{b}\\}}", f"\\{{{b}, {a}\\}}"), (f"\\{{{a},{b}\\}}", f"\\{{{a},{b + 1}\\}}")]
        lo, hi = sorted((a, b + 41))
        pairs += [(f"[{lo},{hi})", f"[{lo}, {hi})"), (f"[{lo},{hi})", f"({lo},{hi}]"), (f"[{lo},{hi}]", f"[{lo},{hi}]")]
    settled = 0
    for gold, pred in pairs:
        fast = fast_verdict(gold, pred)
        if fast is None:
            continue
        settled += 1
        expected = bool(verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{pred}}}")))
        assert fast == expected, (gold, pred)
    assert settled >= 250
