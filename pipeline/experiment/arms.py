"""The arms of the experiment: what each trains on, with which trainer, and the scores of its positives.

Every arm starts from the same initial model and trains for the same number of optimizer steps
(``train.max_steps``). Most arms read a table of the generation run as it is; two sanity arms read a
table derived from the run, in the schema of the table they stand in for:

- ``swapped_dpo``: the ``dpo`` pairs with chosen and rejected swapped (DPO towards the wrong CoTs);
- ``sft_wrong``: SFT on the model's own incorrect CoTs, in ``sft``'s schema.

Both must not beat the base model: if they did, the trainers would be learning something other than
what the data says (a masking or pair-order bug), and every other arm's gain would be in doubt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from pipeline.store import RunDir, read_table


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str | None  # the trainer (dpo | sft | grpo); None: no training (base), or the online loop
    table: str | None  # the run's table it reads (or derives its rows from)
    describe: str
    settings: dict[str, Any] = field(default_factory=dict)  # the arm's own training keys (dotted)
    positive: tuple[str, str] | None = None  # (nll column, answer_logprob column) of its positives


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("base", None, None, "the initial model, untrained"),
        Arm(
            "exp_sft",
            "sft",
            "sft",
            "ExP-SFT: SFT on verified self-explanations",
            positive=("nll_mean", "answer_logprob"),
        ),
        Arm(
            "exp_dpo",
            "dpo",
            "dpo",
            "ExP-DPO: chosen = a self-explanation, rejected = an own wrong CoT",
            positive=("chosen_nll_mean", "chosen_answer_logprob"),
        ),
        Arm(
            "expert_dpo",
            "dpo",
            "dpo_expert",
            "DPO with the expert solution as chosen",
            positive=("chosen_nll_mean", "chosen_answer_logprob"),
        ),
        Arm(
            "self_dpo",
            "dpo",
            "dpo_self",
            "DPO with an own correct CoT as chosen",
            positive=("chosen_nll_mean", "chosen_answer_logprob"),
        ),
        Arm("exp_grpo", "grpo", "grpo", "ExP-GRPO: GRPO + beta x NLL of the explanation"),
        Arm("grpo", "grpo", "grpo", "plain GRPO (the ExPO term off: beta = 0)", settings={"grpo.expo.beta": 0.0}),
        Arm(
            "online_exp_dpo",
            None,
            "dpo",
            "ExP-DPO in rounds: each round generates with the current policy",
            positive=("chosen_nll_mean", "chosen_answer_logprob"),
        ),
        Arm(
            "swapped_dpo",
            "dpo",
            "dpo",
            "sanity: ExP-DPO pairs with chosen and rejected swapped",
            positive=("chosen_nll_mean", "chosen_answer_logprob"),  # after the swap: the wrong CoTs
        ),
        Arm(
            "sft_wrong",
            "sft",
            "sft",
            "sanity: SFT on the model's own wrong CoTs",
            positive=("nll_mean", "answer_logprob"),
        ),
    )
}


def swapped_pairs(run: RunDir) -> pa.Table:
    """The ``dpo`` pairs with chosen and rejected (and their ids and scores) swapped."""
    t = read_table(run.table("dpo"), "dpo")
    cols = {name: t[name] for name in t.column_names}
    for a, b in (("chosen", "rejected"), ("chosen_nll_mean", "rejected_nll_mean")):
        cols[a], cols[b] = t[b], t[a]
    cols["chosen_answer_logprob"], cols["rejected_answer_logprob"] = (
        t["rejected_answer_logprob"],
        t["chosen_answer_logprob"],
    )
    cols["chosen_sample_id"] = t["rejected_sample_id"]
    cols["rejected_sample_id"] = pc.fill_null(t["chosen_sample_id"], "")
    cols["chosen_source"] = pa.array(["cot"] * t.num_rows, pa.string())
    return pa.table(cols, schema=schemas.schema("dpo"))


def wrong_cots(run: RunDir) -> pa.Table:
    """Every incorrect CoT the model finished (no truncated ones), as ``sft`` rows in sample order."""
    s = read_table(run.samples, "samples")
    keep = pc.and_(
        pc.and_(pc.equal(s["kind"], "cot"), pc.equal(s["verdict"], "incorrect")), pc.equal(s["finish_reason"], "stop")
    )
    s = s.filter(keep).sort_by([("problem_id", "ascending"), ("sample_index", "ascending")])
    rows, rank, last = [], 0, None
    for r in s.to_pylist():
        rank = rank + 1 if r["problem_id"] == last else 0
        last = r["problem_id"]
        rows.append(
            {
                "prompt": r["prompt"],
                "completion": [{"role": "assistant", "content": r["completion"]}],
                "problem_id": r["problem_id"],
                "level": r["level"],
                "subject": r["subject"],
                "gold": r["gold"],
                "sample_id": r["sample_id"],
                "rank": rank,
                "nll_mean": r["nll_mean"],
                "answer_logprob": r["answer_logprob"],
            }
        )
    return pa.Table.from_pylist(rows, schema=schemas.schema("sft"))


DERIVED = {"swapped_dpo": swapped_pairs, "sft_wrong": wrong_cots}


def arm_rows(arm: Arm, run: RunDir) -> tuple[pa.Table, dict[str, Any] | None]:
    """The rows an arm trains on, and (for a derived table) how they were made, for train.json."""
    if arm.name in DERIVED:
        table = DERIVED[arm.name](run)
        return table, {"kind": "derived", "run_dir": str(run.root), "from": arm.table, "transform": arm.name}
    return read_table(run.table(arm.table), arm.table), None  # type: ignore[arg-type]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def positive_scores(arm: Arm, rows: pa.Table, run: RunDir) -> dict[str, Any]:
    """The two ExPO scores of the texts an arm is pushed towards: mean NLL under the plain prompt
    (in-distribution) and mean log-prob of the gold's box after them (answer signal)."""
    if arm.name == "exp_grpo":  # its positives are the explanations the grpo rows carry
        ids = {i for i in rows["explanation_sample_id"].to_pylist() if i}
        s = read_table(run.samples, "samples")
        s = s.filter(pc.is_in(s["sample_id"], pa.array(sorted(ids), pa.string())))
        nll, ans = s["nll_mean"].to_pylist(), s["answer_logprob"].to_pylist()
    elif arm.positive is None:
        return {"texts": 0, "nll_mean": None, "answer_logprob": None}
    else:
        nll, ans = rows[arm.positive[0]].to_pylist(), rows[arm.positive[1]].to_pylist()
    return {"texts": len(nll), "nll_mean": _mean(nll), "answer_logprob": _mean(ans)}
