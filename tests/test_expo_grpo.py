"""The ExPO term of ExP-GRPO, checked by hand on the real tiny model and TRL's real GRPOTrainer."""

from __future__ import annotations

import pytest
import torch

from pipeline.prompts import EXPO_V1, render_chat
from pipeline.train.config import ExpoTerm

QUESTIONS = {f"p{k}": f"Problem number {k}: what is {k} + {k}?" for k in range(1, 5)}
GOLDS = {f"p{k}": str(2 * k) for k in range(1, 5)}


def _rows(n: int = 4, expert: bool = False) -> list[dict]:
    rows = []
    for k in range(1, n + 1):
        pid = f"p{k}"
        rows.append(
            {
                "prompt": EXPO_V1.messages("cot", QUESTIONS[pid]),
                "problem_id": pid,
                "reward_model": {"style": "rule", "ground_truth": GOLDS[pid]},
                "explanation": f"For problem number {k}, {k} + {k} = {2 * k}. The answer is \\boxed{{{2 * k}}}.",
                "expert_solution": f"Expert: problem number {k} doubles {k}, giving \\boxed{{{2 * k}}}."
                if expert
                else None,
            }
        )
    return rows


def _args(tmp_path, **kw):
    from trl import GRPOConfig

    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        temperature=1.0,
        loss_type="grpo",
        learning_rate=1e-5,
        logging_steps=1,
    )
    base.update(kw)
    return GRPOConfig(**base)


def _trainer(tiny_model, tmp_path, pool, expo: ExpoTerm, rows=None, cls=None, **kw):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.rewards import VerifierReward
    from pipeline.train.expo_grpo import ExPGRPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cls = cls or ExPGRPOTrainer
    return cls(
        model=model,
        reward_funcs=[VerifierReward("reward_model", pool)],
        args=_args(tmp_path, **kw),
        train_dataset=Dataset.from_list(rows or _rows()),
        processing_class=tok,
        expo=expo,
        pool=pool,
    )


def _batch(trainer, rows):
    """A generation batch as TRL's sampler yields it: each problem G times in a row."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(1)
    g = trainer.num_generations
    return trainer._generate_and_score_completions([r for r in rows for _ in range(g)])


def _direct_nll(model, tok, rows, texts, eos) -> torch.Tensor:
    """Token-mean NLL of each text after its row's plain prompt, one unpadded sequence at a time."""
    total, count = torch.zeros(()), 0
    for row, text in zip(rows, texts, strict=True):
        prompt = tok.encode(render_chat(tok, row["prompt"]), add_special_tokens=False)
        target = [*tok.encode(text, add_special_tokens=False), eos]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        for t, token in enumerate(target):
            total -= logp[len(prompt) + t - 1, token]
        count += len(target)
    return total / count


def test_expo_term_equals_beta_times_the_directly_computed_nll(tiny_model, tmp_path, pool):
    from trl import GRPOTrainer

    beta = 0.5
    rows = _rows(2)
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=beta, max_length=128), rows=rows)
    inputs = _batch(trainer, rows)
    # TRL's prompt tokens are the plain CoT prompt we render: the context the term is placed after.
    tok = trainer.processing_class
    for i, row in enumerate(r for r in rows for _ in range(2)):
        ids = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()].tolist()
        assert ids == tok.encode(render_chat(tok, row["prompt"]), add_special_tokens=False)
    with torch.no_grad():
        expo_loss = trainer._compute_loss(trainer.model, inputs)
        grpo_loss = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    repeated = [r for r in rows for _ in range(2)]
    direct = _direct_nll(trainer.model, tok, repeated, [r["explanation"] for r in repeated], trainer.eos_token_ids[0])
    assert direct > 0
    assert (expo_loss - grpo_loss).item() == pytest.approx(beta * direct.item(), rel=1e-4, abs=1e-6)


def test_with_beta_zero_the_loss_is_trls_grpo_loss(tiny_model, tmp_path, pool):
    from trl import GRPOTrainer

    rows = _rows(2)
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=0.0), rows=rows)
    inputs = _batch(trainer, rows)
    plain = GRPOTrainer(
        model=trainer.model,
        reward_funcs=trainer.reward_funcs,
        args=_args(tmp_path),
        train_dataset=trainer.train_dataset,
        processing_class=trainer.processing_class,
    )
    plain.current_gradient_accumulation_steps = 1
    plain_inputs = {k: v for k, v in inputs.items() if not k.startswith("expo_")}
    with torch.no_grad():
        ours = trainer._compute_loss(trainer.model, inputs)
        theirs = plain._compute_loss(plain.model, plain_inputs)
    assert torch.equal(ours, theirs)


def test_expert_source_and_missing_texts(tiny_model, tmp_path, pool):
    """source=expert scores the expert solution; a row without a text gets weight 0."""
    rows = _rows(2, expert=True)
    rows[1]["expert_solution"] = None
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=1.0, source="expert", max_length=128), rows=rows)
    inputs = _batch(trainer, rows)
    assert inputs["expo_weight"].tolist() == [1.0, 1.0, 0.0, 0.0]
    tok = trainer.processing_class
    first = tok.decode(inputs["expo_ids"][0][inputs["expo_mask"][0].bool()], skip_special_tokens=True)
    assert first.startswith("Expert: problem number 1")
    with torch.no_grad():
        nll, n = trainer._expo_nll(trainer.model, inputs)
    direct = _direct_nll(trainer.model, tok, [rows[0]] * 2, [rows[0]["expert_solution"]] * 2, trainer.eos_token_ids[0])
    assert n == 2 and nll.item() == pytest.approx(direct.item(), rel=1e-4)


def test_a_cut_explanation_gets_no_eos(tiny_model, tmp_path, pool):
    """Rollouts are cut at max_completion_length (8 here); an explanation cut the same way must not
    end in EOS, or the term would teach the policy to stop mid-sentence."""
    rows = _rows(1)
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=1.0), rows=rows)
    ids, mask = trainer._expo_tokens([rows[0]["explanation"], "\\boxed{2}"])
    eos = trainer.eos_token_ids[0]
    assert mask[0].sum() == 8 and eos not in ids[0].tolist()
    short = ids[1][mask[1].bool()].tolist()
    assert short[-1] == eos and len(short) < 8


def test_all_wrong_applies_the_term_only_to_groups_without_a_correct_rollout(tiny_model, tmp_path, pool):
    rows = _rows(2)
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=1.0, apply_to="all_wrong"), rows=rows)
    # Group 1: one correct rollout; group 2: none. Rewards are [B, n_funcs], gathered over processes.
    trainer._expo_rewards = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    assert trainer._all_wrong_rows(4).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_linear_schedule_anneals_beta(tiny_model, tmp_path, pool):
    trainer = _trainer(tiny_model, tmp_path, pool, ExpoTerm(beta=0.04, schedule="linear", beta_end=0.0))
    trainer.state.max_steps = 10
    values = []
    for step in (0, 5, 10, 12):
        trainer.state.global_step = step
        values.append(trainer.expo_beta())
    assert values == pytest.approx([0.04, 0.02, 0.0, 0.0])


def test_the_term_keeps_each_explanation_with_its_problem_through_shuffling(tiny_model, tmp_path, pool):
    """4 problems with distinct explanations; TRL generates for 2 micro-batches at once, shuffles
    the rows and splits them. Inside the loss, every row's prompt and explanation must name the
    same problem."""
    from pipeline.train.expo_grpo import ExPGRPOTrainer

    seen: list[list[tuple[str, str]]] = []

    class Checking(ExPGRPOTrainer):
        def _expo_nll(self, model, inputs):
            tok = self.processing_class
            chunk = []
            for i in range(len(inputs["expo_weight"])):
                prompt = tok.decode(inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()])
                expl = tok.decode(inputs["expo_ids"][i][inputs["expo_mask"][i].bool()])
                p = next(k for k in range(1, 5) if f"Problem number {k}:" in prompt)
                e = next(k for k in range(1, 5) if f"problem number {k}," in expl)
                assert p == e, f"row {i}: prompt of problem {p} carries the explanation of problem {e}"
                chunk.append((f"p{p}", prompt))
            seen.append(chunk)
            return super()._expo_nll(model, inputs)

    trainer = _trainer(
        tiny_model,
        tmp_path,
        pool,
        ExpoTerm(beta=0.04),
        cls=Checking,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
    )
    trainer.train()
    assert len(seen) == 6 and all(len(c) == 2 for c in seen)
    # The shuffle did break groups apart: some micro-batch holds two different problems.
    assert any(c[0][0] != c[1][0] for c in seen)
    logged = [h for h in trainer.state.log_history if "expo/nll" in h]
    assert logged and all(h["expo/beta"] == pytest.approx(0.04) for h in logged)


@pytest.mark.slow
def test_online_variant_rewrites_explanations_with_the_policy_and_keeps_verified_ones(
    quickstart_run, tiny_model, tmp_path, pool
):
    """regenerate_every=1: each step the policy writes a new explanation for the batch's problems
    with the self-explanation prompt; only verified, non-leaking ones replace the stored text, and
    the term then scores those. The stored explanations are blanked, so every text the term
    scores must be one the policy wrote during training. A row whose prompt carries a system turn
    (prompts.system) gets its explanation prompt with the same system turn."""
    from pipeline.train.data import load_table
    from pipeline.train.expo_grpo import ExPGRPOTrainer

    grpo = load_table(str(quickstart_run.root), "grpo").select(range(8))
    problems = load_table(str(quickstart_run.root), "problems")
    questions = dict(zip(problems["problem_id"], problems["question"], strict=True))
    golds = dict(zip(problems["problem_id"], problems["answer"], strict=True))
    used: list[str] = []
    sampled: list[str] = []
    system = {"role": "system", "content": "Show your work."}
    rows = [
        {**r, "explanation": None, "prompt": [system, *r["prompt"]] if i % 2 else r["prompt"]}
        for i, r in enumerate(grpo.to_list())
    ]
    with_system = {r["problem_id"] for r in rows if r["prompt"][0]["role"] == "system"}

    class Recording(ExPGRPOTrainer):
        def _sample(self, prompts):
            sampled.extend(self.processing_class.decode(p) for p in prompts)
            return super()._sample(prompts)

        def _expo_nll(self, model, inputs):
            tok = self.processing_class
            for i in range(len(inputs["expo_weight"])):
                used.append(tok.decode(inputs["expo_ids"][i][inputs["expo_mask"][i].bool()], skip_special_tokens=True))
            return super()._expo_nll(model, inputs)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.rewards import VerifierReward

    torch.manual_seed(0)
    trainer = Recording(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        reward_funcs=[VerifierReward("reward_model", pool)],
        args=_args(tmp_path, max_steps=2, max_completion_length=16),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
        expo=ExpoTerm(beta=0.04, regenerate_every=1, regenerate_max_tokens=160, max_length=512),
        pool=pool,
        questions=questions,
    )
    trainer.train()
    regenerated = [h["expo/regenerated"] for h in trainer.state.log_history if "expo/regenerated" in h]
    kept = [h["expo/regenerated_kept"] for h in trainer.state.log_history if "expo/regenerated_kept" in h]
    assert regenerated == [2.0, 2.0]  # 2 problems per step (4 rows, G=2), each rewritten once per step
    assert sum(kept) > 0  # the tiny model explains most problems correctly
    verdicts = pool.verify_groups([(golds[pid], [t]) for pid, t in trainer._expo_regenerated.items()])
    assert all(v[0].verdict == "correct" for v in verdicts)
    assert used and {u.strip() for u in used} <= {t.strip() for t in trainer._expo_regenerated.values()}
    assert len(sampled) == 4
    for text in sampled:
        [pid] = [pid for pid in questions if pid in trainer._expo_regen_step and questions[pid] in text]
        assert ("<|im_start|>system\nShow your work.<|im_end|>" in text) == (pid in with_system)
        assert "The correct final answer is" in text


def test_the_training_config_reaches_trls_grpo_config(tiny_model, tmp_path, pool):
    from datasets import Dataset

    from pipeline.train.config import load_train_config
    from pipeline.train.run import build_grpo_trainer, load_policy

    cfg = load_train_config(
        None,
        [
            "per_device_batch_size=2",
            "grpo.steps_per_generation=2",
            "grpo.num_generations=4",
            "grpo.loss_type=dr_grpo",
            "grpo.kl_beta=0.02",
            "grpo.expo.beta=0.1",
            "grpo.expo.apply_to=all_wrong",
            "learning_rate=0.001",
        ],
        base={"kind": "grpo", "data": str(tmp_path), "model": str(tiny_model), "output_dir": str(tmp_path / "o")},
    )
    model, tok = load_policy(cfg, "fp32")
    trainer = build_grpo_trainer(cfg, Dataset.from_list(_rows()), model, tok, True, "fp32", pool)
    a = trainer.args
    assert (a.steps_per_generation, a.num_generations, a.loss_type) == (2, 4, "dr_grpo")
    assert a.beta == 0.02 and trainer.expo.beta == 0.1 and trainer.expo.apply_to == "all_wrong"
    assert a.learning_rate == 0.001 and a.use_cpu and not a.bf16
    assert trainer.reward_func_names == ["expo_verifier"]


def _nurl_trainer(tiny_model, tmp_path, pool, hints):
    """Rewards scripted by problem (p1's group always wrong, p2's always right), so which groups
    the rule must fire on is known; generation is TRL's, by the real tiny model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.expo_grpo import ExPGRPOTrainer

    def by_problem(completions, problem_id, **_):
        return [0.0 if pid == "p1" else 1.0 for pid in problem_id]

    torch.manual_seed(0)
    return ExPGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        reward_funcs=[by_problem],
        args=_args(tmp_path),
        train_dataset=Dataset.from_list(_rows(2)),
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
        expo=ExpoTerm(beta=0.0),
        pool=pool,
        questions=QUESTIONS,
        hints=hints,
    )


def _prompts(trainer, out) -> list[str]:
    tok = trainer.processing_class
    return [tok.decode(ids[mask.bool()]) for ids, mask in zip(out["prompt_ids"], out["prompt_mask"], strict=True)]


def test_nurl_regenerates_only_all_wrong_groups_with_the_hint_in_g_minus_1_prompts(tiny_model, tmp_path, pool):
    from pipeline.conditionings import NURL

    hints = {"p1": "double the number", "p2": "add it to itself"}
    trainer = _nurl_trainer(tiny_model, tmp_path, pool, hints)
    out = _batch(trainer, _rows(2))  # rows: p1, p1, p2, p2 (G = 2)
    prompts = _prompts(trainer, out)
    plain = [render_chat(trainer.processing_class, _rows(2)[k]["prompt"]) for k in (0, 0, 1, 1)]
    hinted = render_chat(trainer.processing_class, EXPO_V1.conversation(QUESTIONS["p1"], NURL.fill(hint=hints["p1"])))
    # p1 failed everywhere: one fresh plain rollout, G-1 = 1 after the hinted prompt, which the loss
    # then reads (prompt_ids are what the loss conditions on); p2 had a correct rollout: untouched.
    assert prompts == [plain[0], hinted, plain[2], plain[3]]
    assert "Hint: double the number" in prompts[1] and "Hint:" not in prompts[2] + prompts[3]
    assert trainer.nurl_counts == {"batches": 1, "groups": 2, "all_wrong": 1, "fired": 1, "no_hint": 0}
    assert trainer._metrics["train"]["nurl/fired_groups"] == [1.0]
    assert out["advantages"].shape[0] == 4


def test_nurl_without_a_hint_for_the_failed_problem_leaves_the_batch_alone(tiny_model, tmp_path, pool):
    trainer = _nurl_trainer(tiny_model, tmp_path, pool, {"p2": "add it to itself"})
    out = _batch(trainer, _rows(2))
    assert all("Hint:" not in p for p in _prompts(trainer, out))
    assert trainer.nurl_counts == {"batches": 1, "groups": 2, "all_wrong": 1, "fired": 0, "no_hint": 1}
