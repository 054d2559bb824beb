"""A tiny in-process event hook, so the CLI can draw progress for work done inside Prefect tasks.

Prefect runs tasks in the calling process; the library emits plain events and whoever listens (the
rich progress bar of ``expo-data run``, nothing in tests) renders them. No listener, no cost.
"""

from __future__ import annotations

import threading
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


def emit(event: str, **data: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(event, data)
