"""A tiny in-process event hook, so the CLI can draw progress for work done inside Prefect tasks.

Prefect runs tasks in the calling process; the library emits plain events and whoever listens (the
rich progress bar of ``expo-data run``, nothing in tests) renders them. No listener, no cost.

With ``EXPO_DATA_EVENTS=FILE`` set, every event is also appended to FILE as one JSON line (time,
pid, event, data): machine-readable progress for monitoring, and the markers the crash tests kill
a run at.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(fn: Listener) -> Callable[[], None]:
    with _lock:
        _listeners.append(fn)

    def unsubscribe() -> None:
        with _lock:
            if fn in _listeners:
                _listeners.remove(fn)

    return unsubscribe


EVENTS_ENV = "EXPO_DATA_EVENTS"


def emit(event: str, **data: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(event, data)
    path = os.environ.get(EVENTS_ENV)
    if path:
        line = json.dumps({"time": time.time(), "pid": os.getpid(), "event": event, **data}, default=str)
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
