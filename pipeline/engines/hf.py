"""The transformers engine: for machines without vLLM, and a second implementation of the protocol.

Requests with identical sampling are batched (left padding) up to ``batch_size`` prompts. Log-probs
are computed from raw logits, as vLLM's default ``raw_logprobs`` does, so ``cumulative_logprob``
and ``token_logprobs`` mean the same in both engines.

Memory is bounded by the KV cache, not by ``max_tokens`` or the vocabulary: generation keeps no
logits (a forward hook turns each step's raw logits into the sampled token's log-prob, holding one
step at a time), and scoring runs the model body on at most ``model.hf_score_tokens`` tokens per
pass and the output layer only at the target positions, a bounded number of positions at a time
(with a 152k vocabulary every position's fp32 logits cost 0.6 MB).

The model's own ``generation_config.json`` is set aside at load: transformers would apply it under
what we pass, vLLM would not, so every sampling parameter comes explicitly from the request
(``pipeline.sampling`` resolves them, once for both engines).
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
    # fp32 logits computed at once while scoring; 128 MiB is ~220 positions of a 152k vocabulary.
    LOGITS_BYTES = 128 * 1024 * 1024

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        """``seed`` is unused: transformers samples from the global generator, which ``generate``
        reseeds per batch from the call's seed."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

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
        self.score_tokens = cfg.hf_score_tokens
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0]
        # Nothing of the model's file may fill what a request leaves at its neutral value.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, bos_token_id=self.tokenizer.bos_token_id
        )
        self._torch = torch
        self._head_split = self._check_head_split()

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
            return (s.n, s.max_tokens, *s.params.values())

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

    def generation_kwargs(self, s: Sampling) -> dict[str, Any]:
        """What ``model.generate`` is given for this sampling: every parameter, explicitly."""
        greedy = s.temperature == 0
        kwargs: dict[str, Any] = {"do_sample": not greedy, "repetition_penalty": s.repetition_penalty}
        if greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
        else:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p or None)
        return kwargs

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
        steps: list[Any] = []  # per decode step, the sampled token's raw log-prob in each row
        pending: list[Any] = [None]  # the last step's raw log-softmax, until its token is known

        def on_forward(_module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> None:
            # A forward's input ends with the token sampled from the previous forward's logits.
            if pending[0] is not None:
                ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else _args[0]
                sampled = ids[:, -1:].to(pending[0].device)
                steps.append(pending[0].gather(-1, sampled).squeeze(-1).cpu())
            pending[0] = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1)

        handle = self.model.register_forward_hook(on_forward, with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max(1, max_new),
                    num_return_sequences=per_prompt,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    return_dict_in_generate=True,
                    **self.generation_kwargs(s),
                )
        finally:
            handle.remove()
        new_tokens = out.sequences[:, width:].cpu()
        if len(steps) < new_tokens.shape[1]:  # the last token sampled is never fed back
            last = new_tokens[:, len(steps) : len(steps) + 1].to(pending[0].device)
            steps.append(pending[0].gather(-1, last).squeeze(-1).cpu())
        pending[0] = None
        chosen = torch.stack(steps, dim=1)
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
                lps = chosen[row, :end].tolist()
                completions.append(
                    Completion(
                        text=self.tokenizer.decode(kept, skip_special_tokens=True),
                        token_ids=kept,
                        finish_reason=finish,
                        cumulative_logprob=float(sum(lps)),
                        token_logprobs=lps,
                    )
                )
            results.append(Result(r.request_id, len(r.prompt_ids), completions))
        return results

    # scoring ----------------------------------------------------------------------------------
    def _check_head_split(self) -> bool:
        """Whether the model body plus the output layer give the model's own logits. True for the
        usual decoders (Qwen, Llama, Mistral); a model that transforms its logits after the output
        layer in a way we do not know is scored through its whole forward instead."""
        torch = self._torch
        try:
            body, head = self.model.get_decoder(), self.model.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return False
        if body is None or head is None:
            return False
        ids = torch.tensor([[self.pad_id] + self.stop_ids[:1] * 3], device=self.device)
        with torch.no_grad():
            full = self.model(input_ids=ids).logits.float()
            split = self._head(body(input_ids=ids).last_hidden_state).float()
        return bool(torch.allclose(full, split, atol=1e-4, rtol=1e-4))

    def _head(self, hidden: Any) -> Any:
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = self._torch.tanh(logits / cap) * cap
        return logits

    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log p(target_t | prefix, target_<t) for each pair, in fp32."""
        check_score_inputs(prefix_ids, target_ids, self.max_model_len)
        order = sorted(range(len(prefix_ids)), key=lambda i: len(prefix_ids[i]) + len(target_ids[i]))
        out: list[list[float] | None] = [None] * len(prefix_ids)
        batch: list[int] = []
        for i in order:
            total = len(prefix_ids[i]) + len(target_ids[i])  # ascending: the newest is the widest
            if batch and total * (len(batch) + 1) > self.score_tokens:
                self._score_batch(prefix_ids, target_ids, batch, out)
                batch = []
            batch.append(i)
        if batch:
            self._score_batch(prefix_ids, target_ids, batch, out)
        return out  # type: ignore[return-value]

    def _score_batch(
        self, prefix_ids: list[list[int]], target_ids: list[list[int]], batch: list[int], out: list
    ) -> None:
        """One forward over the batch (right padding); log-probs at the target positions only."""
        torch = self._torch
        seqs = [prefix_ids[i] + target_ids[i] for i in batch]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        rows, positions, tokens = [], [], []
        for row, (i, seq) in enumerate(zip(batch, seqs, strict=True)):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            p, t = len(prefix_ids[i]), len(target_ids[i])
            rows += [row] * t
            positions += range(p - 1, p + t - 1)  # the logits at position k predict token k+1
            tokens += target_ids[i]
        with torch.no_grad(), engine_failure("transformers", "scoring"):
            inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "use_cache": False}
            if self._head_split:
                hidden = self.model.get_decoder()(**inputs).last_hidden_state
                hidden = hidden[torch.tensor(rows), torch.tensor(positions)]
                del inputs
                vocab = self.model.get_output_embeddings().weight.shape[0]
                chunk = max(1, self.LOGITS_BYTES // (4 * vocab))
                parts = []
                for at in range(0, len(tokens), chunk):
                    logits = self._head(hidden[at : at + chunk]).float()
                    tok = torch.tensor(tokens[at : at + chunk], device=logits.device).unsqueeze(-1)
                    parts.append((logits.gather(-1, tok).squeeze(-1) - torch.logsumexp(logits, dim=-1)).cpu())
                    del logits
                lps = torch.cat(parts)
            else:
                logits = self.model(**inputs).logits
                lps = torch.log_softmax(logits.float(), dim=-1)[torch.tensor(rows), torch.tensor(positions)]
                lps = lps.gather(-1, torch.tensor(tokens, device=lps.device).unsqueeze(-1)).squeeze(-1).cpu()
        at = 0
        for i in batch:
            t = len(target_ids[i])
            out[i] = lps[at : at + t].tolist()
            at += t

    def close(self) -> None:
        self.model = None
