"""The command-line boundary every `expo-data` command runs behind, and what the commands share.

Every command runs behind one boundary (:class:`_App`): it sets up the process's logging
(``pipeline.logs``: credentials masked in every record; a user's mistake kept off the terminal
unless ``--verbose``), and turns an :class:`~pipeline.errors.ExpoDataError` into one printed message
and an exit status (2 for a mistake the user can fix, 1 for work that failed); only real bugs show
a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.views import err_console, error


def _boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        from pipeline import logs
        from pipeline.errors import ExpoDataError
        from pipeline.secrets import redact

        logs.install(verbose=bool(kwargs.get("verbose", False)))
        try:
            return fn(*args, **kwargs)
        except ExpoDataError as e:
            error(redact(e.for_command_line()))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return command


class _App(typer.Typer):
    """A Typer app whose every command runs behind :func:`_boundary`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(_boundary(fn))


app = _App(
    add_completion=False, no_args_is_help=True, help="ExPO training data: generate, verify, inspect, train, evaluate."
)
tiny_app = _App(no_args_is_help=True, help="The tiny offline model used by tests and the quickstart.")
app.add_typer(tiny_app, name="tiny-model")

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a key: --set generation.rollouts=4")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect and engine logs")]


# Before Prefect/vLLM are imported: no telemetry, and a temporary local Prefect server (the one
# Prefect starts when none is configured) gets more than its default 20 s on a busy 2-core machine.
ALWAYS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
# Without --verbose, the chatter of Prefect, vLLM, torch, transformers and datasets stays out.
QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def _quiet_defaults(verbose: bool) -> None:
    for key, value in (ALWAYS if verbose else {**ALWAYS, **QUIET}).items():
        os.environ.setdefault(key, value)
    if not verbose:
        import logging
        import warnings

        logging.getLogger("torch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # TRL warns about any vLLM newer than it was tested with; its vLLM path is not ours.
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
