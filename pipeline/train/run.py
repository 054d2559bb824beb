"""One training run: data in, a checkpoint out that both generation engines load.

The output folder is itself a model folder (weights, config, tokenizer with its chat template), so
``model.path: OUT`` in a run config generates with it, and the online loop feeds it straight back
into the generate flow. ``train.json`` is written last and marks the folder complete: a folder
without it is an interrupted run, which a rerun resumes from the trainer's own checkpoints (when
``save_steps`` is set) or restarts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import __version__, progress
from pipeline.errors import START_OVER, ConfigError, ModelError, TrainDataError, TrainedAlreadyError
from pipeline.sources import locate_model
from pipeline.store import write_json
from pipeline.train.config import TrainConfig
from pipeline.train.data import describe_source, load_table
from pipeline.versions import package_versions

TRAIN_JSON = "train.json"
TRAINER_DIR = "trainer"


def is_trained(out: str | Path) -> bool:
    return (Path(out) / TRAIN_JSON).exists()


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """train.json of a checkpoint folder (written last, so it marks the folder complete), or None."""
    path = Path(out) / TRAIN_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def resolve_device(cfg: TrainConfig) -> tuple[bool, str]:
    """(use_cpu, precision): bf16 on a GPU that supports it, fp32 on CPU, unless told otherwise."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("device: cuda, but torch sees no CUDA device")
    use_cpu = cfg.device == "cpu" or not cuda
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "fp32"
    if use_cpu and precision == "fp16":
        raise ConfigError("precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    return use_cpu, precision


def grpo_steps_per_generation(cfg: TrainConfig) -> int:
    """TRL generates for ``per_device_batch_size x steps_per_generation`` completions at a time, which
    must hold whole groups of ``num_generations``. Unset, it is the fewest steps (a multiple of
    ``gradient_accumulation_steps``, TRL's own default) that do: 2 for the defaults, batch 4 and G 8."""
    if cfg.grpo.steps_per_generation:
        return cfg.grpo.steps_per_generation
    steps = cfg.gradient_accumulation_steps
    while (cfg.per_device_batch_size * steps) % cfg.grpo.num_generations:
        steps += cfg.gradient_accumulation_steps
    return steps


def _check_grpo_batch(cfg: TrainConfig) -> None:
    """TRL counts GRPO's batch in completions, not prompts: catch a batch that cannot hold whole
    groups here, with the numbers, rather than as TRL's error mid-setup."""
    g = cfg.grpo.num_generations
    steps = grpo_steps_per_generation(cfg)
    generation_batch = cfg.per_device_batch_size * steps
    if generation_batch % g:
        raise ConfigError(
            f"grpo: per_device_batch_size ({cfg.per_device_batch_size}) x steps per generation ({steps}) = "
            f"{generation_batch} completions, not a multiple of num_generations ({g})"
        )


def _common_args(cfg: TrainConfig, out: Path, use_cpu: bool, precision: str) -> dict[str, Any]:
    return {
        "output_dir": str(out / TRAINER_DIR),
        "max_steps": cfg.max_steps,
        "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps" if cfg.save_steps else "no",
        "save_steps": cfg.save_steps or 500,
        "save_total_limit": 2,
        "report_to": cfg.report_to or "none",
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "use_cpu": use_cpu,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def _peft_config(cfg: TrainConfig) -> Any:
    if not cfg.lora.enabled:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("lora.enabled needs peft: pip install 'expo-data[train]'") from None
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def load_policy(cfg: TrainConfig, precision: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    kwargs = {"revision": cfg.model_revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, **kwargs)
    except OSError as e:  # a missing folder, an unknown Hub id, no network: transformers says OSError
        raise ModelError(f"cannot load the model {cfg.model!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def preflight(cfg: TrainConfig) -> int:
    """Check, in seconds, what would otherwise fail minutes in: the data table reads and fits its
    schema, the model's config loads, the batch fits GRPO's groups. Returns the table's rows."""
    from transformers import AutoConfig

    if cfg.kind == "grpo":
        _check_grpo_batch(cfg)
    resolve_device(cfg)
    rows = load_table(cfg.data, cfg.data_table, cfg.data_revision).num_rows
    locate_model(cfg.model, what="model")
    try:
        AutoConfig.from_pretrained(cfg.model, revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the model {cfg.model!r}: {e}") from None
    return rows


def _questions(cfg: TrainConfig) -> dict[str, str]:
    problems = load_table(cfg.data, "problems", cfg.data_revision)
    return dict(zip(problems["problem_id"], problems["question"], strict=True))


def _hints(cfg: TrainConfig) -> dict[str, str]:
    """NuRL's hints by problem: the first usable one in table order (of ``grpo.nurl.conditioning``
    when set)."""
    try:
        table = load_table(cfg.data, "hints", cfg.data_revision)
    except (TrainDataError, OSError, ValueError) as e:
        raise TrainDataError(
            f"grpo.nurl needs the data's `hints` table, which {cfg.data} does not have ({e}); generate with an "
            "abstract_hint conditioning (see data/conditionings.yaml)"
        ) from None
    want = cfg.grpo.nurl.conditioning
    hints: dict[str, str] = {}
    for row in table:
        if row["usable"] and (want is None or row["conditioning"] == want):
            hints.setdefault(row["problem_id"], row["hint"])
    if not hints:
        which = f" of {want!r}" if want else ""
        raise TrainDataError(f"grpo.nurl: the hints table of {cfg.data} has no usable hint{which}")
    return hints


def build_trainer(cfg: TrainConfig, dataset: Any, model: Any, tokenizer: Any, use_cpu: bool, precision: str) -> Any:
    """The TRL trainer for DPO or SFT, set up from our config."""
    out = Path(cfg.output_dir)
    common = _common_args(cfg, out, use_cpu, precision)
    peft_config = _peft_config(cfg)
    if cfg.kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        loss = {"loss_type": ["sigmoid"]}
        if cfg.dpo.sft_weight > 0:
            loss = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.dpo.sft_weight]}
        args = DPOConfig(**common, beta=cfg.dpo.beta, max_length=cfg.dpo.max_length, **loss)
        return DPOTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
        )
    if cfg.kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=cfg.sft.max_length, completion_only_loss=cfg.sft.completion_only)
        return SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
        )
    raise ValueError(f"use build_grpo_trainer for {cfg.kind!r}")


def build_grpo_trainer(
    cfg: TrainConfig, dataset: Any, model: Any, tokenizer: Any, use_cpu: bool, precision: str, pool: Any
) -> Any:
    from trl import GRPOConfig

    from pipeline.rewards import VerifierReward
    from pipeline.train.expo_grpo import ExPGRPOTrainer

    _check_grpo_batch(cfg)
    g = cfg.grpo
    common = _common_args(cfg, Path(cfg.output_dir), use_cpu, precision)
    extra: dict[str, Any] = {"steps_per_generation": grpo_steps_per_generation(cfg)}
    if g.use_vllm:
        extra.update(use_vllm=True, vllm_mode="colocate")
    args = GRPOConfig(
        **common,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.kl_beta,
        loss_type=g.loss_type,
        **extra,
    )
    questions = _questions(cfg) if g.expo.regenerate_every or g.nurl.enabled else None
    return ExPGRPOTrainer(
        model=model,
        reward_funcs=[VerifierReward("solution", pool)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(cfg),
        expo=g.expo,
        pool=pool,
        questions=questions,
        hints=_hints(cfg) if g.nurl.enabled else None,
    )


def _save(trainer: Any, tokenizer: Any, cfg: TrainConfig, out: Path) -> None:
    """A plain model folder: LoRA adapters are kept under adapter/ and merged into the weights the
    engines load, since neither engine should need peft to generate."""
    model = trainer.model
    if cfg.lora.enabled:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _progress_callback(kind: str, log: Callable[[str], None]) -> Any:
    """Trainer logs as pipeline progress events (the CLI draws a bar) and log lines, instead of
    the dicts transformers prints."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            progress.emit("train.start", kind=kind, max_steps=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            logs = logs or {}
            loss = logs.get("loss")
            progress.emit("train.log", kind=kind, step=state.global_step, max_steps=state.max_steps, loss=loss)
            if loss is not None:
                log(f"{kind} step {state.global_step}/{state.max_steps}: loss {loss:.4f}")

    return ProgressCallback()


def train(
    cfg: TrainConfig,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    rows: Any = None,
    rows_doc: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Train, save the model into ``cfg.output_dir`` and return the train.json contents.

    ``rows`` (a ``datasets.Dataset`` in the table's schema) replaces the rows read from ``cfg.data``,
    for tables derived from a run (the experiment's swapped pairs); ``rows_doc`` then says in
    train.json how they were made. ``callbacks`` are extra TrainerCallbacks."""
    log = log or (lambda _m: None)
    out = Path(cfg.output_dir)
    if is_trained(out):
        if not force:
            raise TrainedAlreadyError(
                f"{out} already holds a finished training run ({TRAIN_JSON}); retrain over it with {START_OVER}"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    use_cpu, precision = resolve_device(cfg)
    dataset = rows if rows is not None else load_table(cfg.data, cfg.data_table, cfg.data_revision)
    log(f"{cfg.kind}: {dataset.num_rows} rows of {cfg.data_table!r} from {cfg.data}")
    model, tokenizer = load_policy(cfg, precision)
    pool = None
    try:
        if cfg.kind == "grpo":
            from pipeline.verify import VerifierPool

            g = cfg.grpo
            pool = VerifierPool(g.verifier_workers, g.verifier_timeout_s, extraction=g.verifier_extraction)
            trainer = build_grpo_trainer(cfg, dataset, model, tokenizer, use_cpu, precision, pool)
        else:
            trainer = build_trainer(cfg, dataset, model, tokenizer, use_cpu, precision)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_progress_callback(cfg.kind, log))
        for callback in callbacks:
            trainer.add_callback(callback)
        resume = any((out / TRAINER_DIR).glob("checkpoint-*")) if cfg.save_steps else False
        result = trainer.train(resume_from_checkpoint=True if resume else None)
        _save(trainer, tokenizer, cfg, out)
    finally:
        if pool is not None:
            pool.close()
    history = [dict(h) for h in trainer.state.log_history]
    manifest = {
        "expo_data_version": __version__,
        "kind": cfg.kind,
        "config": json.loads(cfg.model_dump_json()),
        "data": describe_source(cfg.data, cfg.data_table, cfg.data_revision) if rows is None else rows_doc,
        "rows": dataset.num_rows,
        "initial_model": {"path": cfg.model, "revision": cfg.model_revision},
        "device": "cpu" if use_cpu else "cuda",
        "precision": precision,
        "resumed": resume,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.monotonic() - t0, 3),
        "log_history": history,
        **({"nurl": trainer.nurl_counts} if getattr(trainer, "nurl_counts", None) is not None else {}),
        "versions": package_versions(("torch", "transformers", "trl", "accelerate", "peft")),
    }
    write_json(manifest, out / TRAIN_JSON)  # last: marks the folder complete
    log(f"{cfg.kind}: {result.global_step} steps, loss {result.training_loss:.4f} -> {out}")
    return manifest
