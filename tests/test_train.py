"""Training configs, data sources, pass@k, the round loop; and on the real path: each TRL trainer
from a quickstart run dir to a checkpoint both engines generate from, and two online rounds."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.evaluate import EvalSpec, pass_at_k
from pipeline.store import RunDir
from pipeline.train.config import load_train_config

from .conftest import flow_run_logs

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


# ----------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (3, 1, 3, 1.0),  # n - c < k: every draw of 3 includes the correct one
        (8, 1, 4, 1 - 35 / 70),  # 1 - C(7,4)/C(8,4)
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_for_large_n():
    n, c, k = 200, 17, 25
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 5, 1), (4, 1, 0)])
def test_pass_at_k_refuses_undefined_cases(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_eval_spec_refuses_k_above_n():
    with pytest.raises(ConfigError, match=r"every k must be in 1\.\.samples"):
        EvalSpec(samples=4, ks=(1, 8))


# ----------------------------------------------------------------------------------------------
# Configs


def _base(kind="dpo", **kw):
    return {"kind": kind, "data": "runs/x", "model": "data/tiny-model", "output_dir": "runs/out", **kw}


def test_train_defaults_follow_the_method():
    cfg = load_train_config(None, base=_base("grpo"))
    assert cfg.dpo.beta == 0.1
    assert cfg.grpo.expo.beta == 0.04 and cfg.grpo.kl_beta == 0.0  # separate coefficients
    assert cfg.grpo.expo.apply_to == "all" and cfg.grpo.expo.source == "explanation"
    assert cfg.data_table == "grpo"
    assert Path(cfg.output_dir).is_absolute()


def test_train_config_file_paths_are_relative_to_the_file(tmp_path):
    f = tmp_path / "cfgs" / "t.yaml"
    f.parent.mkdir()
    f.write_text("kind: sft\ndata: ../run\nmodel: ../model\noutput_dir: ../out\nmax_steps: 3\n")
    cfg = load_train_config(f, ["learning_rate=0.001"])
    assert cfg.data == str(tmp_path / "run") and cfg.output_dir == str(tmp_path / "out")
    assert cfg.max_steps == 3 and cfg.learning_rate == 0.001


def test_train_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown key 'grpo.expo.bta'.*did you mean 'grpo.expo.beta'"):
        load_train_config(None, ["grpo.expo.bta=0.1"], base=_base("grpo"))
    with pytest.raises(ConfigError, match=r"dpo trains on dpo \| dpo_expert \| dpo_self"):
        load_train_config(None, ["table=sft"], base=_base("dpo"))
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_train_config(None, base={"kind": "dpo", "model": "m", "output_dir": "o"})


def test_grpo_batch_must_hold_whole_groups():
    from pipeline.train.run import _check_grpo_batch, grpo_steps_per_generation

    given = ["per_device_batch_size=6", "grpo.num_generations=4", "grpo.steps_per_generation=1"]
    with pytest.raises(ConfigError, match=r"6\) x steps per generation \(1\) = 6 completions"):
        _check_grpo_batch(load_train_config(None, given, base=_base("grpo")))
    # Unset, the steps are the fewest that hold whole groups (a multiple of gradient accumulation).
    assert grpo_steps_per_generation(load_train_config(None, given[:2], base=_base("grpo"))) == 2
    assert grpo_steps_per_generation(load_train_config(None, [], base=_base("grpo"))) == 2  # 4 x 2 = 8 = G
    accumulate = ["per_device_batch_size=3", "grpo.num_generations=4", "gradient_accumulation_steps=2"]
    assert grpo_steps_per_generation(load_train_config(None, accumulate, base=_base("grpo"))) == 4


# ----------------------------------------------------------------------------------------------
# Data sources


@pytest.mark.slow
def test_load_table_rejects_what_it_cannot_train_on(quickstart_run, tmp_path):
    from pipeline.train.data import TrainDataError, load_table

    with pytest.raises(TrainDataError, match="neither a run dir"):
        load_table(str(tmp_path / "nothing"), "dpo")
    empty = tmp_path / "run"
    (empty / "dpo").mkdir(parents=True)
    (empty / "run.json").write_text("{}")
    with pytest.raises(TrainDataError, match="no rows in table 'dpo'"):
        load_table(str(empty), "dpo")
    # An sft shard in the dpo folder: caught by the schema check, naming the file.
    shutil.copy(next((quickstart_run.root / "sft").glob("*.parquet")), empty / "dpo" / "part-0.parquet")
    from schemas import SchemaError

    with pytest.raises(SchemaError, match=r"expected table 'dpo' in .*part-0.parquet, found table 'sft'"):
        load_table(str(empty), "dpo")


def _hub_layout(run_root: Path, dest: Path, tables: list[str]) -> Path:
    """A folder laid out like a dataset repo on the Hub: one folder per config, declared in the
    card's YAML `configs:`."""
    lines = ["---", "configs:"]
    for t in tables:
        (dest / t).mkdir(parents=True)
        for f in (run_root / t).glob("*.parquet"):
            shutil.copy(f, dest / t / f.name)
        lines += [f"- config_name: {t}", "  data_files:", "  - split: train", f"    path: {t}/*.parquet"]
    (dest / "README.md").write_text("\n".join([*lines, "---", "", "# a dataset"]) + "\n")
    return dest


@pytest.mark.slow
def test_load_table_reads_a_hub_style_dataset_folder(quickstart_run, tmp_path):
    from pipeline.train.data import TrainDataError, load_table

    repo = _hub_layout(quickstart_run.root, tmp_path / "repo", ["dpo", "grpo"])
    ds = load_table(str(repo), "dpo")
    assert ds.num_rows == sum(1 for _ in ds) > 0 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    with pytest.raises(TrainDataError, match="no dataset config 'sft'"):
        load_table(str(repo), "sft")


# ----------------------------------------------------------------------------------------------
# The round loop's bookkeeping, with scripted steps


def _online_config(tmp_path, rounds=2, eval_=True):
    from pipeline.online import load_online_config

    f = tmp_path / "online.yaml"
    body = {
        "name": "t",
        "output_dir": str(tmp_path / "loop"),
        "rounds": rounds,
        "generate": str(DATA / "quickstart.yaml"),
        "train": {"max_steps": 1},
    }
    if eval_:
        body["eval"] = {"problems": {"source": str(DATA / "problems" / "gsm8k.jsonl")}, "samples": 2, "k": [1, 2]}
    f.write_text(json.dumps(body))
    return load_online_config(f)


class _Scripted:
    """Steps that write what the real ones write (run.json, train.json, an eval result)."""

    def __init__(self, fail_train_round=None, pairs=3):
        self.calls: list[tuple] = []
        self.fail_train_round = fail_train_round
        self.pairs = pairs

    def generate(self, cfg):
        from pipeline.store import RunDir
        from schemas.run_doc import RunDoc, TableEntry

        run = RunDir(cfg.output_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        tables = {"dpo": TableEntry(rows=self.pairs, files={})}
        run.write_doc(
            RunDoc(expo_data_version="0", name=cfg.name, status="complete", created="-", config=cfg, tables=tables)
        )
        self.calls.append(("generate", cfg.model.path, cfg.generation.sampling.seed))
        return str(run.root)

    def train(self, tcfg):
        r = int(Path(tcfg.output_dir).parent.name.split("-")[1])
        self.calls.append(("train", tcfg.model, tcfg.data))
        out = Path(tcfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if r == self.fail_train_round:
            raise RuntimeError("killed mid-training")
        doc = {"train_loss": 0.5, "global_step": 1}
        (out / "train.json").write_text(json.dumps(doc))
        return doc

    def evaluate(self, policy, path):
        self.calls.append(("eval", policy))
        return {"model": policy, "overall": {"problems": 2, "pass@1": 0.5}, "by_level": {"unknown": {}}}


def test_rounds_chain_policies_and_resume_at_round_granularity(tmp_path, monkeypatch):
    from pipeline import online

    monkeypatch.setattr(online, "_check_held_out", lambda run, ev: None)
    cfg = _online_config(tmp_path)
    steps = _Scripted(fail_train_round=2)
    loop = online.OnlineLoop(cfg, steps.generate, steps.train, steps.evaluate)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        loop.run()
    ckpt1 = str((tmp_path / "loop" / "round-01" / "checkpoint").resolve())
    initial = str(DATA / "tiny-model")
    assert [c[:2] for c in steps.calls] == [
        ("eval", initial),
        ("generate", initial),
        ("train", initial),
        ("eval", ckpt1),
        ("generate", ckpt1),  # round 2 samples from round 1's checkpoint
        ("train", ckpt1),
    ]
    assert [c[2] for c in steps.calls if c[0] == "generate"] == [0, 1]  # a seed per round
    # Rerun after the crash: round 1 and both finished evals are not redone.
    steps2 = _Scripted()
    state = online.OnlineLoop(cfg, steps2.generate, steps2.train, steps2.evaluate).run()
    ckpt2 = str((tmp_path / "loop" / "round-02" / "checkpoint").resolve())
    assert [c[:2] for c in steps2.calls] == [("generate", ckpt1), ("train", ckpt1), ("eval", ckpt2)]
    assert state["status"] == "complete"
    assert [r["round"] for r in state["summary"]] == [0, 1, 2]
    assert state["rounds"][1]["sampled_with"] == ckpt1
    # A third run does nothing; a changed config is refused with the key named.
    steps3 = _Scripted()
    online.OnlineLoop(cfg, steps3.generate, steps3.train, steps3.evaluate).run()
    assert steps3.calls == []
    changed = cfg.model_copy(update={"generate_set": ["generation.rollouts=2"]})
    with pytest.raises(ConfigError, match="changed: generate_set"):
        online.OnlineLoop(changed, steps3.generate, steps3.train, steps3.evaluate).run()


def test_a_policy_path_reaches_the_next_round_as_it_is(tmp_path, monkeypatch):
    """Round configs are derived as typed values: a checkpoint path with ' #' (a YAML comment when
    read back from a --set string) reaches the generate step whole, and run.json records it."""
    from pipeline import online

    monkeypatch.setattr(online, "_check_held_out", lambda run, ev: None)
    odd = tmp_path / "runs" / "a #1"
    cfg = online.load_online_config(_write_online(tmp_path, odd))
    policy = str(odd / "ckpt")
    assert online.round_run_config(cfg, 2, policy).model.path == policy
    steps = _Scripted()
    state = online.OnlineLoop(cfg, steps.generate, steps.train, steps.evaluate).run()
    ckpt1 = str((odd / "loop" / "round-01" / "checkpoint").resolve())
    assert state["rounds"][1]["policy_in"] == ckpt1 == state["rounds"][1]["sampled_with"]
    # The same path typed on the command line is a path, not YAML.
    from pipeline.config import load_config

    assert load_config(DATA / "quickstart.yaml", [f"model.path={policy}"]).model.path == policy


def _write_online(tmp_path, root):
    f = tmp_path / "online-odd.yaml"
    body = {"name": "t", "output_dir": str(root / "loop"), "rounds": 2, "generate": str(DATA / "quickstart.yaml")}
    f.write_text(json.dumps({**body, "train": {"max_steps": 1}}))
    return f


def test_a_round_without_pairs_carries_the_policy_over(tmp_path, monkeypatch):
    from pipeline import online

    cfg = _online_config(tmp_path, rounds=1, eval_=False)
    steps = _Scripted(pairs=0)
    state = online.OnlineLoop(cfg, steps.generate, steps.train, steps.evaluate).run()
    rec = state["rounds"][0]
    assert rec["trained"] is False and "no DPO pairs" in rec["reason"]
    assert rec["policy_out"] == rec["policy_in"] and not any(c[0] == "train" for c in steps.calls)


def test_online_config_refuses_keys_the_loop_sets_and_overlapping_eval(tmp_path):
    from pipeline import online

    f = tmp_path / "o.yaml"
    f.write_text(
        json.dumps({"output_dir": "x", "rounds": 1, "generate": str(DATA / "quickstart.yaml"), "train": {"model": "m"}})
    )
    with pytest.raises(ConfigError, match=r"train.model is set by the loop"):
        online.load_online_config(f)
    f.write_text(json.dumps({"output_dir": "x", "rounds": 1, "generate": str(DATA / "quickstart.yaml"), "round": 2}))
    with pytest.raises(ConfigError, match="did you mean 'rounds'"):
        online.load_online_config(f)
    cfg = _online_config(tmp_path)
    overlapping = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(
                update={"problems": online.ProblemsConfig(source=str(DATA / "problems" / "math.jsonl"))}
            )
        }
    )
    with pytest.raises(ConfigError, match="overlap the training problems"):
        online._check_held_out(online.base_run_config(overlapping), overlapping.eval)


# ----------------------------------------------------------------------------------------------
# The real path (slow): TRL trainers -> checkpoints -> both engines; eval; two online rounds


def _generate_with(checkpoint: Path, engine: str) -> list[str]:
    from pipeline.config import ModelConfig
    from pipeline.engines import Request, Sampling, load_engine
    from pipeline.prompts import EXPO_V1, render_chat

    eng = load_engine(ModelConfig(path=str(checkpoint), engine=engine, max_model_len=512), seed=0)
    try:
        text = render_chat(eng.tokenizer, EXPO_V1.messages("cot", "What is 3 + 4?"))
        ids = list(eng.tokenizer.encode(text, add_special_tokens=False))
        (res,) = eng.generate([Request("r", ids, Sampling(2, 0.7, 1.0, 24, 5))])
        assert res.error is None
        return [c.text for c in res.completions]
    finally:
        eng.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "sft", "grpo"])
def test_each_trainer_writes_a_checkpoint_both_engines_generate_from(
    kind, quickstart_run, tiny_model, tmp_path, prefect_harness, monkeypatch
):
    import logging

    from flows.train import train_flow

    # Runs log at INFO, as they do for a user (the suite's default is WARNING).
    monkeypatch.setattr(logging.getLogger("prefect"), "level", logging.INFO)

    out = tmp_path / f"ckpt-{kind}"
    extra = {"dpo": ["dpo.sft_weight=0.5"], "sft": [], "grpo": ["grpo.num_generations=2"]}[kind]
    state = train_flow(
        kind,
        str(quickstart_run.root),
        str(tiny_model),
        str(out),
        config_path=str(DATA / "train" / "quickstart.yaml"),
        overrides=["max_steps=2", *extra],
        return_state=True,
    )
    path = state.result()
    # The flow's logs hold our lines, not what libraries print: dill (under datasets' map)
    # disassembles TRL's functions through print(), ~260 lines of bytecode with log_prints on.
    logs = flow_run_logs(state.state_details.flow_run_id, expect="rows of")
    assert any("rows of" in line for line in logs), logs[:5]
    assert not [line for line in logs if re.search(r"\b(LOAD_FAST|LOAD_GLOBAL|RESUME)\b", line)]
    doc = json.loads((Path(path) / "train.json").read_text())
    assert doc["global_step"] == 2 and math.isfinite(doc["train_loss"])
    assert doc["data"]["kind"] == "run_dir" and doc["data"]["files"]
    assert doc["device"] == "cpu" and doc["precision"] == "fp32"
    if kind == "grpo":
        logged = [h for h in doc["log_history"] if "expo/nll" in h]
        assert logged and all(h["expo/beta"] == pytest.approx(0.04) for h in logged)
    if kind == "dpo":
        assert doc["config"]["dpo"]["sft_weight"] == 0.5
    # The weights moved, and the folder is a model both engines load.
    from safetensors.torch import load_file

    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)
    for engine in ("hf", "vllm"):
        texts = _generate_with(out, engine)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.slow
def test_training_twice_into_one_folder_is_refused(quickstart_run, tiny_model, tmp_path):
    from pipeline.train.run import TrainedAlreadyError, train

    cfg = load_train_config(
        DATA / "train" / "quickstart.yaml",
        ["max_steps=1"],
        base={"kind": "sft", "data": str(quickstart_run.root), "model": str(tiny_model), "output_dir": str(tmp_path)},
    )
    train(cfg)
    with pytest.raises(TrainedAlreadyError, match="force_new=true") as caught:
        train(cfg)
    assert "with --force-new" in caught.value.for_command_line()
    assert train(cfg, force=True)["global_step"] == 1


@pytest.mark.slow
def test_lora_training_saves_merged_weights_and_the_adapter(quickstart_run, tiny_model, tmp_path):
    from pipeline.train.run import train

    cfg = load_train_config(
        DATA / "train" / "quickstart.yaml",
        ["max_steps=2", "lora.enabled=true", "lora.r=4", "learning_rate=0.01"],
        base={"kind": "dpo", "data": str(quickstart_run.root), "model": str(tiny_model), "output_dir": str(tmp_path)},
    )
    train(cfg)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen2"  # a plain model folder, no peft needed to load it
    assert len(_generate_with(tmp_path, "hf")) == 2


@pytest.mark.slow
def test_trainer_reads_a_hub_style_dataset_folder(quickstart_run, tiny_model, tmp_path):
    from pipeline.train.run import train

    repo = _hub_layout(quickstart_run.root, tmp_path / "repo", ["dpo_expert"])
    cfg = load_train_config(
        DATA / "train" / "quickstart.yaml",
        ["max_steps=1", "table=dpo_expert"],
        base={"kind": "dpo", "data": str(repo), "model": str(tiny_model), "output_dir": str(tmp_path / "o")},
    )
    doc = train(cfg)
    assert doc["data"]["kind"] == "folder" and doc["data"]["table"] == "dpo_expert" and doc["global_step"] == 1


@pytest.mark.slow
def test_eval_cli_reports_pass_at_k_by_level(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_model), "--problems", str(DATA / "problems" / "math.jsonl"), "--engine", "hf"]
    args += ["--samples", "3", "--k", "1", "--k", "3", "--limit", "6", "--max-tokens", "48", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pass@3" in result.output
    doc = json.loads(out.read_text())
    assert doc["overall"]["problems"] == 6 and sum(v["problems"] for v in doc["by_level"].values()) == 6
    for p in doc["per_problem"]:
        assert 0 <= p["correct"] <= 3
    expected = sum(pass_at_k(3, p["correct"], 3) for p in doc["per_problem"]) / 6
    assert doc["overall"]["pass@3"] == pytest.approx(expected, abs=1e-6)
    bad = CliRunner().invoke(app, [*args[:7], "--samples", "2", "--k", "4"])
    assert bad.exit_code == 2 and "every k must be in 1..samples" in bad.output


@pytest.mark.slow
def test_two_online_rounds_chain_checkpoints(tmp_path, prefect_harness):
    from flows.train import online_flow

    f = tmp_path / "online.yaml"
    f.write_text(
        json.dumps(
            {
                "name": "online-test",
                "output_dir": str(tmp_path / "loop"),
                "rounds": 2,
                "generate": str(DATA / "quickstart.yaml"),
                "generate_set": ["model.engine=hf", "problems.limit=12", "generation.sampling.max_tokens=64"],
                "train": {
                    "max_steps": 2,
                    "per_device_batch_size": 2,
                    "learning_rate": 1e-4,
                    "dpo": {"max_length": 384},
                },
                "eval": {
                    "problems": {"source": str(DATA / "problems" / "gsm8k.jsonl"), "limit": 6},
                    "samples": 2,
                    "k": [1, 2],
                    "max_tokens": 48,
                },
            }
        )
    )
    state = online_flow(str(f))
    loop = tmp_path / "loop"
    ckpt1, ckpt2 = loop / "round-01" / "checkpoint", loop / "round-02" / "checkpoint"
    run2 = RunDir(loop / "round-02" / "run").read_doc()
    assert run2.config.model.path == str(ckpt1)  # round 2 sampled round 1's policy
    assert (ckpt1 / "train.json").exists() and (ckpt2 / "train.json").exists()
    assert json.loads((ckpt2 / "train.json").read_text())["initial_model"]["path"] == str(ckpt1)
    assert [r["round"] for r in state["summary"]] == [0, 1, 2]
    assert all("pass@1" in r and "pass@2" in r for r in state["summary"])
    assert state["rounds"][1]["dpo_rows"] > 0 and state["rounds"][1]["trained"] is True
    saved = json.loads((loop / "online.json").read_text())
    assert saved["summary"] == state["summary"] and saved["status"] == "complete"
    # Resumable: a crash that lost round 2's checkpoint redoes round 2 only.
    mtime1 = (ckpt1 / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(ckpt2)
    (loop / "round-02" / "eval.json").unlink()
    saved["rounds"][1]["status"] = "running"
    (loop / "online.json").write_text(json.dumps(saved))
    state = online_flow(str(f))
    assert (ckpt2 / "train.json").exists() and state["status"] == "complete"
    assert (ckpt1 / "model.safetensors").stat().st_mtime_ns == mtime1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "sft", "grpo"])
def test_each_trainer_runs_on_its_defaults_from_the_command_line(
    kind, quickstart_run, tiny_model, tmp_path, prefect_harness
):
    """No --config: our defaults become TRL's real DPOConfig / SFTConfig / GRPOConfig, and TRL's own
    checks accept them (one step, so the suite stays short)."""
    from typer.testing import CliRunner

    from flows.cli import app

    args = [
        "train",
        kind,
        "--data",
        str(quickstart_run.root),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / kind),
    ]
    result = CliRunner().invoke(app, [*args, "--set", "max_steps=1"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / kind / "train.json").read_text())
    assert doc["global_step"] == 1 and math.isfinite(doc["train_loss"])
    defaults = load_train_config(None, [], base=_base(kind))
    assert doc["config"]["per_device_batch_size"] == defaults.per_device_batch_size
    if kind == "grpo":
        assert doc["config"]["grpo"]["num_generations"] == 8 and doc["config"]["grpo"]["steps_per_generation"] is None
