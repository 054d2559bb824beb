"""The simulated engine (``model.engine: sim``): for benchmarks and tests of the orchestration only.

It implements the engine protocol as the real engines do, scoring included, so a shard goes through
exactly the same stages (render, generate, score, verify, write). It loads only the tokenizer of
``model.path`` (its fast tokenizer: prompts are rendered and tokenised for real) and no weights. Each ``generate`` call
sleeps ``model.sim.seconds_per_call`` (sleeping, not computing, so a 2-core machine can run eight
of them side by side) and returns texts of ``model.sim.text_tokens`` tokens; each ``score`` call
sleeps ``model.sim.score_seconds_per_call``.

Texts and log-probs are pure functions of the request's seed and the sample index. A text whose
prompt carries the answer sentence (``... final answer is X``) ends in ``\\boxed{X}``; any other
ends in a number drawn from its seed, which the verifier labels as it labels a model's answer (the
gold now and then, by chance). A text that reaches ``max_tokens`` is cut there (``length``); the
others end with the tokenizer's end-of-sequence token, as a real engine returns it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from pipeline.engines.base import Completion, Request, Result, check_score_inputs, derive_seed, too_long

if TYPE_CHECKING:
    from pipeline.config import ModelConfig

_ANSWER = re.compile(r"final answer is\s*\$?([^$\n]+?)\$?\s*[.\n]")
_FILLER = ("First", "we", "note", "the", "given", "values", "and", "then", "combine", "them", "step", "by", "step.")


class SimEngine:
    name = "sim"
    supports_request_seed = True

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        """``seed`` is unused: every request carries its own."""
        # The fast tokenizer class itself, not AutoTokenizer: the same tokenizer.json and chat
        # template, without importing torch (AutoTokenizer's module imports it), which cost every
        # worker of a scaling benchmark 5 s of CPU that no shard ever used.
        from transformers import PreTrainedTokenizerFast

        from pipeline.config import SimConfig

        self.model_id = cfg.path
        self.sim = cfg.sim or SimConfig()
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg.path, revision=cfg.revision)
        self.max_model_len = cfg.max_model_len or 4096
        self._texts: dict[tuple[str, int], tuple[str, list[int]]] = {}

    def _text(self, answer: str, n_tokens: int) -> tuple[str, list[int]]:
        """A text of about ``n_tokens`` tokens ending in the boxed answer (cached: the words are the
        same for every text of a length, only the answer differs)."""
        key = (answer, n_tokens)
        if key not in self._texts:
            tail = f" The final answer is $\\boxed{{{answer}}}$."
            budget = max(n_tokens - len(self.tokenizer.encode(tail, add_special_tokens=False)), 0)
            words: list[str] = []
            while len(self.tokenizer.encode(" ".join(words), add_special_tokens=False)) < budget:
                words.append(_FILLER[len(words) % len(_FILLER)])
            text = " ".join(words) + tail
            if len(self._texts) > 4096:
                self._texts.clear()
            self._texts[key] = (text, list(self.tokenizer.encode(text, add_special_tokens=False)))
        return self._texts[key]

    def generate(self, requests: list[Request], call_seed: int = 0) -> list[Result]:
        if self.sim.seconds_per_call:
            time.sleep(self.sim.seconds_per_call)
        out = []
        for r in requests:
            error = too_long(len(r.prompt_ids), self.max_model_len)
            if error:
                out.append(Result(r.request_id, len(r.prompt_ids), error=error))
                continue
            found = _ANSWER.search(self.tokenizer.decode(r.prompt_ids[-256:]))
            completions = []
            for i in range(r.sampling.n):
                seed = derive_seed(r.sampling.seed, i)
                answer = found.group(1).strip() if found else str(seed % 97)
                room = min(r.sampling.max_tokens, self.max_model_len - len(r.prompt_ids) - 1)
                text, ids = self._text(answer, self.sim.text_tokens)
                if len(ids) >= room:
                    ids, finish = ids[:room], "length"
                    text = self.tokenizer.decode(ids)
                else:
                    ids, finish = [*ids, self.tokenizer.eos_token_id], "stop"
                logprobs = [-0.05 - ((seed + k) % 7) / 20 for k in range(len(ids))]
                completions.append(Completion(text, ids, finish, sum(logprobs), logprobs))
            out.append(Result(r.request_id, len(r.prompt_ids), completions))
        return out

    def score(self, prefix_ids: list[list[int]], target_ids: list[list[int]]) -> list[list[float]]:
        check_score_inputs(prefix_ids, target_ids, self.max_model_len)
        if self.sim.score_seconds_per_call:
            time.sleep(self.sim.score_seconds_per_call)
        return [
            [-0.1 - ((len(p) + k) % 5) / 10 for k in range(len(t))] for p, t in zip(prefix_ids, target_ids, strict=True)
        ]

    def close(self) -> None:
        self._texts.clear()
