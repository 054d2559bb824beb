"""A fake token in the environment must not reach anything the pipeline writes or prints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
FAKE = "hf_SECRETsecretSECRETsecret987654"


def _files(*roots: Path):
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file():
                yield f


def test_the_pipeline_never_writes_or_logs_the_token(tmp_path, monkeypatch, caplog, capfd, prefect_harness):
    from flows.generate import generate_flow
    from flows.publish import publish_flow
    from flows.train import train_flow
    from pipeline.secrets import install_log_redaction

    monkeypatch.setenv("HF_TOKEN", FAKE)
    monkeypatch.setenv("WANDB_API_KEY", FAKE[::-1])
    install_log_redaction()
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
