"""The experiment config: one YAML that names the generation run, the held-out problems, the arms,
the seeds and the training budget every arm shares (``data/experiment.yaml``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config import ProblemsConfig, RunConfig, load_config, overlap_ngram_field
from pipeline.config_files import Strict, load_yaml_model
from pipeline.evaluate import EvalSpec
from pipeline.train.config import TrainConfig, train_config_from_dict

ArmName = Literal[
    "base",
    "exp_sft",
    "exp_dpo",
    "expert_dpo",
    "self_dpo",
    "exp_grpo",
    "grpo",
    "online_exp_dpo",
    "swapped_dpo",
    "sft_wrong",
]
ARM_NAMES: tuple[str, ...] = ArmName.__args__  # type: ignore[attr-defined]
SEEDED_DEFAULT = ["base", "exp_sft", "exp_dpo", "expert_dpo", "swapped_dpo", "sft_wrong"]


class ExperimentEval(Strict):
    problems: ProblemsConfig = Field(description="held-out problems of the same family, never trained on")
    allow_overlap: bool = Field(default=False, description="let held-out problems overlap the training problems")
    overlap_ngram: int | None = overlap_ngram_field("held-out and training problems")
    engine: Literal["vllm", "hf"] | None = Field(default=None, description="default: the generation run's")
    samples: int = Field(default=4, ge=1)
    k: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)
    temperature: float = Field(default=0.7, ge=0)
    max_tokens: int = Field(default=256, gt=0)

    def spec(self, seed: int, run: RunConfig) -> EvalSpec:
        return EvalSpec(
            samples=self.samples,
            ks=tuple(self.k),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=seed,
            template=run.prompts.template,
            system=run.prompts.system,
        )


class ExperimentConfig(Strict):
    name: str = Field(default="experiment", pattern=r"^[A-Za-z0-9][\w.-]*$")
    output_dir: str
    generate: str = Field(description="run config (YAML) of the generation on the training problems")
    generate_set: list[str] = Field(default_factory=list, description="overrides for that run config")
    eval: ExperimentEval
    arms: list[ArmName] = Field(default_factory=lambda: list(ARM_NAMES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    seeded_arms: list[ArmName] = Field(
        default_factory=lambda: list(SEEDED_DEFAULT), description="arms run with every seed; the rest with the first"
    )
    min_rows: int = Field(default=8, ge=1, description="an arm with fewer training rows is reported, not trained")
    curve_points: int = Field(default=4, ge=1, description="held-out evaluations along each arm's training")
    online_rounds: int = Field(default=2, ge=1, description="online_exp_dpo: rounds sharing the arm's step budget")
    train: dict[str, Any] = Field(default_factory=dict, description="training keys every arm shares")
    arm_train: dict[ArmName, dict[str, Any]] = Field(
        default_factory=dict, description="per-arm training keys over `train` (e.g. a learning rate)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        for key in ("kind", "data", "model", "output_dir", "seed", "table"):
            for where, raw in [("train", self.train), *((f"arm_train.{a}", r) for a, r in self.arm_train.items())]:
                if key in raw:
                    raise ValueError(f"{where}.{key} is set by the experiment for each arm; remove it")
        if "max_steps" not in self.train or int(self.train["max_steps"]) <= 0:
            raise ValueError("train.max_steps must be set (> 0): every arm trains for the same number of steps")
        return self

    def seeds_of(self, arm: str) -> list[int]:
        return list(self.seeds) if arm in self.seeded_arms else self.seeds[:1]

    def arm_train_raw(self, arm: str) -> dict[str, Any]:
        """``train`` with the arm's own keys merged in at any depth (``grpo.expo.beta`` alone keeps
        the other ``grpo`` keys)."""
        return _merge(self.train, self.arm_train.get(arm, {}))  # type: ignore[call-overload]

    def train_config(
        self, arm: str, kind: str, table: str, data: str, model: str, out: Path, seed: int, **extra: Any
    ) -> TrainConfig:
        raw = self.arm_train_raw(arm)
        for key, value in extra.items():  # the arm's own settings (e.g. ExP-GRPO's beta = 0 for `grpo`)
            section, _, name = key.partition(".")
            if name:
                raw.setdefault(section, {})
                parts = name.split(".")
                node = raw[section]
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
            else:
                raw[key] = value
        raw.update(kind=kind, table=table, data=data, model=model, output_dir=str(out), seed=seed)
        return train_config_from_dict(raw, source=f"experiment train settings of arm {arm!r}")

    @property
    def max_steps(self) -> int:
        return int(self.train["max_steps"])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


PATH_FIELDS = ("output_dir", "generate", "eval.problems.source")


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    cfg = load_yaml_model(ExperimentConfig, path, overrides or [], path_fields=PATH_FIELDS)
    run_config(cfg)  # fail on a bad generation config now, not after the first arm
    # Fail on a bad training section now, not after the generation.
    for arm in cfg.arms:
        if arm != "base":
            cfg.train_config(arm, "sft", "sft", ".", ".", Path("."), 0)
    return cfg


def run_config(cfg: ExperimentConfig) -> RunConfig:
    """The generation run on the training problems, in the experiment's own folder."""
    from pipeline.config_files import with_values

    base = load_config(cfg.generate, cfg.generate_set)
    return with_values(base, {"output_dir": str((Path(cfg.output_dir) / "run").resolve()), "name": f"{cfg.name}-run"})
