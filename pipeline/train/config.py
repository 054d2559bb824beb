"""The training config: YAML in, a validated object out, with the same strictness as the run config.

One file serves the three trainers: the shared keys (data, model, optimiser, precision, LoRA) at the
top, and one section per trainer. Defaults follow METHOD.md: DPO beta 0.1, the ExPO SFT coefficient
0.04 in ExP-GRPO, and the KL-to-reference coefficient kept as a separate key (0 by default, as in
TRL), so that turning one up never silently changes the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config_files import Strict, load_yaml_model, validate
from pipeline.prompts import DEFAULT_TEMPLATE

TrainKind = Literal["dpo", "sft", "grpo"]
KINDS: tuple[str, ...] = ("dpo", "sft", "grpo")

# The table each trainer reads by default, and the tables it may read instead.
DEFAULT_TABLE = {"dpo": "dpo", "sft": "sft", "grpo": "grpo"}
ALLOWED_TABLES = {"dpo": ("dpo", "dpo_expert", "dpo_self"), "sft": ("sft",), "grpo": ("grpo", "grpo_questa")}


class LoraConfig(Strict):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DPOSection(Strict):
    beta: float = Field(default=0.1, gt=0, description="DPO temperature")
    sft_weight: float = Field(
        default=0.0,
        ge=0,
        description="weight of an extra NLL term on chosen (TRL loss_type ['sigmoid','sft']); 0 = off",
    )
    max_length: int = Field(default=2048, gt=0, description="prompt + completion tokens")


class SFTSection(Strict):
    max_length: int = Field(default=2048, gt=0)
    completion_only: bool = Field(default=True, description="loss on the explanation only, not the prompt")


class ExpoTerm(Strict):
    """The ExPO term of ExP-GRPO: beta * NLL(text | plain prompt), added to the GRPO loss."""

    beta: float = Field(default=0.04, ge=0, description="ExPO SFT coefficient (0 = plain GRPO)")
    schedule: Literal["constant", "linear"] = Field(
        default="constant", description="linear: anneal from beta to beta_end over the run"
    )
    beta_end: float = Field(default=0.0, ge=0)
    source: Literal["explanation", "expert"] = Field(
        default="explanation", description="expert = the paper's GRPO SFT-GT-CoT baseline"
    )
    apply_to: Literal["all", "all_wrong"] = Field(
        default="all", description="every problem, or only groups where no rollout is correct"
    )
    regenerate_every: int = Field(
        default=0,
        ge=0,
        description="0 = explanations from the data (offline); N = the policy rewrites a problem's explanation "
        "once it is N steps old (online), keeping it only if verified",
    )
    template: str = Field(default=DEFAULT_TEMPLATE, description="prompt template for regenerated explanations")
    regenerate_temperature: float = Field(default=0.7, ge=0)
    regenerate_max_tokens: int = Field(default=1024, gt=0)
    max_length: int | None = Field(default=None, gt=0, description="explanation tokens kept; default max_completion")


class NurlOption(Strict):
    """NuRL's rule in ExP-GRPO: when all G rollouts of a problem fail, regenerate the group with the
    problem's hint (the ``hints`` table of the data) in G-1 prompts and one fresh plain rollout."""

    enabled: bool = False
    conditioning: str | None = Field(
        default=None, description="the abstract_hint entry whose hints to use; null: the first usable of each problem"
    )


class GRPOSection(Strict):
    num_generations: int = Field(default=8, ge=2, description="G rollouts per prompt")
    max_completion_length: int = Field(default=1024, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    kl_beta: float = Field(default=0.0, ge=0, description="KL-to-reference coefficient (TRL's beta)")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    steps_per_generation: int | None = Field(
        default=None,
        ge=1,
        description="optimizer steps per generation batch; unset: the fewest (a multiple of "
        "gradient_accumulation_steps) whose batch_size x steps completions hold whole groups",
    )
    use_vllm: bool = Field(default=False, description="TRL's vLLM generation (GPU only; colocated)")
    verifier_workers: int = Field(default=2, ge=1)
    verifier_timeout_s: float = Field(default=5.0, gt=0)
    verifier_extraction: Literal["boxed", "boxed_or_final"] = Field(
        default="boxed_or_final", description="how the reward reads a rollout's final answer (as verifier.extraction)"
    )
    expo: ExpoTerm = Field(default_factory=ExpoTerm)
    nurl: NurlOption = Field(default_factory=NurlOption)


class TrainConfig(Strict):
    kind: TrainKind
    data: str = Field(description="a run dir, or a Hugging Face Hub dataset repo id")
    data_revision: str | None = None
    table: str | None = Field(
        default=None, description="dpo: dpo | dpo_expert | dpo_self; grpo: grpo | grpo_questa; default per kind"
    )
    model: str = Field(description="local model folder or Hub model id (the initial policy)")
    model_revision: str | None = None
    trust_remote_code: bool = False
    output_dir: str
    seed: int = Field(default=0, ge=0)
    max_steps: int = Field(default=-1, description="-1 = train for `epochs`")
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=1e-6, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto: bf16 on a GPU that has it, fp32 on CPU"
    )
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int | None = Field(default=None, ge=1, description="also keep trainer checkpoints every N steps")
    report_to: list[str] = Field(default_factory=list, description="e.g. ['wandb']; none by default")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    dpo: DPOSection = Field(default_factory=DPOSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)

    @model_validator(mode="after")
    def _table_fits_kind(self) -> TrainConfig:
        allowed = ALLOWED_TABLES[self.kind]
        if self.table is not None and self.table not in allowed:
            raise ValueError(f"{self.kind} trains on {' | '.join(allowed)}, not {self.table!r}")
        return self

    @property
    def data_table(self) -> str:
        return self.table or DEFAULT_TABLE[self.kind]


PATH_FIELDS = ("data", "model", "output_dir")


def train_config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    return validate(TrainConfig, raw, source)


def load_train_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    cwd: str | Path | None = None,
) -> TrainConfig:
    """A training config from an optional YAML file, then ``base`` values (the CLI's --data, --model,
    --out), then ``--set`` overrides, each later one winning."""
    return load_yaml_model(TrainConfig, path, overrides or [], path_fields=PATH_FIELDS, values=base, cwd=cwd)
