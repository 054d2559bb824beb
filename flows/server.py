"""The Prefect API a command's flows report to.

With ``PREFECT_API_URL`` set (a ``prefect server start`` or Prefect Cloud), flows use that server.
Without it, Prefect starts a temporary server of its own on first use: a uvicorn child process
that it stops at exit. A process killed from outside (kill -9, the kernel's OOM killer) never runs
that exit code, and the child would live on, holding its memory and port, until someone finds it.
So the commands start the temporary server themselves, from the main thread, as a child the
kernel stops when its parent dies (Linux ``PR_SET_PDEATHSIG``), and register it as the server
Prefect's own code then reuses.

A temporary server runs no scheduler (Prefect runs its scheduling services only in a real
server), so commands that rely on schedules require a configured one: :func:`require_server`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import sys
from typing import Any

from pipeline.errors import ServerRequiredError

_PR_SET_PDEATHSIG = 1


def configured_api_url() -> str | None:
    """The server this process's flows report to: PREFECT_API_URL from the environment or the
    active Prefect profile; None when Prefect would start a temporary one."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def require_server(command: str) -> str:
    url = configured_api_url()
    if url is None:
        raise ServerRequiredError(
            f"{command} needs a Prefect server: schedules are turned into runs by a server's scheduler, "
            "and the temporary server Prefect starts when none is configured has none. Start one "
            "(`prefect server start`, in its own terminal) and set PREFECT_API_URL=http://127.0.0.1:4200/api "
            "here (or `prefect config set PREFECT_API_URL=...`)."
        )
    return url


def _stop_with_parent(prctl: Any, parent: int) -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies
    (the setting survives exec). A parent already gone by now would never send it: exit instead.
    ``prctl`` is resolved in the parent: loading a library after fork in a threaded process can
    deadlock."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(0)


@functools.cache
def _bound_server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class BoundTemporaryServer(SubprocessASGIServer):
        """Prefect's temporary server, started as a child that dies with this process."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            parent = os.getpid()
            prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
            app = [
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
            ]
            where = ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", *app, *where],
                env={
                    **os.environ,
                    # What Prefect sets for its own temporary server: no UI, the services an
                    # ephemeral server runs.
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
                preexec_fn=lambda: _stop_with_parent(prctl, parent),
            )

    return BoundTemporaryServer


def ensure_api() -> str:
    """The API URL this process's flows will use, starting the temporary server now when none is
    configured. Call it from the main thread, before any flow: the kernel ties the child's life to
    the thread that started it."""
    url = configured_api_url()
    if url is not None:
        return url
    if not sys.platform.startswith("linux"):
        return ""  # no PR_SET_PDEATHSIG: Prefect starts (and at exit stops) its own
    # Prefect keeps one temporary server per process, keyed by port (None: any free port), and every
    # Prefect client that finds no server configured asks for that one: created first, ours is the
    # one they get. (Had Prefect's own been created already, this returns it, and start() leaves it.)
    server = _bound_server_class()()
    server.start()
    # Processes this one starts (the workers of a local Ray cluster) report to the same server;
    # without it each worker would start a temporary server of its own, seconds of CPU apiece.
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url
