"""Iterative (online) ExP-DPO: rounds of generate with the current policy -> build ``dpo`` -> train
one round of DPO -> the next policy. Online beat offline in the paper (METHOD.md).

Everything a round makes stays under the loop's folder::

    OUTPUT_DIR/online.json            config, state of every round, per-round accuracy
    OUTPUT_DIR/eval-round-00.json     the initial policy on the held-out problems
    OUTPUT_DIR/round-01/run/          the generate run dir (its run.json names the policy it sampled)
    OUTPUT_DIR/round-01/checkpoint/   the policy after round 1 (a model folder, train.json last)
    OUTPUT_DIR/round-01/eval.json     that policy on the held-out problems

A crash costs at most the unfinished round: finished rounds are skipped on rerun, the generate flow
resumes its own shards, and a checkpoint without train.json is retrained. The steps come in as
functions so the Prefect flow can run them as tasks and subflows while this module stays testable
without Prefect.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline import progress
from pipeline.config import ConfigError, ProblemsConfig, RunConfig, load_config, overlap_ngram_field
from pipeline.config_files import Strict, load_yaml_model, with_values
from pipeline.evaluate import EvalSpec
from pipeline.store import RunDir, open_state, write_json
from pipeline.train.config import TrainConfig, train_config_from_dict
from pipeline.train.run import read_manifest

STATE = "online.json"


class EvalSection(Strict):
    problems: ProblemsConfig
    samples: int = Field(default=4, ge=1)
    k: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=1024, gt=0)
    seed: int = Field(default=0, ge=0)
    allow_overlap: bool = Field(default=False, description="let eval problems overlap the training problems")
    overlap_ngram: int | None = overlap_ngram_field("eval and training problems")

    def spec(self, template: str, system: str | None = None) -> EvalSpec:
        return EvalSpec(
            samples=self.samples,
            ks=tuple(self.k),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
            template=template,
            system=system,
        )


class OnlineConfig(Strict):
    name: str = Field(default="online", pattern=r"^[A-Za-z0-9][\w.-]*$")
    output_dir: str
    rounds: int = Field(ge=1)
    generate: str = Field(description="run config (YAML) for each round's generation; its model is the start")
    generate_set: list[str] = Field(default_factory=list, description="overrides for that run config")
    vary_seed: bool = Field(default=True, description="round r samples with seed + r - 1")
    train: dict[str, Any] = Field(default_factory=dict, description="training config keys for the DPO round")
    eval: EvalSection | None = None


PATH_FIELDS = ("output_dir", "generate", "eval.problems.source")


def load_online_config(path: str | Path, overrides: list[str] | None = None) -> OnlineConfig:
    cfg = load_yaml_model(OnlineConfig, path, overrides or [], path_fields=PATH_FIELDS)
    # Fail on a bad training or generate config now, not after the first round's generation.
    round_train_config(cfg, 1, ".", ".")
    round_run_config(cfg, 1, None)
    return cfg


def round_dir(cfg: OnlineConfig, r: int) -> Path:
    return Path(cfg.output_dir) / f"round-{r:02d}"


def base_run_config(cfg: OnlineConfig) -> RunConfig:
    return load_config(cfg.generate, cfg.generate_set)


def round_run_config(cfg: OnlineConfig, r: int, policy: str | None) -> RunConfig:
    """The run config of round ``r``: its own run dir and name, the policy to sample, a seed of its
    own (so rounds explore rather than replay). Typed values all the way: a policy path is used as
    it is, whatever characters it holds."""
    base = base_run_config(cfg)
    values: dict[str, Any] = {
        "output_dir": str((round_dir(cfg, r) / "run").resolve()),
        "name": f"{cfg.name}-round-{r:02d}",
    }
    if policy is not None:
        values["model.path"] = policy
    if cfg.vary_seed:
        values["generation.sampling.seed"] = base.generation.sampling.seed + r - 1
        if base.generation.explanation_sampling is not None:
            values["generation.explanation_sampling.seed"] = base.generation.explanation_sampling.seed + r - 1
    return with_values(base, values)


def evaluate_policy(cfg: OnlineConfig, policy: str) -> dict[str, Any]:
    """A policy on the held-out problems, with the generate config's engine settings, template and
    verifier: the same conditions every round."""
    from pipeline.evaluate import evaluate
    from pipeline.verify import VerifierPool

    if cfg.eval is None:
        raise ConfigError("the online config has no eval section")
    run = base_run_config(cfg)
    model = with_values(run.model, {"path": policy, "revision": None})
    v = run.verifier
    with VerifierPool(workers=v.workers, timeout_s=v.timeout_s, extraction=v.extraction) as pool:
        return evaluate(model, cfg.eval.problems, cfg.eval.spec(run.prompts.template, run.prompts.system), pool)


def round_train_config(cfg: OnlineConfig, r: int, run_dir: str, policy: str) -> TrainConfig:
    raw = copy.deepcopy(cfg.train)
    for key in ("kind", "data", "model", "output_dir"):
        if key in raw:
            raise ConfigError(f"online config: train.{key} is set by the loop for each round; remove it")
    raw.update(
        kind="dpo",
        data=run_dir,
        model=policy,
        output_dir=str((round_dir(cfg, r) / "checkpoint").resolve()),
    )
    return train_config_from_dict(raw, source=f"online config train section (round {r})")


class OnlineLoop:
    """The round loop with its state file; steps are injected (see the module docstring)."""

    def __init__(
        self,
        cfg: OnlineConfig,
        generate: Callable[[RunConfig], str],
        train: Callable[[TrainConfig], dict[str, Any]],
        evaluate: Callable[[str, str], dict[str, Any]],
        release: Callable[[], None] = lambda: None,
        log: Callable[[str], None] = lambda _m: None,
    ):
        self.cfg = cfg
        self.generate, self.train, self.evaluate, self.release, self.log = generate, train, evaluate, release, log
        self.root = Path(cfg.output_dir)
        self.state_path = self.root / STATE

    # -- state ------------------------------------------------------------------------------

    def _config_doc(self) -> dict[str, Any]:
        return json.loads(self.cfg.model_dump_json())

    def prepare(self, force_new: bool) -> dict[str, Any]:
        # More rounds extend a finished loop; anything else would mix two experiments.
        state = open_state(self.state_path, self._config_doc(), "an online run", force_new, lambda k: k == "rounds")
        if state is not None:
            state["config"] = self._config_doc()
            return state
        base = base_run_config(self.cfg)
        return {"name": self.cfg.name, "config": self._config_doc(), "initial_policy": base.model.path, "rounds": []}

    def save(self, state: dict[str, Any]) -> None:
        state["summary"] = summary_rows(state)
        write_json(state, self.state_path)

    # -- the loop ---------------------------------------------------------------------------

    def _eval(self, policy: str, path: Path) -> dict[str, Any] | None:
        if self.cfg.eval is None:
            return None
        if path.exists():
            return json.loads(path.read_text())
        result = self.evaluate(policy, str(path))
        write_json(result, path)
        return result

    def run(self, force_new: bool = False) -> dict[str, Any]:
        state = self.prepare(force_new)
        if self.cfg.eval is not None and not self.cfg.eval.allow_overlap:
            _check_held_out(base_run_config(self.cfg), self.cfg.eval)
        policy = state["initial_policy"]
        state["eval_initial"] = _brief(self._eval(policy, self.root / "eval-round-00.json"))
        self.save(state)
        done = {r["round"]: r for r in state["rounds"] if r.get("status") == "done"}
        for r in range(1, self.cfg.rounds + 1):
            if r in done:
                policy = done[r]["policy_out"]
                self.log(f"round {r}: done before, policy {policy}")
                continue
            policy = self._round(state, r, policy)
        state["status"] = "complete"
        self.save(state)
        self.release()
        return state

    def _round(self, state: dict[str, Any], r: int, policy: str) -> str:
        t0 = time.monotonic()
        rd = round_dir(self.cfg, r)
        rd.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"round": r, "policy_in": policy, "status": "running"}
        state["rounds"] = [x for x in state["rounds"] if x["round"] != r] + [record]
        state["rounds"].sort(key=lambda x: x["round"])
        self.save(state)
        self.log(f"round {r}: generating with {policy}")
        progress.emit("online.round", round=r, step=f"generating with {policy}")
        run_dir = self.generate(round_run_config(self.cfg, r, policy))
        record["run_dir"] = run_dir
        run_doc = RunDir(run_dir).require_doc()
        record["sampled_with"] = run_doc.config.model.path if run_doc.config else None
        dpo_rows = run_doc.rows("dpo") or 0
        record["dpo_rows"] = dpo_rows
        self.release()  # the engine must give the device back before the trainer takes it
        tcfg = round_train_config(self.cfg, r, run_dir, policy)
        if dpo_rows == 0:
            record.update(trained=False, reason="the round produced no DPO pairs; the policy carries over")
            policy_out = policy
        else:
            checkpoint = Path(tcfg.output_dir)
            manifest = read_manifest(checkpoint)
            if manifest is None:
                if checkpoint.exists() and not tcfg.save_steps:
                    shutil.rmtree(checkpoint)  # an interrupted round with nothing to resume from
                progress.emit("online.round", round=r, step=f"training DPO on {dpo_rows} pairs")
                manifest = self.train(tcfg)
            record.update(trained=True, train_loss=manifest.get("train_loss"), steps=manifest.get("global_step"))
            policy_out = str(checkpoint)
        record["policy_out"] = policy_out
        if self.cfg.eval is not None:
            progress.emit("online.round", round=r, step=f"evaluating {policy_out}")
        record["eval"] = _brief(self._eval(policy_out, rd / "eval.json"))
        record["seconds"] = round(time.monotonic() - t0, 3)
        record["status"] = "done"
        self.save(state)
        self.log(f"round {r}: done -> {policy_out}")
        return policy_out


def _brief(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"model": result["model"], "overall": result["overall"], "by_level": result["by_level"]}


def _check_held_out(run: RunConfig, ev: EvalSection) -> None:
    from pipeline.contamination import check_held_out

    check_held_out(run.problems, ev.problems, allow_key="eval.allow_overlap", n=ev.overlap_ngram)


def summary_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy (round 0 = the initial one): the per-round accuracy table."""
    rows = []

    def row(r: int, policy: str, ev: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"round": r, "policy": policy, **extra}
        if ev:
            out.update({k: v for k, v in ev["overall"].items() if k.startswith("pass@")})
            levels = [lv for lv in ev["by_level"] if lv != "unknown"]
            for level in levels:
                out[f"level {level} pass@1"] = ev["by_level"][level].get("pass@1")
        return out

    rows.append(row(0, state.get("initial_policy", ""), state.get("eval_initial"), {}))
    for rec in state.get("rounds", []):
        if rec.get("status") != "done":
            continue
        extra = {"dpo_pairs": rec.get("dpo_rows"), "train_loss": rec.get("train_loss")}
        rows.append(row(rec["round"], rec["policy_out"], rec.get("eval"), extra))
    return rows
