"""Engines behind one protocol (see :mod:`pipeline.engines.base`), loaded once per process."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pipeline import progress
from pipeline.engines.base import (
    Completion,
    Engine,
    Request,
    Result,
    Sampling,
    derive_seed,
)
from pipeline.errors import EngineError

__all__ = [
    "Completion",
    "Engine",
    "EngineError",
    "Request",
    "Result",
    "Sampling",
    "derive_seed",
    "get_engine",
    "load_engine",
    "release_engines",
]

_CACHE: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def load_engine(model_cfg: Any, seed: int = 0) -> Engine:
    """A new engine for a ``pipeline.config.ModelConfig``. A model that is neither a local folder nor
    a Hub id fails here, as a user error, before either engine starts loading; a failure while
    loading is an :class:`EngineError` from both engines alike."""
    from pipeline.engines.base import engine_failure
    from pipeline.sources import locate_model

    locate_model(model_cfg.path)
    with engine_failure(model_cfg.engine, f"loading {model_cfg.path}"):
        return _load(model_cfg, seed)


def _load(model_cfg: Any, seed: int) -> Engine:
    if model_cfg.engine == "vllm":
        from pipeline.engines.vllm import VLLMEngine

        return VLLMEngine(model_cfg, seed)
    if model_cfg.engine == "hf":
        from pipeline.engines.hf import HFEngine

        return HFEngine(model_cfg, seed)
    if model_cfg.engine == "sim":
        from pipeline.engines.sim import SimEngine

        return SimEngine(model_cfg, seed)
    raise ValueError(f"unknown engine {model_cfg.engine!r}; use 'vllm', 'hf' or 'sim'")


def _devices() -> str | None:
    """The accelerators this process was given (Ray sets CUDA_VISIBLE_DEVICES per task)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def cache_key(model_cfg: Any, seed: int = 0) -> tuple[str, int, str | None]:
    """What :func:`get_engine` keys its engines by: the model config, the seed, the devices."""
    return (model_cfg.model_dump_json(), seed, _devices())


def get_engine(model_cfg: Any, seed: int = 0) -> Engine:
    """The process's engine for this model config, loaded on first use and then reused.

    vLLM owns the whole device, so a process keeps one engine per model config and every shard task
    in the process shares it, instead of paying the load time per shard. A Ray worker that is handed
    other GPUs than its engine sits on (Ray may move a reused worker) drops that engine and loads
    one on the GPUs it was given, rather than share a device with another worker's engine.
    """
    key = cache_key(model_cfg, seed)
    devices = key[2]
    stale: list[Engine] = []
    with _LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            for other in [k for k in _CACHE if k[2] != devices]:
                stale.append(_CACHE.pop(other))
    if stale:
        _close(stale)
    with _LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            t0 = time.monotonic()
            progress.emit("engine.loading", engine=model_cfg.engine, model=model_cfg.path, devices=devices)
            engine = load_engine(model_cfg, seed)
            progress.emit("engine.ready", engine=model_cfg.engine, seconds=round(time.monotonic() - t0, 1))
            _CACHE[key] = engine
        return engine


def release_engines() -> None:
    """Close every cached engine and free its memory, before something else needs the device (a
    trainer in the online loop) or before loading a new checkpoint."""
    with _LOCK:
        engines = list(_CACHE.values())
        _CACHE.clear()
    _close(engines)


def _close(engines: list[Engine]) -> None:
    import gc

    for engine in engines:
        engine.close()
    engines.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
