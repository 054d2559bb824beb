"""The command line's one boundary: every command turns an ExpoDataError into one message and an
exit status, never a traceback; the message is printed as written (no markup) and masked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app

from .conftest import QUICKSTART

QS = str(QUICKSTART)


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
        # A missing local folder is named as one, never looked up on the Hub (runs/ is a folder here).
        (["run", QS, "--set", "model.path={tmp}/runs/ckpt", "--set", "output_dir={tmp}/o"], "no model folder at"),
        (["run", QS, "--set", "model.path=./ckpt-dpo", "--set", "output_dir={tmp}/o"], "expo-train/train deployment"),
        (["run", QS, "--set", "model.path={tmp}", "--set", "output_dir={tmp}/o"], "(it has no config.json)"),
    ],
)
def test_every_command_reports_a_user_error_in_one_line(args, message, tmp_path):
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing was started


def test_a_relative_name_under_a_local_folder_is_a_path_not_a_hub_id(tmp_path):
    from pipeline.config import load_config

    (tmp_path / "runs").mkdir()
    cfg = load_config(QS, ["model.path=runs/ckpt-dpo", "problems.source=openai/gsm8k"], cwd=tmp_path)
    assert cfg.model.path == str(tmp_path / "runs" / "ckpt-dpo")
    assert cfg.problems.source == "openai/gsm8k"  # no openai/ folder here: a Hub id


def test_serve_refuses_to_run_without_a_server_whose_scheduler_would_fire():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["serve", QS, "--cron", "0 2 * * *"])
    assert result.exit_code == 2, result.output
    assert "expo-data serve needs a Prefect server" in result.output and "PREFECT_API_URL" in result.output


def test_the_start_over_switch_is_named_as_the_caller_gives_it(tmp_path):
    """The same conflict reaches a user as a CLI flag or as a flow/deployment parameter."""
    from pipeline.config import load_config
    from pipeline.errors import RunDirConflictError
    from pipeline.manifest import start_run

    start_run(load_config(QS, [f"output_dir={tmp_path}"]))
    with pytest.raises(RunDirConflictError) as caught:
        start_run(load_config(QS, [f"output_dir={tmp_path}", "generation.rollouts=2"]))
    assert "generation.rollouts" in str(caught.value)
    assert "force_new=true of the flow or deployment" in str(caught.value) and "--force" not in str(caught.value)
    assert caught.value.for_command_line().endswith("start over there with --force-new.")
    result = CliRunner().invoke(app, ["run", QS, "--set", f"output_dir={tmp_path}", "--set", "generation.rollouts=2"])
    assert result.exit_code == 2 and "--force-new" in result.output and "force_new=true" not in result.output


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
