"""The command line's one boundary: every command turns an ExpoDataError into one message and an
exit status, never a traceback; the message is printed as written (no markup) and masked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "{tmp}/nope"], "no such run dir"),
        (["build", "{tmp}"], "is not a run dir"),
        (["build", "{tmp}/nope", "--out", "{tmp}/o"], "not found"),
        (["publish", "{tmp}", "--repo", "me/x"], "has no run.json"),
        (["verify", "{tmp}/x.jsonl"], "no such file"),
        (["report", "{tmp}"], "no samples"),
        (["train", "dpo", "--data", "{tmp}/nope", "--model", "m", "--out", "{tmp}/o"], "neither a run dir"),
        (["eval", "--model", "m", "--problems", "{tmp}/nope.jsonl", "-n", "2", "--k", "3"], "every k must be"),
        (["run", "{tmp}/missing.yaml"], "config file not found"),
        (["online", "{tmp}/missing.yaml"], "config file not found"),
    ],
)
def test_every_command_reports_a_user_error_in_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_messages_are_printed_as_written_and_masked(tmp_path, monkeypatch):
    token = "hf_CLItokenCLItokenCLItoken4242"
    monkeypatch.setenv("HF_TOKEN", token)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\noutput_dir: out\nmodel: {{path: m}}\nproblems: {{source: p, levels: [9]}}\n# {token}\n")
    result = CliRunner().invoke(app, ["run", str(bad), "--set", f"generation.rollouts={token}"])
    assert result.exit_code == 2
    assert "levels must be between 1 and 5 (got [9])" in result.output  # brackets are text, not markup
    assert "generation.rollouts" in result.output and "'***'" in result.output and token not in result.output


def test_the_verifier_worker_imports_no_data_stack():
    """Worker processes start often (one per verifier slot, again after every kill): they import
    Math-Verify and the answer normalisation, not Arrow, polars, pydantic or torch."""
    code = (
        "import sys, pipeline.verify_worker\n"
        "heavy = {'pyarrow', 'polars', 'pydantic', 'torch', 'schemas', 'transformers'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
