"""The publish flow: a run dir to the Hugging Face Hub in one commit (``pipeline.publish``). The
generate flow runs it as a subflow when the run config has a ``publish:`` block."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipeline.publish import publish


@flow(name="expo-publish")
def publish_flow(
    run_dir: str,
    repo: str,
    private: bool | None = None,
    revision: str | None = None,
    tag: str | None = None,
    license: str | None = None,
    dry_run: str | None = None,
) -> dict[str, Any]:
    """Publish every non-empty table of a run dir as its own config, with run.json, plots and a card.
    ``license`` None takes the run config's ``publish.license`` (else ``other``). The token comes from
    HF_TOKEN or the huggingface_hub login, never from a parameter."""
    result = publish(run_dir, repo, private=private, revision=revision, tag=tag, license=license, dry_run=dry_run)
    logger = get_run_logger()
    if dry_run:
        logger.info("dry run: %d operations staged in %s", len(result["operations"]), dry_run)
        return result
    logger.info("published %s@%s: commit %s", repo, result["revision"], result["commit"])
    create_markdown_artifact(
        key="expo-publish",
        markdown=f"Published `{repo}` ({', '.join(result['configs'])}): {result['commit_url']}",
        description="ExPO dataset release",
    )
    return result
