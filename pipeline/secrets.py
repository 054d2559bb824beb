"""Credentials stay out of everything we write: files, logs, artifacts, error messages.

Tokens are read from the environment or huggingface_hub's login, handed to huggingface_hub and
nowhere else. As a second line, every message that leaves through an error or a log handler we own
passes :func:`redact`, which masks any credential value this process knows of.
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


class RedactingFilter(logging.Filter):
    """A log filter that masks credentials in the rendered message (args included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = known_secrets()
        if not secrets:
            return True
        message = record.getMessage()
        clean = message
        for secret in secrets:
            clean = clean.replace(secret, MASK)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root and Prefect loggers (handler filters see
    records propagated from any child logger, logger filters do not)."""
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
