"""Credentials stay out of everything we write: files, logs, artifacts, error messages.

Tokens are read from the environment or huggingface_hub's login, handed to huggingface_hub and
nowhere else. As a second line, every error message the CLI prints passes :func:`redact`, and every
log record the process creates is masked (``pipeline.logs``, which every command installs),
whatever logger or handler it goes to.
"""

from __future__ import annotations

import logging
import os

# Environment variables that may hold a credential, whatever the tool that set them.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACEHUB_API_TOKEN",
    "HF_API_TOKEN",
    "WANDB_API_KEY",
    "PREFECT_API_KEY",
)
MASK = "***"
_MIN_LEN = 8  # shorter values are not secrets worth masking (and would mask ordinary words)


def known_secrets() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS}
    try:
        from huggingface_hub import get_token

        values.add(get_token() or "")
    except Exception:  # a broken token file must not break redaction itself
        pass
    return sorted((v for v in values if len(v) >= _MIN_LEN), key=len, reverse=True)


def redact(text: str) -> str:
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    return text


def redact_record(record: logging.LogRecord, secrets: list[str]) -> None:
    """Mask credentials in a record's message (arguments included) and in its traceback, which
    handlers would otherwise render from the exception itself."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: the handler reports it, as it would without us
        return
    clean = message
    for secret in secrets:
        clean = clean.replace(secret, MASK)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        for secret in secrets:
            text = text.replace(secret, MASK)
        record.exc_text = text
