"""The experiment: the testbed has ExPO's premise, the arms' derived tables say what they claim, and the
command, on a cut-down config, shows the effect: ExP-SFT above the base model, swapped DPO not."""

import json
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import schemas
from pipeline.errors import ConfigError
from pipeline.experiment.arms import ARMS, swapped_pairs, wrong_cots
from pipeline.experiment.config import ARM_NAMES, SEEDED_DEFAULT, load_experiment_config
from pipeline.experiment.run import curve_steps
from pipeline.experiment.summary import spread
from pipeline.store import read_table
from pipeline.tiny.testbed import DEFAULT_TESTBED_MODEL_DIR, chain_problem, split_problems
from pipeline.tiny.testbed import TestbedRecipe as Recipe  # not a test class

from .conftest import DATA

EXPERIMENT = DATA / "experiment.yaml"


def test_testbed_problems_fail_the_plain_procedure_by_construction():
    rng = random.Random(0)
    for _ in range(200):
        p = chain_problem(rng)
        full, short = p.own_solution(), p.own_solution(complete=False)
        assert full.endswith(f"\\boxed{{{p.answer}}}.")
        assert not short.endswith(f"\\boxed{{{p.answer}}}.")  # every addend is 1-9: one step short is wrong
        assert p.expert_solution().endswith(f"\\boxed{{{p.answer}}}$.") and "last digit" not in p.expert_solution()


def test_shipped_testbed_files_match_the_recipe_and_are_disjoint():
    heldout, train = split_problems()
    for name, problems in (("testbed-heldout.jsonl", heldout), ("testbed-train.jsonl", train)):
        rows = [json.loads(line) for line in (DATA / "problems" / name).read_text().splitlines()]
        assert [r["problem"] for r in rows] == [p.question for p in problems]
    assert not {p.question for p in heldout} & {p.question for p in train}
    info = json.loads((DEFAULT_TESTBED_MODEL_DIR / "build_info.json").read_text())
    from dataclasses import asdict

    assert info["recipe_version"] == Recipe.recipe_version and info["recipe"] == asdict(Recipe())
    # The premise, as measured when the model was built: hinted nearly always right, plain rarely.
    assert info["metrics"]["explanation_accuracy"] > 0.8 and 0.05 < info["metrics"]["cot_accuracy"] < 0.45


def test_config_names_every_arm_and_refuses_keys_it_sets(tmp_path):
    cfg = load_experiment_config(EXPERIMENT)
    assert tuple(cfg.arms) == ARM_NAMES == tuple(ARMS)
    assert all(cfg.seeds_of(a) == [0, 1, 2] for a in ARM_NAMES)  # the shipped config: every arm, 3 seeds
    default = load_experiment_config(EXPERIMENT, ["seeded_arms=[base, exp_sft, exp_dpo, expert_dpo]"])
    assert default.seeds_of("exp_dpo") == [0, 1, 2] and default.seeds_of("grpo") == [0]
    assert set(SEEDED_DEFAULT) == {"base", "exp_sft", "exp_dpo", "expert_dpo", "swapped_dpo", "sft_wrong"}
    bad = tmp_path / "e.yaml"
    body = {"output_dir": "x", "generate": str(DATA / "testbed.yaml"), "eval": {"problems": {"source": "p.jsonl"}}}
    bad.write_text(json.dumps({**body, "train": {"max_steps": 4, "learning_rate": 1e-4, "seed": 3}}))
    with pytest.raises(ConfigError, match=r"train\.seed is set by the experiment"):
        load_experiment_config(bad)
    bad.write_text(json.dumps({**body, "train": {"learning_rate": 1e-4}}))
    with pytest.raises(ConfigError, match="max_steps must be set"):
        load_experiment_config(bad)
    # An arm's own keys merge in at any depth: the rest of its section stays the shared one.
    deep = load_experiment_config(EXPERIMENT, ["arm_train.exp_grpo={grpo: {expo: {beta: 0.2}}}"])
    tc = deep.train_config("exp_grpo", "grpo", "grpo", ".", ".", tmp_path, 0)
    assert tc.grpo.expo.beta == 0.2 and tc.grpo.num_generations == 4 and tc.learning_rate == 1e-4
    assert deep.train_config("exp_dpo", "dpo", "dpo_expert", ".", ".", tmp_path, 1).table == "dpo_expert"
    assert curve_steps(40, 4) == [10, 20, 30] and curve_steps(1, 4) == []
    assert spread([0.2, 0.4, 0.3])["mean"] == 0.3 and spread([0.5])["std"] == 0.0 and spread([]) is None


@pytest.mark.slow
def test_derived_tables_swap_pairs_and_keep_only_wrong_cots(quickstart_run):
    dpo = read_table(quickstart_run.table("dpo"), "dpo")
    swapped = swapped_pairs(quickstart_run)
    schemas.check(swapped.schema, "dpo")
    assert swapped["chosen"].to_pylist() == dpo["rejected"].to_pylist()
    assert swapped["rejected"].to_pylist() == dpo["chosen"].to_pylist()
    assert swapped["chosen_nll_mean"].to_pylist() == dpo["rejected_nll_mean"].to_pylist()
    wrong = wrong_cots(quickstart_run)
    schemas.check(wrong.schema, "sft")
    samples = read_table(quickstart_run.samples, "samples")
    expected = samples.filter(
        pc.and_(
            pc.and_(pc.equal(samples["kind"], "cot"), pc.equal(samples["verdict"], "incorrect")),
            pc.equal(samples["finish_reason"], "stop"),
        )
    )
    assert sorted(wrong["sample_id"].to_pylist()) == sorted(expected["sample_id"].to_pylist())
    assert wrong.num_rows > 0 and all(m[0]["role"] == "assistant" for m in wrong["completion"].to_pylist())
    assert isinstance(wrong, pa.Table)


def test_the_experiment_refuses_held_out_problems_it_trains_on(tmp_path):
    from pipeline.experiment.run import Experiment

    cfg = load_experiment_config(
        EXPERIMENT,
        [f"output_dir={tmp_path / 'x'}", f"eval.problems.source={DATA / 'problems' / 'testbed-train.jsonl'}"],
    )
    never = lambda *a, **k: pytest.fail("nothing may run before the held-out check")  # noqa: E731
    with pytest.raises(ConfigError, match="overlap the training problems"):
        Experiment(cfg, generate=never, train=never, evaluate=never, online=never).execute()


def test_held_out_check_compares_normalised_questions():
    from pipeline.contamination import index_problems, overlapping

    train = [{"problem_id": "t1", "question": "Start with 6.  Add 3,\nthen 4."}, {"problem_id": "t2", "question": "x"}]
    heldout = [{"problem_id": "h1", "question": "start with 6. add 3, then 4."}, {"problem_id": "h2", "question": "y"}]
    found = overlapping(index_problems(train, "train"), heldout)
    assert [(p["problem_id"], m.entry.problem_id) for p, m in found] == [("h1", "t1")]


class _Scripted:
    """Training and evaluation that record their calls and write what the real ones write."""

    def __init__(self, run_dir):
        self.run_dir, self.calls = run_dir, []

    def generate(self, run_cfg):
        self.calls.append(("generate", run_cfg.output_dir))
        return str(self.run_dir.root)

    def train(self, tcfg, rows=None, rows_doc=None, callbacks=()):
        from pathlib import Path

        self.calls.append(("train", tcfg.table, tcfg.seed, rows is not None))
        out = Path(tcfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"global_step": tcfg.max_steps, "train_loss": 0.5}
        (out / "train.json").write_text(json.dumps(doc))
        return doc

    def evaluate(self, path, spec):
        self.calls.append(("eval", path, spec.seed))
        return {"overall": {"problems": 3, "pass@1": 0.1 * (spec.seed + 1), "pass@4": 0.5}}

    def online(self, ocfg):
        raise AssertionError("not in this test")


@pytest.mark.slow
def test_small_arms_are_reported_not_dropped_and_a_rerun_redoes_nothing(quickstart_run, tmp_path):
    from pipeline.experiment.run import STATE, Experiment
    from pipeline.store import parquet_rows

    self_rows = parquet_rows(quickstart_run.table("dpo_self"))
    assert parquet_rows(quickstart_run.table("sft")) > self_rows + 1
    overrides = [
        f"output_dir={tmp_path / 'exp'}",
        "arms=[base, exp_sft, self_dpo, swapped_dpo]",
        "seeds=[3, 4]",
        "seeded_arms=[base, exp_sft]",
        f"min_rows={self_rows + 1}",
    ]
    cfg = load_experiment_config(EXPERIMENT, overrides)
    steps = _Scripted(quickstart_run)
    state = Experiment(cfg, steps.generate, steps.train, steps.evaluate, steps.online).execute()
    trained = [c for c in steps.calls if c[0] == "train"]
    # exp_sft with both seeds from the run's own table; swapped_dpo once, from rows derived in memory.
    assert trained == [("train", "sft", 3, False), ("train", "sft", 4, False), ("train", "dpo", 3, True)]
    arms = state["arms"]
    assert list(arms) == ["base", "exp_sft", "self_dpo", "swapped_dpo"]
    assert arms["base"]["pass@1"]["values"] == [0.4, 0.5] and arms["base"]["pass@1"]["n"] == 2
    assert arms["exp_sft"]["pass@1"]["mean"] == 0.45 and arms["exp_sft"]["pass@4"]["std"] == 0.0
    small = arms["self_dpo"]
    assert small["rows"] == self_rows and small["trained"] is False and small["pass@1"] is None
    assert "below min_rows" in small["reason"]
    # The scripted trainer saves no snapshots along the way: the curve is the final checkpoint alone.
    assert [p["step"] for p in arms["exp_sft"]["curve"]] == [40]
    assert json.loads((tmp_path / "exp" / STATE).read_text())["status"] == "complete"
    again = _Scripted(quickstart_run)
    state2 = Experiment(cfg, again.generate, again.train, again.evaluate, again.online).execute()
    assert [c[0] for c in again.calls] == ["generate"] and state2["arms"] == arms


@pytest.mark.slow
def test_experiment_command_trains_exp_sft_above_base_and_swapped_dpo_not(tmp_path):
    """The command end to end on a cut-down config (64 training problems, 48 held-out, one seed, 20
    steps), as a user starts it (its own process and temporary Prefect server): generation, the run's
    tables, two TRL trainers, held-out evaluation, the table and plot."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "exp"
    args = ["experiment", str(EXPERIMENT), "--set", f"output_dir={out}", "--set", "arms=[base, exp_sft, swapped_dpo]"]
    args += ["--set", "seeds=[0]", "--set", "generate_set=[problems.limit=64]", "--set", "eval.problems.limit=48"]
    args += ["--set", "train.max_steps=20", "--set", "curve_points=2"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    cmd = [str(Path(sys.executable).parent / "expo-data"), *args]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    state = json.loads((out / "experiment.json").read_text())
    arms = state["arms"]
    base, sft, swapped = (arms[a]["pass@1"]["mean"] for a in ("base", "exp_sft", "swapped_dpo"))
    assert 0.1 <= base <= 0.4, arms["base"]  # the testbed's premise: the plain CoT solves some
    assert sft >= base + 0.2, (base, sft)
    assert swapped <= base, (base, swapped)
    assert [p["step"] for p in arms["exp_sft"]["curve"]] == [10, 20]
    assert arms["swapped_dpo"]["positives"]["nll_mean"] is not None and arms["exp_sft"]["rows"] > 0
    assert state["heldout_problems"] == 48 and (out / "curves.png").stat().st_size > 0
    assert "| exp_sft | 1 |" in output and "exp_sft seed 0: pass@1" in output
    train_doc = json.loads((out / "arms" / "swapped_dpo" / "seed-0" / "checkpoint" / "train.json").read_text())
    assert train_doc["data"]["transform"] == "swapped_dpo"
