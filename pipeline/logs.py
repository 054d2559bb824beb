"""What every command does to the process's logging before it runs (the CLI's boundary calls
:func:`install`):

- every log record is masked for credentials, whichever logger and handler it goes to (our
  loggers, Prefect's console and API handlers, transformers'): the record factory is the one place
  every record passes;
- without ``--verbose``, a record that carries a user's mistake (a :class:`UserError`: a bad problem
  file, a config that cannot run) stays off the terminal: Prefect would print the failed task's
  whole traceback before the command prints the one message that says what to fix. Handlers that
  are not the terminal (Prefect's API log, the UI) keep the full record, and ``--verbose`` shows it.
"""

from __future__ import annotations

import logging
import sys
import threading

from pipeline.errors import UserError
from pipeline.secrets import known_secrets, redact_record

_state = {"installed": False, "quiet": True}
_busy = threading.local()  # looking up secrets may itself log: never recurse into the factory


def _user_error(record: logging.LogRecord) -> bool:
    info = record.exc_info
    return bool(info and isinstance(info[1], UserError))


class TerminalUserErrors(logging.Filter):
    """Keeps records of user errors off a terminal handler (the command prints their message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_state["quiet"] and _user_error(record))


def _terminal_handlers() -> list[logging.Handler]:
    """Handlers that write to the process's stderr or stdout, on the root and Prefect loggers (where
    Prefect configures its console handler once it is imported)."""
    found = []
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or type(handler).__name__ == (
                "PrefectConsoleHandler"
            ):
                found.append(handler)
    return found


def _guard_terminal() -> None:
    for handler in _terminal_handlers():
        if not any(isinstance(f, TerminalUserErrors) for f in handler.filters):
            handler.addFilter(TerminalUserErrors())


def install(verbose: bool = False) -> None:
    """Idempotent; a later call only changes whether user errors reach the terminal."""
    _state["quiet"] = not verbose
    if _state["installed"]:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if getattr(_busy, "on", False):
            return record
        _busy.on = True
        try:
            secrets = known_secrets()
            if secrets:
                redact_record(record, secrets)
            if _state["quiet"] and _user_error(record):
                # The terminal handler is Prefect's, configured when Prefect was imported (inside
                # the command): guard it now, before this record reaches it.
                _guard_terminal()
        finally:
            _busy.on = False
        return record

    logging.setLogRecordFactory(factory)
    _state["installed"] = True
