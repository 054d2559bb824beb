"""The engine protocol: token ids in, completions and teacher-forced log-probs out.

Both backends receive token ids, not text: the prompt is rendered and tokenised once, by us, so the
vllm and hf engines see exactly the same input and a row's ``prompt_tokens`` means the same thing
whichever engine wrote it.

Seeding: every request carries its own seed (derived from the run seed and the sample's identity).
Engines that honour per-request seeds (vLLM, GPU and CPU) make a request's output independent of its
batch. An engine that cannot (transformers ``generate`` samples from one global generator) reseeds
from ``call_seed`` before each batch, so a call's outputs depend only on its requests and that
seed: a shard rerun after a crash reproduces the same rows either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import EngineError


@dataclass(frozen=True)
class Sampling:
    """Always explicit: no engine default (vLLM's max_tokens=16, a model's generation_config) applies;
    ``pipeline.sampling`` resolves these values once for both engines. top_k 0 and min_p 0 are off."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0: off)")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def params(self) -> dict[str, float | int]:
        """The sampling parameters proper (what the engines must both apply)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
        }


@dataclass(frozen=True)
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: Sampling


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length
    cumulative_logprob: float | None  # sum of raw-model log-probs of the sampled tokens
    # Raw-model log-prob of each sampled token (stop token included), when the engine returns them:
    # a CoT's nll_mean comes from these, with no teacher-forced pass (pipeline.scoring).
    token_logprobs: list[float] | None = None


@dataclass
class Result:
    request_id: str
    prompt_tokens: int
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set instead of completions when this request could not run


@runtime_checkable
class Engine(Protocol):
    name: str
    model_id: str
    tokenizer: Any
    max_model_len: int
    supports_request_seed: bool

    def generate(self, requests: list[Request], call_seed: int = 0) -> list[Result]: ...

    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]: ...

    def close(self) -> None: ...


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (run seed, problem id, kind...): same inputs, same seed."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def stop_token_ids(tokenizer: Any, generation_config: Any | None) -> list[int]:
    """EOS of the tokenizer plus any the model's generation config lists (e.g. Qwen's two)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for t in extra or []:
        if int(t) not in ids:
            ids.append(int(t))
    return ids


# The context rule both engines apply: a sequence fits when it leaves room for one more token
# (a generated one, or the one vLLM samples after a scored prompt). The same rule in both engines
# means the same request becomes an error row, or a null score, whichever engine runs it.


def fits(tokens: int, max_model_len: int) -> bool:
    return tokens < max_model_len


def too_long(prompt_len: int, max_model_len: int) -> str | None:
    if not fits(prompt_len, max_model_len):
        return f"prompt has {prompt_len} tokens; the model's context is {max_model_len}"
    return None


@contextmanager
def engine_failure(engine: str, what: str) -> Iterator[None]:
    """Turn any failure of the model call itself into :class:`EngineError`, so both engines fail a
    shard the same way (and the flow retries it with a fresh engine)."""
    try:
        yield
    except EngineError:
        raise
    except Exception as e:
        raise EngineError(f"{engine} {what} failed: {type(e).__name__}: {e}") from e


def check_score_inputs(prefix_ids: list[list[int]], target_ids: list[list[int]], max_model_len: int) -> None:
    """What ``score`` refuses, in both engines alike. Callers (``pipeline.scoring``) leave out pairs
    that do not fit, so a refusal here is a bug in the caller, not bad input."""
    if len(prefix_ids) != len(target_ids):
        raise ValueError(f"score(): {len(prefix_ids)} prefixes but {len(target_ids)} targets")
    for i, (p, t) in enumerate(zip(prefix_ids, target_ids, strict=True)):
        if not p:
            raise ValueError(f"score(): prefix {i} is empty; the first target token needs context")
        if not t:
            raise ValueError(f"score(): target {i} is empty")
        if not fits(len(p) + len(t), max_model_len):
            raise ValueError(f"score(): pair {i} has {len(p) + len(t)} tokens; the model's context is {max_model_len}")
