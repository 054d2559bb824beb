"""The experiment's results: per arm, the mean and spread of held-out pass@k over seeds, the scores of
its positives, its learning curve; printed as a table and drawn as a plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pipeline.experiment.arms import ARMS


def spread(values: list[float]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (0 for one seed), min and max, over seeds."""
    if not values:
        return None
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
        "values": [round(v, 4) for v in values],
    }


def summarise(cfg: Any, units: dict[str, list[dict[str, Any]]], run_dir: Any = None) -> dict[str, Any]:
    """One entry per arm (in the config's order), under the arm names of ARMS; an arm that could not
    train keeps its row count and reason, with no score."""
    out: dict[str, Any] = {}
    for name in cfg.arms:
        arm, done = ARMS[name], units.get(name, [])
        entry: dict[str, Any] = {
            "describe": arm.describe,
            "trainer": arm.kind or ("dpo (online)" if name == "online_exp_dpo" else None),
            "table": arm.table,
            "seeds": [u["seed"] for u in done],
            "rows": done[0].get("rows") if done else None,
            "trained": any(u.get("trained") for u in done),
            "positives": next((u["positives"] for u in done if u.get("positives")), None),
        }
        trained = [u for u in done if u.get("final")]
        for k in cfg.eval.k:
            key = f"pass@{k}"
            entry[key] = spread([u["final"]["pass"][key] for u in trained if u["final"]["pass"].get(key) is not None])
        if done and not trained:
            entry["reason"] = done[0].get("reason")
        curve = next((u["curve"] for u in done if u.get("curve")), [])
        entry["curve"] = curve
        entry["train_loss"] = spread([u["train_loss"] for u in done if u.get("train_loss") is not None])
        entry["seconds"] = round(sum(u.get("seconds", 0.0) for u in done), 1)
        out[name] = entry
    return out


def _cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    pct = f"{100 * s['mean']:.1f}"
    return pct if s["n"] == 1 else f"{pct} ± {100 * s['std']:.1f}"


def table_rows(state: dict[str, Any]) -> list[dict[str, str]]:
    """The table as printed and written to README: pass@k in percent, mean ± std over seeds."""
    ks = state["config"]["eval"]["k"]
    rows = []
    for name, e in state["arms"].items():
        pos = e.get("positives") or {}
        row = {"arm": name, "seeds": str(len(e["seeds"])), "rows": "-" if e["rows"] is None else str(e["rows"])}
        for k in ks:
            row[f"pass@{k}"] = _cell(e.get(f"pass@{k}")) if e["trained"] or name == "base" else "not trained"
        loss = e.get("train_loss")
        row["train loss"] = "-" if not loss else f"{loss['mean']:.4f}"
        row["positive NLL"] = "-" if pos.get("nll_mean") is None else f"{pos['nll_mean']:.4f}"
        row["positive answer log-p"] = "-" if pos.get("answer_logprob") is None else f"{pos['answer_logprob']:.4f}"
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """A Markdown table (also what the command prints)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_curves(state: dict[str, Any], path: str | Path) -> Path:
    """Held-out pass@1 against training steps, one line per arm (its first seed), base as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    base = (state["arms"].get("base") or {}).get("pass@1")
    start = base["values"][0] if base else None
    for name, e in state["arms"].items():
        if name == "base" or not e.get("curve"):
            continue
        points = [(0, start)] if start is not None else []
        points += [(c["step"], c.get("pass@1")) for c in e["curve"] if c.get("pass@1") is not None]
        xs, ys = zip(*points, strict=True)
        style = "--" if name in ("swapped_dpo", "sft_wrong") else "-"
        ax.plot(xs, [100 * y for y in ys], style, marker="o", label=name)
    if base:
        ax.axhline(100 * base["mean"], color="black", linewidth=1, linestyle=":", label="base (mean)")
    ax.set_xlabel("training steps")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title(f"{state['name']}: held-out accuracy along training (first seed)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
