"""The experiment: generate on the training problems, build, train every arm from the same initial
model for the same number of steps, and evaluate each checkpoint on held-out problems.

Everything stays under the experiment's folder::

    OUTPUT_DIR/experiment.json                 config, per-arm results (mean and spread), state
    OUTPUT_DIR/curves.png                      held-out pass@1 against training steps, per arm
    OUTPUT_DIR/run/                            the generation run dir (all tables)
    OUTPUT_DIR/arms/ARM/seed-S/checkpoint/     the trained policy (train.json last)
    OUTPUT_DIR/arms/ARM/seed-S/eval.json       its held-out evaluation (written last: the unit is done)
    OUTPUT_DIR/arms/ARM/seed-S/curve.json      held-out pass@k at the steps along training
    OUTPUT_DIR/arms/online_exp_dpo/seed-S/     the online loop's own folder (online.json, rounds)

A crash costs at most the unfinished arm and seed: a rerun skips every unit with its eval.json, the
generate flow resumes its own shards and the online loop its rounds. As in the online loop, the steps
come in as functions, so the Prefect flow runs them as tasks and this module stays testable alone.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import RunConfig
from pipeline.evaluate import EvalSpec
from pipeline.experiment.arms import ARMS, Arm, arm_rows, positive_scores
from pipeline.experiment.config import ExperimentConfig, run_config
from pipeline.experiment.summary import summarise
from pipeline.store import RunDir, open_state, write_json
from pipeline.train.config import TrainConfig
from pipeline.train.run import read_manifest

STATE = "experiment.json"
CURVE_DIR = "snapshots"


def curve_steps(max_steps: int, points: int) -> list[int]:
    """The steps before the last at which a policy is evaluated along training."""
    return sorted({round(max_steps * i / points) for i in range(1, points)} - {0, max_steps})


def snapshot_callback(folder: Path, steps: list[int]) -> Any:
    """A TrainerCallback that saves the policy (a model folder the engines load) at ``steps``."""
    from transformers import TrainerCallback

    wanted = set(steps)

    class Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step in wanted and model is not None:
                out = folder / f"step-{state.global_step:05d}"
                model.save_pretrained(str(out))
                if processing_class is not None:
                    processing_class.save_pretrained(str(out))

    return Snapshots()


class Experiment:
    def __init__(
        self,
        cfg: ExperimentConfig,
        generate: Callable[[RunConfig], str],
        train: Callable[..., dict[str, Any]],
        evaluate: Callable[[str, EvalSpec], dict[str, Any]],
        online: Callable[[Any], dict[str, Any]],
        release: Callable[[], None] = lambda: None,
        log: Callable[[str], None] = lambda _m: None,
    ):
        self.cfg = cfg
        self.generate, self.train, self.evaluate, self.online = generate, train, evaluate, online
        self.release, self.log = release, log
        self.root = Path(cfg.output_dir)
        self.state_path = self.root / STATE
        self.run = run_config(cfg)

    # -- state ------------------------------------------------------------------------------

    def _config_doc(self) -> dict[str, Any]:
        return json.loads(self.cfg.model_dump_json())

    def prepare(self, force_new: bool) -> dict[str, Any]:
        # More arms or seeds, or settings of an arm not run yet, extend an experiment (an arm and
        # seed with its eval.json is never redone). Results are rebuilt from each unit's eval.json,
        # so the state starts afresh every time.
        open_state(self.state_path, self._config_doc(), "an experiment", force_new, self._extends)
        return {"name": self.cfg.name, "config": self._config_doc(), "initial_model": self.run.model.path, "arms": {}}

    def _extends(self, key: str) -> bool:
        if key in ("arms", "seeds", "seeded_arms"):
            return True
        parts = key.split(".")
        return (
            parts[0] == "arm_train" and len(parts) > 1 and not any((self.root / "arms" / parts[1]).glob("*/eval.json"))
        )

    def save(self, state: dict[str, Any]) -> None:
        write_json(state, self.state_path)

    def unit_dir(self, arm: str, seed: int) -> Path:
        return self.root / "arms" / arm / f"seed-{seed}"

    # -- the experiment ---------------------------------------------------------------------

    def check_held_out(self) -> int | None:
        """The held-out problem count, once they are known not to be training problems (None when
        ``eval.allow_overlap`` skips the check)."""
        from pipeline.contamination import check_held_out

        if self.cfg.eval.allow_overlap:
            return None
        ev = self.cfg.eval
        return check_held_out(self.run.problems, ev.problems, allow_key="eval.allow_overlap", n=ev.overlap_ngram)

    def execute(self, force_new: bool = False) -> dict[str, Any]:
        t0 = time.monotonic()
        state = self.prepare(force_new)
        state["heldout_problems"] = self.check_held_out()
        state["status"] = "running"
        self.save(state)
        progress.emit("experiment.step", step="generating on the training problems")
        run_dir = RunDir(self.generate(self.run))
        self.release()  # the engine gives the device back before the trainers take it
        state["run_dir"] = str(run_dir.root)
        state["generation"] = generation_stats(run_dir)
        units: dict[str, list[dict[str, Any]]] = {}
        for name in self.cfg.arms:
            arm = ARMS[name]
            for seed in self.cfg.seeds_of(name):
                units.setdefault(name, []).append(self._unit(arm, seed, run_dir))
                state["arms"] = summarise(self.cfg, units, run_dir)
                self.save(state)
        state["arms"] = summarise(self.cfg, units, run_dir)
        state["expert_vs_explanation_nll"] = _nll_ratio(state["arms"])
        state["status"] = "complete"
        state["seconds"] = round(time.monotonic() - t0, 1)
        self.save(state)
        return state

    def _spec(self, seed: int) -> EvalSpec:
        return self.cfg.eval.spec(seed, self.run)

    def _eval_model(self, path: str, seed: int) -> dict[str, Any]:
        result = self.evaluate(path, self._spec(seed))
        return {"pass": {k: v for k, v in result["overall"].items() if k.startswith("pass@")}, "model": path}

    def _unit(self, arm: Arm, seed: int, run_dir: RunDir) -> dict[str, Any]:
        """One arm with one seed: train (or not), evaluate along the way and at the end."""
        folder = self.unit_dir(arm.name, seed)
        done = folder / "eval.json"
        if done.exists():
            self.log(f"{arm.name} seed {seed}: done before")
            unit = json.loads(done.read_text())
            progress.emit("experiment.unit", **_brief(unit), before=True)
            return unit
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if arm.name == "base":
            unit = {"arm": arm.name, "seed": seed, "rows": None, "trained": False, "curve": []}
            unit["final"] = self._eval_model(self.run.model.path, seed)
        elif arm.name == "online_exp_dpo":
            unit = self._online(arm, seed, folder)
        else:
            unit = self._offline(arm, seed, folder, run_dir)
        unit["seconds"] = round(time.monotonic() - t0, 1)
        write_json(unit, done)
        self.log(f"{arm.name} seed {seed}: {unit.get('final', {}).get('pass') or unit.get('reason')}")
        progress.emit("experiment.unit", **_brief(unit), before=False)
        return unit

    def _train_config(self, arm: Arm, seed: int, folder: Path, data: str, model: str) -> TrainConfig:
        kind, table = arm.kind or "dpo", arm.table or "dpo"
        return self.cfg.train_config(arm.name, kind, table, data, model, folder / "checkpoint", seed, **arm.settings)

    def _offline(self, arm: Arm, seed: int, folder: Path, run_dir: RunDir) -> dict[str, Any]:
        rows, rows_doc = arm_rows(arm, run_dir)
        unit: dict[str, Any] = {"arm": arm.name, "seed": seed, "rows": rows.num_rows, "curve": []}
        first = seed == self.cfg.seeds[0]  # every seed trains on the same rows: score them once
        unit["positives"] = positive_scores(arm, rows, run_dir) if first else None
        if rows.num_rows < self.cfg.min_rows:
            unit.update(trained=False, reason=f"{rows.num_rows} rows, below min_rows ({self.cfg.min_rows})")
            return unit
        tcfg = self._train_config(arm, seed, folder, str(run_dir.root), self.run.model.path)
        # The curve: the first seed's, evaluated along its training.
        steps = curve_steps(tcfg.max_steps, self.cfg.curve_points) if first else []
        snapshots = folder / CURVE_DIR
        manifest = read_manifest(tcfg.output_dir)
        if manifest is None:
            if Path(tcfg.output_dir).exists():
                shutil.rmtree(tcfg.output_dir)  # an interrupted training run: start it again
            shutil.rmtree(snapshots, ignore_errors=True)
            callbacks = (snapshot_callback(snapshots, steps),) if steps else ()
            # A run's own table is read by the trainer from the run dir, as `expo-data train` reads it.
            dataset = _dataset(rows) if rows_doc is not None else None
            manifest = self.train(tcfg, rows=dataset, rows_doc=rows_doc, callbacks=callbacks)
        unit.update(trained=True, steps=manifest.get("global_step"), train_loss=manifest.get("train_loss"))
        for step in steps:
            snap = snapshots / f"step-{step:05d}"
            if snap.exists():
                unit["curve"].append({"step": step, **self._eval_model(str(snap), seed)["pass"]})
        shutil.rmtree(snapshots, ignore_errors=True)
        unit["final"] = self._eval_model(tcfg.output_dir, seed)
        unit["curve"].append({"step": manifest.get("global_step"), **unit["final"]["pass"]})
        return unit

    def _online(self, arm: Arm, seed: int, folder: Path) -> dict[str, Any]:
        """Rounds of the online loop sharing the arm's step budget; each round's policy evaluated."""
        from pipeline.online import OnlineConfig

        rounds = self.cfg.online_rounds
        raw = self.cfg.arm_train_raw(arm.name)
        raw.update(max_steps=max(1, self.cfg.max_steps // rounds), seed=seed)
        ocfg = OnlineConfig(
            name=f"{self.cfg.name}-online",
            output_dir=str(folder),
            rounds=rounds,
            generate=self.cfg.generate,
            generate_set=[
                *self.cfg.generate_set,
                f"generation.sampling.seed={self.run.generation.sampling.seed + seed}",
            ],
            train=raw,
        )
        state = self.online(ocfg)
        unit: dict[str, Any] = {"arm": arm.name, "seed": seed, "trained": True, "curve": [], "rounds": []}
        positives, step = [], 0
        for rec in state["rounds"]:
            step += rec.get("steps") or 0
            ev = self._eval_model(rec["policy_out"], seed)
            unit["curve"].append({"step": step, **ev["pass"]})
            unit["rounds"].append(
                {
                    "round": rec["round"],
                    "dpo_rows": rec.get("dpo_rows"),
                    "train_loss": rec.get("train_loss"),
                    "policy": rec["policy_out"],
                }
            )
            run = RunDir(rec["run_dir"])
            rows, _ = arm_rows(ARMS["exp_dpo"], run)
            positives.append(positive_scores(arm, rows, run))
        unit["rows"] = sum(r["dpo_rows"] or 0 for r in unit["rounds"])
        unit["steps"] = step
        losses = [r["train_loss"] for r in unit["rounds"] if r["train_loss"] is not None]
        unit["train_loss"] = sum(losses) / len(losses) if losses else None
        unit["positives"] = positives[0] if positives else None
        last = unit["curve"][-1] if unit["curve"] else {}
        unit["final"] = {"pass": {k: v for k, v in last.items() if k != "step"}, "model": unit["rounds"][-1]["policy"]}
        return unit


def _dataset(rows: Any) -> Any:
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(rows))


def _brief(unit: dict[str, Any]) -> dict[str, Any]:
    """What the terminal shows of a finished arm and seed."""
    passes = (unit.get("final") or {}).get("pass") or {}
    return {
        "arm": unit["arm"],
        "seed": unit["seed"],
        "passes": passes,
        "reason": unit.get("reason"),
        "seconds": unit.get("seconds"),
    }


def generation_stats(run_dir: RunDir) -> dict[str, Any]:
    """How the initial model did on the training problems (the ExPO premise, measured), from the
    run's own summary in run.json."""
    import schemas

    doc = run_dir.require_doc()
    kinds = doc.summary.by_kind if doc.summary else {}
    out: dict[str, Any] = {"problems": kinds["cot"].problems if "cot" in kinds else None}
    for kind in ("cot", "explanation"):
        out[f"{kind}_accuracy"] = kinds[kind].accuracy if kind in kinds else None
        out[f"{kind}_texts"] = kinds[kind].samples if kind in kinds else 0
    out["rows"] = {t: doc.rows(t) for t in schemas.DATASETS}
    return out


def _nll_ratio(arms: dict[str, Any]) -> float | None:
    """Mean NLL of the expert solutions over the self-explanations' (the paper's is about 2x)."""
    expert = ((arms.get("expert_dpo") or {}).get("positives") or {}).get("nll_mean")
    own = ((arms.get("exp_dpo") or {}).get("positives") or {}).get("nll_mean")
    return round(expert / own, 3) if expert and own else None


def evaluate_policy(cfg: ExperimentConfig, run: RunConfig, path: str, spec: EvalSpec, pool: Any) -> dict[str, Any]:
    """A policy on the held-out problems with the run's model settings (the eval engine may differ),
    on an engine of its own, closed afterwards: dozens of checkpoints pass through one process."""
    from pipeline.config_files import with_values
    from pipeline.engines import load_engine
    from pipeline.evaluate import evaluate

    values: dict[str, Any] = {"path": path, "revision": None}
    if cfg.eval.engine:
        values["engine"] = cfg.eval.engine
    model = with_values(run.model, values)
    engine = load_engine(model, spec.seed)
    try:
        return evaluate(model, cfg.eval.problems, spec, pool, engine=engine)
    finally:
        engine.close()
