"""Where a name points: a local file, a folder, a run dir, or a Hugging Face Hub repo.

Users pass the same kinds of names everywhere (problem sources, models, training data, builds from
published samples): ``data/math.jsonl``, ``runs/quickstart``, ``Qwen/Qwen2.5-3B-Instruct``. This is
the one place that decides which is which, so every command reads a name the same way and a typo
fails with the same message naming what was tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ModelError, SourceNotFoundError

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RUN_DOC = "run.json"

Kind = Literal["file", "folder", "run_dir", "hub"]


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` as the Hub spells repo ids; never a path that starts like one."""
    return bool(HUB_ID_RE.match(value)) and not value.startswith((".", "/", "~"))


def resolve_path(value: Any, base: Path, hub_ok: bool = True) -> Any:
    """A relative local path becomes absolute against ``base``; a Hub id (owner/name, not on disk)
    stays as it is. A name whose first part is a folder in ``base`` (``runs/ckpt-dpo`` beside a
    ``runs/`` folder) is a path that does not exist yet, never a Hub id: it fails as a missing
    folder instead of as a Hub lookup. Non-strings and empty strings pass through (validation
    reports them)."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = (base / p).resolve()
    if hub_ok and looks_like_hub_id(value) and not candidate.exists() and not (base / p.parts[0]).is_dir():
        return value
    return str(candidate)


@dataclass(frozen=True)
class Source:
    kind: Kind
    ref: str  # an absolute path for local kinds, the repo id for "hub"

    @property
    def path(self) -> Path:
        return Path(self.ref)

    @property
    def local(self) -> bool:
        return self.kind != "hub"


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / RUN_DOC).is_file()


def locate(source: str | Path, what: str = "source", hub_ok: bool = True) -> Source:
    """What ``source`` names, checked on disk first: a name that exists locally is never taken for
    a Hub id, and one that is neither fails here with the name and what was expected."""
    path = Path(source).expanduser()
    if path.is_file():
        return Source("file", str(path.resolve()))
    if is_run_dir(path):
        return Source("run_dir", str(path.resolve()))
    if path.is_dir():
        return Source("folder", str(path.resolve()))
    if hub_ok and looks_like_hub_id(str(source)):
        return Source("hub", str(source))
    expected = "a file, a folder or a Hub id 'owner/name'" if hub_ok else "a file or a folder"
    raise SourceNotFoundError(f"{what} not found: {str(source)!r} is not {expected}")


def locate_model(value: str, what: str = "model.path") -> Source:
    """A model to load: a local model folder, or a Hub id (which the engine downloads). A local path
    that is missing or is not a model fails here, naming it, before any run dir is written or any
    Hub lookup is tried."""
    path = Path(value).expanduser()
    if looks_like_hub_id(value) and not path.exists():
        return Source("hub", value)
    if not path.exists():
        raise ModelError(
            f"{what}: no model folder at {path.resolve()}. A checkpoint folder exists once training has "
            "written it (`expo-data train ... --out` or the expo-train/train deployment): run that first, "
            f"or point {what} at a model folder or a Hub model id."
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"{what}: {path.resolve()} is not a model folder (it has no config.json)")
    return Source("folder", str(path.resolve()))
