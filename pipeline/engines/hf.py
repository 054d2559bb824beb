"""The transformers engine: for machines without vLLM, and a second implementation of the protocol.

Requests with identical sampling are batched (left padding) up to ``batch_size`` prompts. Log-probs
are computed from raw logits (``output_logits``), as vLLM's default ``raw_logprobs`` does, so
``cumulative_logprob`` means the same in both engines.
"""

from __future__ import annotations

from itertools import groupby
from typing import TYPE_CHECKING, Any

from pipeline.engines.base import (
    Completion,
    Request,
    Result,
    Sampling,
    check_score_inputs,
    derive_seed,
    engine_failure,
    stop_token_ids,
    too_long,
)

if TYPE_CHECKING:
    from pipeline.config import ModelConfig


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str, config: Any) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    stored = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    if stored in (torch.float32, "float32"):
        return torch.float32
    return torch.bfloat16


class HFEngine:
    name = "hf"
    supports_request_seed = False

    def __init__(self, cfg: ModelConfig, seed: int = 0, score_batch_tokens: int = 16384):
        """``seed`` is unused: transformers samples from the global generator, which ``generate``
        reseeds per batch from the call's seed."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.model_id = cfg.path
        self.device = _pick_device(cfg.device)
        hub = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        config = AutoConfig.from_pretrained(cfg.path, **hub)
        self.torch_dtype = _pick_dtype(cfg.dtype, self.device, config)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, **hub)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=self.torch_dtype, **hub).to(self.device)
        self.model.eval()
        context = getattr(config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(cfg.max_model_len, context) if cfg.max_model_len else context
        self.batch_size = cfg.hf_batch_size
        self.score_batch_tokens = score_batch_tokens
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0]
        self._torch = torch

    # generation -------------------------------------------------------------------------------
    def generate(self, requests: list[Request], call_seed: int = 0) -> list[Result]:
        results: dict[str, Result] = {}
        runnable: list[Request] = []
        for r in requests:
            error = too_long(len(r.prompt_ids), self.max_model_len)
            if error:
                results[r.request_id] = Result(r.request_id, len(r.prompt_ids), [], error)
            else:
                runnable.append(r)

        def key(r: Request) -> tuple:
            s = r.sampling
            return (s.n, s.temperature, s.top_p, s.max_tokens)

        batch_no = 0
        # Keep request order within a sampling group: batches are a pure function of the input.
        for _, group in groupby(sorted(runnable, key=key), key=key):
            group_list = list(group)
            for start in range(0, len(group_list), self.batch_size):
                batch = group_list[start : start + self.batch_size]
                self._torch.manual_seed(derive_seed(call_seed, batch_no, batch[0].sampling.seed))
                with engine_failure("transformers", "generate"):
                    generated = self._generate_batch(batch)
                for r, res in zip(batch, generated, strict=True):
                    results[r.request_id] = res
                batch_no += 1
        return [results[r.request_id] for r in requests]

    def _generate_batch(self, batch: list[Request]) -> list[Result]:
        torch = self._torch
        s: Sampling = batch[0].sampling
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention[i, width - len(r.prompt_ids) :] = 1
        max_new = min(s.max_tokens, self.max_model_len - width)
        greedy = s.temperature == 0
        # Greedy samples are identical: decode once and repeat (transformers refuses n>1 greedy).
        per_prompt = 1 if greedy else s.n
        kwargs: dict[str, Any] = dict(
            do_sample=not greedy,
            max_new_tokens=max(1, max_new),
            num_return_sequences=per_prompt,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if not greedy:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        new_tokens = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float()  # (batch*n, steps, vocab), raw
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(-1, new_tokens.to(logprobs.device).unsqueeze(-1)).squeeze(-1).cpu()
        results = []
        stop = set(self.stop_ids)
        for i, r in enumerate(batch):
            completions = []
            for j in range(s.n):
                row = i * per_prompt + (j if not greedy else 0)
                ids = new_tokens[row].tolist()
                finish = "length"
                end = len(ids)
                for k, t in enumerate(ids):
                    if t in stop:
                        finish, end = "stop", k + 1
                        break
                kept = ids[:end]
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                completions.append(
                    Completion(
                        text=text,
                        token_ids=kept,
                        finish_reason=finish,
                        cumulative_logprob=float(chosen[row, :end].sum()),
                    )
                )
            results.append(Result(r.request_id, len(r.prompt_ids), completions))
        return results

    # scoring ----------------------------------------------------------------------------------
    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log p(target_t | prefix, target_<t) for each pair, in fp32."""
        check_score_inputs(prefix_ids, target_ids, self.max_model_len)
        torch = self._torch
        order = sorted(range(len(prefix_ids)), key=lambda i: len(prefix_ids[i]) + len(target_ids[i]))
        out: list[list[float] | None] = [None] * len(prefix_ids)
        batch: list[int] = []

        def flush() -> None:
            if not batch:
                return
            seqs = [prefix_ids[i] + target_ids[i] for i in batch]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            with torch.no_grad(), engine_failure("transformers", "scoring"):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                p, t = len(prefix_ids[i]), len(target_ids[i])
                positions = torch.arange(p - 1, p + t - 1, device=logprobs.device)
                tok = torch.tensor(target_ids[i], device=logprobs.device)
                out[i] = logprobs[row, positions, tok].cpu().tolist()
            batch.clear()

        for i in order:
            total = len(prefix_ids[i]) + len(target_ids[i])
            longest = max([total] + [len(prefix_ids[j]) + len(target_ids[j]) for j in batch])
            if batch and longest * (len(batch) + 1) > self.score_batch_tokens:
                flush()
            batch.append(i)
        flush()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
