"""A fake token in the environment must not reach anything the pipeline writes or prints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from .conftest import run_quickstart_cli

ROOT = Path(__file__).resolve().parent.parent
FAKE = "hf_SECRETsecretSECRETsecret987654"


def _files(*roots: Path):
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file():
                yield f


def test_redaction_masks_messages_arguments_and_tracebacks(monkeypatch):
    from pipeline import logs
    from pipeline.secrets import redact

    monkeypatch.setenv("HF_TOKEN", FAKE)
    assert redact(f"401 for Bearer {FAKE}") == "401 for Bearer ***"
    logs.install(verbose=True)  # what every command does first
    logger = logging.getLogger("any.library")
    try:
        raise RuntimeError(f"proxy said: token {FAKE} refused")
    except RuntimeError:
        record = logger.makeRecord("any.library", logging.ERROR, __file__, 1, "header %s", (FAKE,), sys.exc_info())
    rendered = logging.Formatter().format(record)
    assert record.getMessage() == "header ***" and FAKE not in rendered and "token *** refused" in rendered


@pytest.mark.slow
def test_the_pipeline_never_writes_or_logs_the_token(tmp_path, monkeypatch, caplog, capfd, prefect_harness):
    from flows.generate import generate_flow
    from flows.publish import publish_flow
    from flows.train import train_flow

    monkeypatch.setenv("HF_TOKEN", FAKE)
    monkeypatch.setenv("WANDB_API_KEY", FAKE[::-1])
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    generate_flow(
        str(ROOT / "data" / "quickstart.yaml"),
        overrides=[f"output_dir={run}", "model.engine=hf", "problems.limit=8", "generation.sampling.max_tokens=48"],
    )
    publish_flow(str(run), "me/secret-test", dry_run=str(tmp_path / "release"))
    train_flow("sft", str(run), str(ROOT / "data" / "tiny-model"), str(tmp_path / "ckpt"), overrides=["max_steps=1"])
    written = list(_files(run, tmp_path / "release", tmp_path / "ckpt"))
    assert len(written) > 20
    for f in written:
        data = f.read_bytes()
        assert FAKE.encode() not in data and FAKE[::-1].encode() not in data, f
    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for text in (out, err, logs):
        assert FAKE not in text and FAKE[::-1] not in text


@pytest.mark.slow
def test_a_command_masks_the_token_in_its_own_and_prefects_log_records(tmp_path):
    """`expo-data run -v` on a problem file whose path holds the token: the flow logs that path,
    Prefect logs the failure with its traceback, and the command prints its error. Every one of
    them goes through the logging and terminal setup the command itself installs."""
    folder = tmp_path / FAKE
    folder.mkdir()
    (folder / "bad.jsonl").write_text(json.dumps({"problem": "", "solution": "\\boxed{1}"}) + "\n")
    env = {"HF_TOKEN": FAKE, "PREFECT_LOGGING_LEVEL": "INFO"}
    status, output = run_quickstart_cli(tmp_path, folder / "bad.jsonl", "-v", env=env)
    assert status == 2, output
    assert FAKE not in output
    assert "Traceback" in output  # Prefect's own record of the failure, traceback included...
    assert "***/bad.jsonl" in output  # ...with the path masked, as in our log line and error message
    assert "no valid problems" in output
