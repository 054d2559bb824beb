"""ExP-GRPO: TRL's GRPO loss plus beta * NLL of a self-explanation after the plain CoT prompt.

The explanation is not one of the G rollouts and has no advantage: it is a supervised term that
gives the policy a positive on groups where no rollout is correct (METHOD.md). Placement matters:
the explanation is scored after the *plain* prompt (no answer hint), exactly the context the policy
will face at test time.

Alignment through TRL's batching: TRL generates for a whole generation batch, then shuffles the rows
and splits them into micro-batches. The explanation tokens therefore travel as tensors *in the same
dict* as the rollouts (``expo_ids``, ``expo_mask``, ``expo_weight``, one row per rollout row), so
every shuffle and split that moves a rollout moves its problem's explanation with it. Each problem
appears G times in a batch, once per rollout row, so every problem weighs the same in the term.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from pipeline.conditionings import NURL
from pipeline.leaks import detect_leak
from pipeline.prompts import encode_chat, get_template, system_of
from pipeline.train.config import ExpoTerm
from pipeline.verify import VerifierPool


class ExPGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the ExPO term. See the module docstring for the batching argument.

    ``questions`` (problem_id -> question text) is needed to regenerate explanations online and for
    NuRL's hinted prompts; ``hints`` (problem_id -> usable hint) turns NuRL's rule on.
    """

    def __init__(
        self,
        *args: Any,
        expo: ExpoTerm,
        pool: VerifierPool | None = None,
        questions: dict[str, str] | None = None,
        hints: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._nurl_hints = hints or {}
        self._nurl_inputs: list[dict[str, Any]] | None = None
        # Over the run: generation batches, groups seen, groups whose G rollouts all failed, groups
        # regenerated with their hint, all-wrong groups without a hint (train.json reports these).
        self.nurl_counts: dict[str, int] | None = (
            dict.fromkeys(("batches", "groups", "all_wrong", "fired", "no_hint"), 0) if hints else None
        )
        if hints:
            if not questions:
                raise ValueError("NuRL's hinted prompts need the problems' questions")
            if getattr(self.args, "vllm_mode", "colocate") == "server" and self.use_vllm:
                raise ValueError("NuRL regenerates single rows: use colocated vLLM or transformers generation")
        self.expo = expo
        self._expo_pool = pool
        self._expo_questions = questions or {}
        self._expo_template = get_template(expo.template)
        self._expo_regenerated: dict[str, str] = {}  # problem_id -> verified text by the current policy
        self._expo_regen_step: dict[str, int] = {}  # problem_id -> step of the last attempt
        self._expo_rewards: torch.Tensor | None = None
        self._expo_max_len = expo.max_length or self.max_completion_length
        if expo.regenerate_every:
            if expo.source != "explanation":
                raise ValueError("regenerate_every applies to explanations, not to expert solutions")
            if pool is None or not self._expo_questions:
                raise ValueError("regenerating explanations needs a verifier pool and the problems' questions")

    @property
    def _expo_tok(self) -> Any:
        """The text tokenizer, also when TRL holds a processor that wraps one."""
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    # ------------------------------------------------------------------------------------------
    # The coefficient

    def expo_beta(self) -> float:
        if self.expo.schedule == "constant":
            return self.expo.beta
        total = max(int(self.state.max_steps or 0), 1)
        frac = min(self.state.global_step / total, 1.0)
        return self.expo.beta + (self.expo.beta_end - self.expo.beta) * frac

    # ------------------------------------------------------------------------------------------
    # Batch preparation: explanation tokens joined to the rollout rows

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._expo_rewards = rewards  # gathered over processes: the all-wrong test needs whole groups
        return rewards

    def _expo_text(self, row: dict[str, Any]) -> str | None:
        if self.expo.source == "expert":
            return row.get("expert_solution") or None
        regenerated = self._expo_regenerated.get(row["problem_id"])
        return regenerated or row.get("explanation") or None

    def _all_wrong_rows(self, n_local: int) -> torch.Tensor:
        """1 for rows whose group has no rollout with a positive reward, per local row."""
        assert self._expo_rewards is not None
        per_func = torch.nan_to_num(self._expo_rewards, nan=0.0)
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).sum(dim=1)
        groups = rewards.view(-1, self.num_generations)
        all_wrong = (groups <= 0).all(dim=1).repeat_interleave(self.num_generations)
        start = self.accelerator.process_index * n_local
        return all_wrong[start : start + n_local].float()

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        self._nurl_inputs = inputs  # for _generate, which TRL hands the prompts only
        training = self.model.training
        if training and self.expo.regenerate_every:
            self._regenerate_explanations(inputs)
        output = super()._generate_and_score_completions(inputs)
        device = output["prompt_ids"].device
        texts = [self._expo_text(x) for x in inputs]
        weight = torch.tensor([1.0 if t else 0.0 for t in texts], device=device)
        if self.expo.apply_to == "all_wrong" and training:
            weight = weight * self._all_wrong_rows(len(inputs)).to(device)
        ids, mask = self._expo_tokens(texts)
        output["expo_ids"] = ids.to(device)
        output["expo_mask"] = mask.to(device)
        output["expo_weight"] = weight
        return output

    def _expo_tokens(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded explanation tokens, each ending in the EOS that stops a rollout, so the term
        also teaches the policy to stop where the explanation does; at most ``max_length`` tokens."""
        tok = self._expo_tok
        eos = self.eos_token_ids[0] if self.eos_token_ids else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        rows = []
        for t in texts:
            if not t:
                rows.append([])
                continue
            ids = list(tok.encode(t, add_special_tokens=False))
            # A text cut at the limit gets no EOS: teaching the policy to stop mid-explanation
            # would be worse than leaving the stop untaught.
            rows.append(ids[: self._expo_max_len] if len(ids) >= self._expo_max_len else [*ids, eos])
        width = max([len(r) for r in rows] + [1])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, : len(r)] = 1
        return ids, mask

    # ------------------------------------------------------------------------------------------
    # The loss

    def _compute_loss(self, model, inputs):  # type: ignore[override]
        loss = super()._compute_loss(model, inputs)
        beta = self.expo_beta()
        mode = "train" if self.model.training else "eval"
        if beta == 0.0 or "expo_ids" not in inputs:
            return loss
        nll, rows = self._expo_nll(model, inputs)
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        metrics = self._metrics[mode]
        metrics["expo/beta"].append(beta)
        metrics["expo/nll"].append(self.accelerator.gather(nll.detach()).nanmean().item())
        metrics["expo/rows_frac"].append(float(rows) / max(len(inputs["expo_weight"]), 1))
        return loss + beta * nll / normalizer

    def _expo_nll(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Token-mean NLL of the explanations of the weighted rows, after each row's plain prompt."""
        keep = inputs["expo_weight"] > 0
        if not bool(keep.any()):
            return inputs["prompt_ids"].new_zeros((), dtype=torch.float32), 0
        prompt_ids, prompt_mask = inputs["prompt_ids"][keep], inputs["prompt_mask"][keep]
        expo_ids, expo_mask = inputs["expo_ids"][keep], inputs["expo_mask"][keep]
        width = expo_ids.size(1)
        input_ids = torch.cat([prompt_ids, expo_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, expo_mask], dim=1)
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=width + 1).logits
        logits = logits[:, :-1, :].float()  # position t predicts explanation token t
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), expo_ids.reshape(-1), reduction="none"
        ).view_as(expo_ids)
        weights = expo_mask.float()
        return (nll * weights).sum() / weights.sum().clamp(min=1.0), int(keep.sum())

    # ------------------------------------------------------------------------------------------
    # NuRL: hints for groups that all failed

    def _generate(self, prompts: list):  # type: ignore[override]
        out = super()._generate(prompts)
        inputs = self._nurl_inputs
        if not self._nurl_hints or not self.model.training or inputs is None or len(inputs) != len(prompts):
            return out
        return self._nurl(prompts, inputs, out)

    def _nurl(self, prompts: list, inputs: list[dict[str, Any]], out: tuple) -> tuple:
        """When all G rollouts of a problem fail, the group is generated again: G-1 rows after the
        prompt with the problem's hint in the slot (and the loss then uses that prompt, the one
        they were sampled from, as NuRL does), one row after the plain prompt, fresh."""
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images = out
        self._calculate_rewards(inputs, prompts, completions, completion_ids)  # our override keeps them
        all_wrong = self._all_wrong_rows(len(inputs)).bool().tolist()
        g = self.num_generations
        first = self.accelerator.process_index * len(inputs)
        rows: list[int] = []
        new_prompts: list[Any] = []
        counts = self.nurl_counts
        assert counts is not None
        counts["batches"] += 1
        for i, row in enumerate(inputs):
            position = (first + i) % g
            hint = self._nurl_hints.get(row["problem_id"])
            if position == 0:
                counts["groups"] += 1
                counts["all_wrong"] += int(all_wrong[i])
                counts["fired"] += int(all_wrong[i] and hint is not None)
                counts["no_hint"] += int(all_wrong[i] and hint is None)
            if not all_wrong[i] or hint is None:
                continue
            rows.append(i)
            new_prompts.append(prompts[i] if position == 0 else self._nurl_prompt(row, hint))
        metrics = self._metrics["train"]
        fired = sum(1 for i in rows if (first + i) % g == 0)
        metrics["nurl/fired_groups"].append(float(fired))
        metrics["nurl/fired_frac"].append(fired / max(len(inputs) // g, 1))
        if not rows:
            return out
        again = super()._generate(new_prompts)
        prompt_ids, completion_ids, completions = list(prompt_ids), list(completion_ids), list(completions)
        logprobs = list(logprobs) if logprobs is not None else None
        for k, i in enumerate(rows):
            prompt_ids[i], completion_ids[i], completions[i] = again[0][k], again[1][k], again[3][k]
            if logprobs is not None and again[4] is not None:
                logprobs[i] = again[4][k]
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images

    def _nurl_prompt(self, row: dict[str, Any], hint: str) -> list[dict[str, str]]:
        """The row's plain prompt with the hint in the template's slot: the prompt the generation
        stage's ``abstract_hint`` requests used, so hinted rollouts match the hinted samples."""
        question = self._expo_questions[row["problem_id"]]
        return self._expo_template.conversation(question, NURL.fill(hint=hint), system_of(row["prompt"]))

    # ------------------------------------------------------------------------------------------
    # Online explanations

    def _regenerate_explanations(self, inputs: list[dict[str, Any]]) -> None:
        """Let the current policy rewrite the explanation of each problem in the batch whose last
        attempt is ``regenerate_every`` steps old; keep a rewrite only if it verifies and does not
        leak the hint, else the problem keeps its previous explanation."""
        step = self.state.global_step
        every = self.expo.regenerate_every
        due: dict[str, dict[str, Any]] = {}
        for row in inputs:
            pid = row["problem_id"]
            last = self._expo_regen_step.get(pid)
            if pid not in due and (last is None or step - last >= every) and pid in self._expo_questions:
                due[pid] = row
        if not due:
            return
        tok = self._expo_tok
        template = self._expo_template
        golds = {pid: str(row["reward_model"]["ground_truth"]) for pid, row in due.items()}
        # The system turn the row's plain prompt was generated with (prompts.system), if any.
        prompts = [
            encode_chat(
                tok,
                template.messages(
                    "explanation", self._expo_questions[pid], golds[pid], system=system_of(row["prompt"])
                ),
            )
            for pid, row in due.items()
        ]
        texts = self._sample(prompts)
        assert self._expo_pool is not None
        verdicts = self._expo_pool.verify_groups([(golds[pid], [t]) for pid, t in zip(due, texts, strict=True)])
        kept = 0
        for pid, text, vs in zip(due, texts, verdicts, strict=True):
            self._expo_regen_step[pid] = step
            leak = detect_leak(text, template.hint(golds[pid]), self._expo_questions[pid])
            if vs[0].verdict == "correct" and leak is None:
                self._expo_regenerated[pid] = text
                kept += 1
        self._metrics["train"]["expo/regenerated"].append(float(len(due)))
        self._metrics["train"]["expo/regenerated_kept"].append(float(kept))

    def _sample(self, prompts: list[list[int]]) -> list[str]:
        tok = self._expo_tok
        model = self.accelerator.unwrap_model(self.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_ids[0]
        width = max(len(p) for p in prompts)
        device = self.accelerator.device
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding, as generation needs
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=self.expo.regenerate_temperature > 0,
                    temperature=self.expo.regenerate_temperature or None,
                    top_p=1.0,
                    max_new_tokens=self.expo.regenerate_max_tokens,
                    pad_token_id=pad,
                    eos_token_id=self.eos_token_ids,
                )
        finally:
            model.train(was_training)
        return [tok.decode(row[width:], skip_special_tokens=True) for row in out.tolist()]
