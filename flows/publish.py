"""The publish flow: a run dir to the Hugging Face Hub in one commit (``pipeline.publish``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.publish import publish


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    run_dir: str,
    repo: str,
    private: bool | None = None,
    revision: str | None = None,
    tag: str | None = None,
    license: str = "other",
    dry_run: str | None = None,
) -> dict[str, Any]:
    result = publish(run_dir, repo, private=private, revision=revision, tag=tag, license=license, dry_run=dry_run)
    logger = get_run_logger()
    if dry_run:
        logger.info("dry run: %d operations staged in %s", len(result["operations"]), dry_run)
    else:
        logger.info("published %s@%s: commit %s", repo, result["revision"], result["commit"])
    return result


@flow(name="expo-publish", log_prints=True)
def publish_flow(
    run_dir: str,
    repo: str,
    private: bool | None = None,
    revision: str | None = None,
    tag: str | None = None,
    license: str = "other",
    dry_run: str | None = None,
) -> dict[str, Any]:
    """Publish every non-empty table of a run dir as its own config, with run.json, plots and a card.
    The token comes from HF_TOKEN or the huggingface_hub login, never from a parameter."""
    result = publish_task(run_dir, repo, private, revision, tag, license, dry_run)
    if not dry_run:
        create_markdown_artifact(
            key="expo-publish",
            markdown=f"Published `{repo}` ({', '.join(result['configs'])}): {result['commit_url']}",
            description="ExPO dataset release",
        )
    return result
