"""The answer-conditioned family: QuestA's cut, NuRL's hint checks, the conditioning column, the
tables built per conditioning, the comparison, and an ExPO config writing exactly what it wrote
before conditionings existed."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from pipeline import conditionings as cond
from pipeline.config import config_from_dict, load_config
from pipeline.errors import ConfigError
from pipeline.prompts import EXPO_V1
from pipeline.store import RunDir, read_table

from .conftest import ROOT
from .golden_engine import GOLDEN, content_digest, digests, run_golden

CONFIG = ROOT / "data" / "conditionings.yaml"
STEPS_FILE = ROOT / "data" / "problems" / "math-steps.jsonl"


# ----------------------------------------------------------------------------------------------
# QuestA's cut: a property over multi-step solutions


def _balanced(text: str) -> bool:
    dollars = len(re.findall(r"(?<!\\)\$", text))
    return (
        dollars % 2 == 0
        and text.count("\\[") == text.count("\\]")
        and text.count("\\(") == text.count("\\)")
        and text.count("\\begin{") == text.count("\\end{")
        and text.count("{") == text.count("}")
    )


_filler = st.sampled_from(
    [
        "We note that $3.5 + 1.2 = 4.7$.",
        "Let $a = \\frac{1}{2}$, e.g. half of one.",
        "Then\n\\[ b = a^2 + 0.75. \\]",
        "Next we write\n\\begin{align*}\nc &= 2.5 \\cdot 4. \\\\\nd &= c - 1.\n\\end{align*}",
        "So far, so good! The terms are $x_1$ and $x_2$.",
        "Consider $$y = \\sqrt{16}. $$ Therefore the root is known.",
        "The ratio is $\\tfrac{7}{3}$? Yes, it is.",
    ]
)


@st.composite
def solutions(draw):
    gold = str(draw(st.integers(100, 999)))  # never one of the fillers' numbers
    steps = draw(st.lists(_filler, min_size=1, max_size=6))
    reach = draw(st.sampled_from([f"Hence $x = {gold}$.", f"Adding up gives\n\\[ x = 2 + {int(gold) - 2}={gold}. \\]"]))
    box = draw(st.sampled_from([f"The answer is $\\boxed{{{gold}}}$.", f"So $x=\\boxed{{{gold}}}$."]))
    sep = draw(st.sampled_from([" ", "\n", "\n\n"]))
    return sep.join([*steps, reach, box]), gold, reach


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(solutions(), st.floats(0.05, 0.99))
def test_the_partial_solution_never_shows_the_answer(case, p):
    solution, gold, reach = case
    cut = cond.cut_solution(solution, p, gold)
    if cut is None:
        return
    assert solution.startswith(cut.text)
    assert "\\boxed" not in cut.text and gold not in cut.text
    assert reach.strip() not in cut.text  # the line or equation that reaches the answer
    assert _balanced(cut.text), cut.text  # never ends inside LaTeX
    assert len(cut.text) <= p * len(solution.strip())
    assert 0 < cut.shown <= p


def _gold_of(solution: str) -> str:
    start = solution.rindex("\\boxed{") + len("\\boxed{")
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        i += 1
    return solution[start : i - 1]


def test_the_shipped_multi_step_solutions_cut_on_steps_and_never_show_the_answer():
    rows = [json.loads(line) for line in STEPS_FILE.read_text().splitlines()]
    cuts = 0
    for r in rows:
        gold = _gold_of(r["solution"])
        for p in (0.25, 0.5, 0.75):
            cut = cond.cut_solution(r["solution"], p, gold)
            if cut is None:
                continue
            cuts += 1
            assert r["solution"].startswith(cut.text) and _balanced(cut.text)
            assert not cond.states_answer(cut.text, gold), (r["problem"], cut.text)
            rest = r["solution"][len(cut.text) :]
            assert rest[:1].isspace(), "a cut ends where a step ends"
    assert cuts >= len(rows)  # most solutions give a cut at some fraction
    # one-step solutions (the quickstart's) have nothing to show
    assert cond.cut_solution("Nine groups of seven make $9 \\times 7=\\boxed{63}$.", 0.5, "63") is None


def test_a_gold_inside_a_longer_number_is_not_the_answer():
    assert cond.states_answer("so 12 apples", "12") and cond.states_answer("$x=12$", "12")
    assert not cond.states_answer("so 120 apples and 3.12 kg", "12")
    assert cond.states_answer("it is $\\frac{11}{12}$", "\\frac{11}{12}")


# ----------------------------------------------------------------------------------------------
# NuRL's hint checks


@pytest.mark.parametrize(
    ("completion", "finish", "reason"),
    [
        ("Hint: think of the sum as tens plus ones.", "stop", None),
        ("Let me think. Hint: pair the terms from both ends.", "stop", None),
        ("Hint: the total is 68.", "stop", "states_answer"),
        ("Hint: work out $60+8=\\boxed{68}$.", "stop", "boxed"),
        ("Hint: since we are told the answer is correct, check the units.", "stop", "leak:told_answer"),
        ("Hint: The correct final answer is easy to reach.", "stop", "leak:hint_sentence"),
        ("Hint: add the tens first, then", "length", "truncated"),
        ("Hint:   ", "stop", "empty"),
        ("Hint: use that 680 is ten times 68 minus nothing.", "stop", "states_answer"),
        ("Hint: multiply 6 by 80, not 68 by 1.", "stop", "states_answer"),
        ("Hint: regroup 680 into 600 and 80.", "stop", None),
    ],
)
def test_hint_checks(completion, finish, reason):
    hint = cond.extract_hint(completion)
    assert cond.hint_problem(hint, "68", "What is $23+45$?", finish) == reason


# ----------------------------------------------------------------------------------------------
# The config


def _cfg(**extra):
    base = {"output_dir": "/tmp/x", "model": {"path": "m"}, "problems": {"source": "p.jsonl"}}
    return config_from_dict({**base, **extra})


def test_conditionings_default_to_expo_and_refuse_what_cannot_run():
    cfg = _cfg()
    assert [v.label for v in cond.variants(cfg)] == ["answer"] and cond.variants(cfg)[0].is_default
    cfg = _cfg(
        conditionings=[{"kind": "answer"}, {"kind": "partial_solution", "p": [0.5, 0.25]}, {"kind": "none", "n": 6}]
    )
    assert [(v.label, v.n, v.p) for v in cond.variants(cfg)] == [
        ("answer", 2, None),
        ("partial_solution@0.5", 2, 0.5),
        ("partial_solution@0.25", 2, 0.25),
        ("none", 6, None),
    ]
    bad = {
        "p applies to partial_solution only": [{"kind": "star", "p": 0.5}],
        "fraction in \\(0, 1\\)": [{"kind": "partial_solution", "p": 1.5}],
        "appear twice": [{"kind": "answer"}, {"kind": "answer"}],
        "build.positives 'answer' is not one of": [{"kind": "none"}],
    }
    for message, entries in bad.items():
        with pytest.raises(ConfigError, match=message):
            _cfg(conditionings=entries)
    with pytest.raises(ConfigError, match=r"unknown key .conditionings\.0\.temperature."):
        _cfg(conditionings=[{"kind": "answer", "temperature": 1}])


def test_explanations_for_and_scoring_kinds_name_conditionings():
    two = [{"kind": "answer"}, {"kind": "none", "n": 1}]
    cfg = _cfg(conditionings=two, generation={"explanations_for": {"answer": "unsolved"}})
    gen = cfg.generation
    assert gen.verifies_cots_first and gen.explanations_setting("answer") == "unsolved"
    assert gen.explanations_setting("none") == "all"  # names left out take all
    assert not _cfg(conditionings=two, generation={"explanations_for": {"none": "all"}}).generation.verifies_cots_first
    cfg = _cfg(conditionings=two, scoring={"kinds": ["cot", "answer"]})
    assert [cfg.scoring.scores(k) for k in ("cot", "answer", "none", "expert")] == [True, True, False, False]
    assert not _cfg(scoring={"enabled": False}).scoring.scores("cot")
    bad = {
        "explanations_for names nope, not a conditioning": {"generation": {"explanations_for": {"nope": "all"}}},
        "between 0 and 1": {"generation": {"explanations_for": {"answer": 1.5}}},
        "scoring.kinds names star": {"scoring": {"kinds": ["cot", "star"]}},
        "add 'answer' to scoring.kinds or use 'first'": {"scoring": {"kinds": ["cot", "none"]}},
    }
    for message, extra in bad.items():
        with pytest.raises(ConfigError, match=message):
            _cfg(conditionings=two, **extra)
    # ranking by first needs no score; a run without scoring ranks as before (missing scores fall back)
    _cfg(conditionings=two, scoring={"kinds": ["cot"]}, build={"best_explanation": "first"})
    _cfg(conditionings=two, scoring={"enabled": False, "kinds": ["cot"]})


def test_a_new_setting_at_its_default_leaves_shard_keys_as_they_were():
    from pipeline.manifest import output_config

    assert "kinds" not in output_config(_cfg())["scoring"]
    assert output_config(_cfg(scoring={"kinds": ["cot", "answer"]}))["scoring"]["kinds"] == ["cot", "answer"]


def test_every_conditioned_prompt_is_the_plain_prompt_plus_its_insert():
    cfg = load_config(CONFIG, ["output_dir=/tmp/x"])
    question, gold = "What is $23+45$?", "68"
    plain = EXPO_V1.messages("cot", question)[0]["content"]
    inserts = {
        "answer": "The correct final answer is 68. ",
        "star": "(68)\n",
        "abstract_hint": "Hint: add tens and ones\n",
        "none": "",
    }
    for v in cond.variants(cfg):
        if v.kind in inserts:
            text = v.insert(EXPO_V1).fill(answer=gold, hint="add tens and ones")
            assert text == inserts[v.kind]
            user = EXPO_V1.conversation(question, text)[0]["content"]
            assert user.replace(text, "", 1) == plain
    assert EXPO_V1.conversation(question, "The correct final answer is 68. ") == EXPO_V1.messages(
        "explanation", question, gold
    )


# ----------------------------------------------------------------------------------------------
# An existing ExPO config: the same tables as before conditionings existed


@pytest.fixture(scope="module")
def golden_run(prefect_harness, tmp_path_factory) -> RunDir:
    return RunDir(run_golden(tmp_path_factory.mktemp("golden") / "run"))


def test_an_expo_config_writes_the_tables_it_wrote_before(golden_run):
    """tests/data/golden-expo-v1.json holds the tables this run wrote at 71b1cd0 (samples schema 3),
    through the same deterministic engine: the training sets must have the same schema, metadata
    and values, and samples the same values in every column it had. (The recorded file bytes are of
    one part per shard; the builders now write one part per batch of shards, so a two-shard table's
    bytes are a layout apart, and only the content is compared.)"""
    golden = json.loads(GOLDEN.read_text())
    got = digests(golden_run.root, {"samples": ("conditioning",)})
    for name, want in golden["tables"].items():
        assert got[name]["rows"] == want["rows"] > 0, name
        assert got[name]["values"] == want["values"], name
        if name != "samples":
            assert got[name]["content"] == want["content"], name  # schema and metadata too
    samples = read_table(golden_run.samples, "samples")
    kinds = samples.column("kind").to_pylist()
    assert samples.column("conditioning").to_pylist() == ["answer" if k == "explanation" else None for k in kinds]


def test_a_run_dir_written_before_conditionings_still_reads_and_builds(golden_run, tmp_path):
    """Samples shards as expo-data wrote them before (schema 3, no conditioning column; their values
    are the recorded ones): reading fills the column, the builders cut the same training sets, and
    the report reads them."""
    from pipeline.build import build_datasets
    from pipeline.report import write_report

    old = RunDir(tmp_path / "old")
    shutil.copytree(golden_run.root, old.root)
    golden = json.loads(GOLDEN.read_text())
    v3 = {**schemas.SAMPLES.metadata, schemas.META_VERSION: b"3"}
    for f in sorted(old.samples.glob("*.parquet")):
        table = pq.read_table(f)
        meta = {**table.schema.metadata, **v3}
        table = table.drop_columns(["conditioning"]).replace_schema_metadata(meta)
        pq.write_table(table, f)
        assert schemas.version(pq.read_schema(f)) == 3
    samples = read_table(old.samples, "samples")
    assert samples.schema == schemas.SAMPLES
    assert set(samples.column("conditioning").drop_null().to_pylist()) == {"answer"}
    assert content_digest(samples, ("conditioning",), with_meta=False) == golden["tables"]["samples"]["values"]
    build_datasets(old, old.require_doc().config.build)
    for name in ("dpo", "dpo_expert", "dpo_self", "grpo", "sft"):
        assert content_digest(read_table(old.table(name), name)) == golden["tables"][name]["content"], name
    assert "## Conditionings compared" in write_report(old)


# ----------------------------------------------------------------------------------------------
# All five conditionings on the tiny model, through the generate flow


@pytest.fixture(scope="module")
def cond_run(prefect_harness, tmp_path_factory) -> RunDir:
    from flows.generate import generate_flow

    out = tmp_path_factory.mktemp("conditionings") / "run"
    settings = [
        f"output_dir={out}",
        "problems.limit=8",
        "generation.rollouts=2",
        "generation.explanations=2",
        "generation.sampling.max_tokens=48",
        "shard_size=8",
    ]
    return RunDir(generate_flow(str(CONFIG), settings))


def test_every_text_names_its_conditioning_and_saw_the_plain_prompt_plus_its_insert(cond_run):
    samples = read_table(cond_run.samples, "samples").to_pylist()
    problems = {p["problem_id"]: p for p in read_table(cond_run.problems, "problems").to_pylist()}
    hints = {h["problem_id"]: h for h in read_table(cond_run.folder("hints"), "hints").to_pylist()}
    labels = {v.label: v for v in cond.variants(cond_run.require_doc().config)}
    assert len({r["sample_id"] for r in samples}) == len(samples)
    seen = set()
    for r in samples:
        p = problems[r["problem_id"]]
        plain = EXPO_V1.messages("cot", p["question"])
        if r["kind"] == "cot":
            assert r["conditioning"] is None and r["prompt"] == plain and r["hint_leak"] is None
            continue
        v = labels[r["conditioning"]]  # every conditioned text names a configured conditioning
        seen.add(v.label)
        if v.kind == "partial_solution":
            insert = v.insert(EXPO_V1).fill(partial=cond.cut_solution(p["expert_solution"], v.p, p["answer"]).text)
        elif v.kind == "abstract_hint":
            assert hints[r["problem_id"]]["usable"]  # only usable hints are ever shown
            insert = v.insert(EXPO_V1).fill(hint=hints[r["problem_id"]]["hint"])
        else:
            insert = v.insert(EXPO_V1).fill(answer=p["answer"])
        assert r["prompt"] == EXPO_V1.conversation(p["question"], insert)
        assert r["hint_leak"] is not None and r["nll_mean"] is not None  # flagged and scored like explanations
    assert seen >= {"answer", "partial_solution@0.5", "star", "none"}
    # every problem got a hint request; usable exactly when the checks pass
    assert set(hints) == set(problems)
    for h in hints.values():
        assert h["usable"] == (h["reject_reason"] is None)
        if h["usable"]:
            assert cond.hint_problem(h["hint"], h["gold"], problems[h["problem_id"]]["question"], "stop") is None


def test_positives_come_from_one_conditioning_and_questa_gets_its_own_table(cond_run):
    samples = {r["sample_id"]: r for r in read_table(cond_run.samples, "samples").to_pylist()}
    for name in ("dpo", "sft"):
        rows = read_table(cond_run.table(name), name).to_pylist()
        key = "chosen_sample_id" if name == "dpo" else "sample_id"
        assert rows and {samples[r[key]]["conditioning"] for r in rows} == {"answer"}
    questa = read_table(cond_run.table("grpo_questa"), "grpo_questa").to_pylist()
    assert questa
    for row in questa:
        label = f"partial_solution@{row['augmentation_p']:g}"
        texts = sorted(
            (s for s in samples.values() if s["problem_id"] == row["problem_id"] and s["conditioning"] == label),
            key=lambda s: s["sample_index"],
        )
        assert row["rollouts"] == [s["completion"] for s in texts]
        assert row["prompt"] == texts[0]["prompt"]  # the augmented prompt the group was sampled from
        assert "## Hint. " + row["prompt_augmentation"] in row["prompt"][-1]["content"]
        assert not cond.states_answer(row["prompt_augmentation"], row["reward_model"]["ground_truth"])
        assert row["rollout_rewards"] == [float(s["verdict"] == "correct") for s in texts]
    # curriculum order within a problem: the larger fraction first
    by_problem = {}
    for row in questa:
        by_problem.setdefault(row["problem_id"], []).append(row["augmentation_p"])
    assert all(ps == sorted(ps, reverse=True) for ps in by_problem.values())


def test_the_comparison_is_in_run_json_the_report_and_the_card(cond_run, tmp_path):
    from pipeline.publish import stage

    doc = cond_run.require_doc()
    rows = [r for r in doc.conditionings.comparison if r.level == "all"]
    assert [r.conditioning for r in rows] == list(doc.conditionings.variants)  # as configured
    samples = read_table(cond_run.samples, "samples").to_pylist()
    cots = {}
    for s in samples:
        if s["kind"] == "cot":
            cots[s["problem_id"]] = cots.get(s["problem_id"], False) or s["verdict"] == "correct"
    for r in rows:
        mine = [s for s in samples if s["conditioning"] == r.conditioning]
        positives = [s for s in mine if s["verdict"] == "correct" and not s["hint_leak"]]
        assert r.texts == len(mine) and r.positives == len(positives)
        assert r.rescued == len({s["problem_id"] for s in positives if not cots[s["problem_id"]]})
        assert r.all_wrong == sum(not ok for ok in cots.values())
    answer = next(r for r in rows if r.conditioning == "answer")
    assert answer.texts_per_positive == pytest.approx(answer.texts / answer.positives, abs=0.01)
    hint_row = next(r for r in rows if r.conditioning == "abstract_hint")
    assert hint_row.hint_requests == doc.conditionings.hints.written == 8
    report = (cond_run.report / "report.md").read_text()
    assert "## Conditionings compared" in report and (cond_run.report / "conditionings.png").stat().st_size > 0
    from datasets import load_dataset

    release = stage(cond_run.root, tmp_path / "release", "someone/cond")
    for name in ("grpo_questa", "hints"):  # their own configs, loaded as a user loads them
        ds = load_dataset(str(tmp_path / "release"), name, split="train")
        assert ds.num_rows == len(read_table(cond_run.folder(name), name)) > 0
    card = release.card
    assert "## Conditionings compared" in card and "| partial_solution@0.5 | partial_solution | questa-v1 |" in card


# ----------------------------------------------------------------------------------------------
# Trainers on the conditioned tables


def test_verl_reads_questa_rows_and_scores_their_rollouts_as_we_label_them(cond_run, tiny_model, tmp_path):
    """verl's own RLHFDataset and reward manager (tests/verl_probe.py) on ``grpo_questa``: every row
    loads, verl renders the augmented prompt to the ids the texts were sampled after, and our scorer
    in verl's reward loop agrees with the stored rewards."""
    from transformers import AutoTokenizer

    from pipeline.prompts import encode_chat

    from .test_verl import run_verl_probe

    scores = run_verl_probe(cond_run.table("grpo_questa"), tiny_model, tmp_path / "scores.json")
    rows = read_table(cond_run.table("grpo_questa"), "grpo_questa").to_pylist()
    assert scores["rows"] == scores["batched_rows"] == len(rows)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert scores["prompt_ids"] == [encode_chat(tok, r["prompt"]) for r in rows]
    assert scores["custom_rollouts"] == [r["rollout_rewards"] for r in rows]
    assert scores["custom_gold"] == [1.0] * len(rows)


def test_grpo_trains_on_questa_rows_with_nurl_from_the_hints_table(cond_run, tiny_model, tmp_path):
    """TRL's GRPO on ``grpo_questa`` (its augmented prompts), with NuRL's rule reading the run's
    hints: train.json counts how often the rule fired."""
    from pipeline.train.config import train_config_from_dict
    from pipeline.train.run import train

    cfg = train_config_from_dict(
        {
            "kind": "grpo",
            "data": str(cond_run.root),
            "table": "grpo_questa",
            "model": str(tiny_model),
            "output_dir": str(tmp_path / "ckpt"),
            "max_steps": 2,
            "per_device_batch_size": 4,
            "learning_rate": 1e-5,
            "logging_steps": 1,
            "grpo": {"num_generations": 2, "max_completion_length": 16, "nurl": {"enabled": True}},
        }
    )
    doc = train(cfg)
    counts = doc["nurl"]
    # one generation batch per step: 4 rows, 2 groups of G=2
    assert counts["batches"] == doc["global_step"] == 2 and counts["groups"] == 4
    assert counts["fired"] + counts["no_hint"] == counts["all_wrong"] <= counts["groups"]
    assert doc["data"]["table"] == "grpo_questa"


def test_a_rebuild_takes_positives_from_another_conditioning_of_the_run_only(cond_run):
    from pipeline.rebuild import build_settings

    doc = cond_run.require_doc()
    assert build_settings(doc, ["build.positives=star"]).positives == "star"
    with pytest.raises(ConfigError, match="not a conditioning of this run"):
        build_settings(doc, ["build.positives=nope"])


def test_the_end_of_a_run_prints_the_comparison(cond_run):
    from flows.views import console, print_run_end

    with console.capture() as captured:
        print_run_end(str(cond_run.root), cond_run.require_doc())
    text = captured.get()
    assert "conditionings compared" in text and "grpo_questa/" in text and "hints/" in text
    for label in cond_run.require_doc().conditionings.variants:
        assert label in text


@pytest.mark.slow
def test_explanations_for_and_scoring_kinds_apply_per_conditioning(prefect_harness, tmp_path):
    """The testbed model (plain CoT right about a quarter of the time): ExPO's explanations only for
    the problems no CoT solved, the control for every problem; scores only for CoTs and ExPO's
    texts, so the control's texts and the expert solutions cost no pass."""
    from flows.generate import generate_flow

    settings_ = [
        f"output_dir={tmp_path / 'run'}",
        "problems.limit=8",
        "shard_size=8",
        "generation.rollouts=4",
        "generation.sampling.max_tokens=64",
        "conditionings=[{kind: answer}, {kind: none, n: 1}]",
        "generation.explanations_for={answer: unsolved}",
        "scoring.kinds=[cot, answer]",
    ]
    run = RunDir(generate_flow(str(ROOT / "data" / "testbed.yaml"), overrides=settings_))
    samples = read_table(run.samples, "samples").to_pylist()
    problems = {p["problem_id"] for p in read_table(run.problems, "problems").to_pylist()}
    solved = {r["problem_id"] for r in samples if r["kind"] == "cot" and r["verdict"] == "correct"}
    by = {c: [r for r in samples if r["conditioning"] == c] for c in ("answer", "none")}
    assert solved and solved != problems  # both sides of the rule were exercised
    assert {r["problem_id"] for r in by["answer"]} == problems - solved
    assert {r["problem_id"] for r in by["none"]} == problems  # not named: every problem
    assert all(r["nll_mean"] is not None for r in by["answer"])
    assert all(r["nll_mean"] is None and r["answer_logprob"] is None for r in by["none"])
    assert all(r["nll_mean"] is not None for r in samples if r["kind"] == "cot")
    assert read_table(run.expert_scores, "expert_scores").num_rows == 0
    doc = run.require_doc()
    e = doc.explanations_for
    assert e.setting == "answer: unsolved" and e.problems_skipped == len(solved)
    assert e.texts_skipped == e.texts_skipped_by_entry["answer"] == 2 * len(solved)
    assert set(e.texts_skipped_by_entry) == {"answer"}
    # one pass per ExPO text (the CoTs' nll comes from generation) plus the rejected sides' answers
    assert sum(s.score_passes for s in doc.shards.values()) <= len(by["answer"]) + len(problems)
    dpo = read_table(run.table("dpo"), "dpo").to_pylist()
    assert dpo and all(r["chosen_nll_mean"] is not None for r in dpo)  # positives from the scored conditioning
