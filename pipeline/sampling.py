"""One sampling contract for both engines: the parameters a request is sampled with, resolved once.

A model folder may carry a ``generation_config.json`` (Qwen2.5-Instruct's sets temperature 0.7,
top_p 0.8, top_k 20 and repetition_penalty 1.05). transformers applies it under whatever a caller
passes; vLLM ignores it (we load it with ``generation_config="vllm"``). Left to the engines, the same
config would sample differently on each. So the engines apply nothing of their own: every request
carries all five parameters below, resolved here from the run config and, under
``model_defaults: apply``, from the model's file.

- ``ignore`` (the default): the config's values, and ours where it sets none.
- ``apply``: for each parameter the config leaves unset, the model's value when its file sets one.
  A file that asks for what these five cannot express (beam search, no_repeat_ngram_size, ...) is
  refused: applying it on one engine and not the other is the bug this module exists to prevent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pipeline.config import GenerationConfig, SamplingConfig
from pipeline.errors import ConfigError

# The parameters both engines implement alike, and their neutral values (0 = off for top_k/min_p).
DEFAULTS: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}
# Keys of a generation config that do not change how a token is sampled (ids, bookkeeping) or that we
# always set ourselves (lengths: ``max_tokens`` is explicit; the number of samples is ``n``).
NOT_SAMPLING = {
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "max_length",
    "max_new_tokens",
    "num_return_sequences",
    "use_cache",
    "cache_implementation",
    "return_dict_in_generate",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "do_sample",  # read below: false means greedy
}


@lru_cache(maxsize=16)
def _load(path: str, revision: str | None) -> tuple[tuple[str, Any], ...]:
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        values = HFGenerationConfig.from_pretrained(path, revision=revision).to_diff_dict()
    except OSError:  # no generation_config.json: nothing to apply
        return ()
    return tuple(sorted((k, v) for k, v in values.items() if k != "transformers_version"))


def model_generation_config(path: str, revision: str | None = None) -> dict[str, Any]:
    """What the model's ``generation_config.json`` sets (values transformers' defaults do not have)."""
    return dict(_load(path, revision))


def request_defaults(gen: GenerationConfig, path: str, revision: str | None = None) -> dict[str, Any]:
    """The model file's values that requests need: none unless a sampling block applies them.
    (Reading the file goes through transformers' GenerationConfig, whose import pulls in torch:
    seconds of CPU in every worker process for a file a run that ignores it never uses.)"""
    blocks = [gen.sampling, gen.explanation_sampling]
    if any(b is not None and b.model_defaults == "apply" for b in blocks):
        return model_generation_config(path, revision)
    return {}


def _unsupported(model: dict[str, Any]) -> dict[str, Any]:
    """Keys of the model's file that change sampling beyond the five, with non-neutral values."""
    from transformers import GenerationConfig as HFGenerationConfig

    neutral = HFGenerationConfig()._get_default_generation_params()
    return {
        k: v
        for k, v in model.items()
        if k not in DEFAULTS and k not in NOT_SAMPLING and v is not None and v != neutral.get(k, None)
    }


def resolve(s: SamplingConfig, model: dict[str, Any]) -> dict[str, float | int]:
    """The five parameters a request of this sampling block is sampled with."""
    out: dict[str, float | int] = {}
    for key, default in DEFAULTS.items():
        value = getattr(s, key)
        if value is None and s.model_defaults == "apply":
            # do_sample: false asks for greedy decoding, whatever temperature the file also holds
            value = 0.0 if key == "temperature" and model.get("do_sample") is False else model.get(key)
        out[key] = type(default)(default if value is None else value)
    if s.model_defaults == "apply":
        bad = _unsupported(model)
        if bad:
            shown = ", ".join(f"{k}={v!r}" for k, v in sorted(bad.items()))
            raise ConfigError(
                f"generation.sampling.model_defaults is 'apply', but the model's generation_config.json sets {shown}, "
                "which neither engine can apply the same way (only temperature, top_p, top_k, min_p and "
                "repetition_penalty are). Use model_defaults: ignore and set the sampling keys you want."
            )
    return out


def describe(gen: Any, model_path: str, revision: str | None) -> dict[str, Any]:
    """The sampling a run's requests get, for run.json: per kind of request the effective values,
    and what the model's file set (applied or not)."""
    model = model_generation_config(model_path, revision)
    blocks = {"cot": gen.sampling, "explanation": gen.explanation_params}
    return {
        **{
            kind: {"model_defaults": s.model_defaults, **resolve(s, model), "max_tokens": s.max_tokens}
            for kind, s in blocks.items()
        },
        "model_generation_config": {k: v for k, v in model.items() if k not in NOT_SAMPLING or k == "do_sample"},
    }
