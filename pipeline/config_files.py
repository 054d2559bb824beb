"""How every YAML config of this project is read: the file, typed values, ``--set`` overrides, then
pydantic validation, with errors that name the key and suggest the closest one.

Relative paths in a config file are resolved against the file's folder, so a config runs the same
from any working directory; paths given with ``--set`` are relative to the current directory, as a
user typing them expects.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import ConfigError
from pipeline.sources import resolve_path

M = TypeVar("M", bound=BaseModel)

# Keys that name a folder we write: never a Hub id, however much "runs/x" looks like one.
LOCAL_ONLY = ("output_dir", "publish.dry_run")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic class at a location, to suggest the keys it does accept."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _submodel(root, loc[:-1])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), _known_keys(parent), n=1)
                hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)" if close else ""
                hint += f"; allowed here: {', '.join(_known_keys(parent))}"
            lines.append(f"  unknown key {key!r}{hint}")
        elif not loc:  # a whole-config rule: its message says it all, the input is the config itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "missing":
            lines.append(f"  missing required key {key!r}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def get_dotted(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = d.get(part)
        if nxt is None:
            nxt = d[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
        d = nxt
    d[parts[-1]] = value


def parse_override(item: str, literal_keys: Iterable[str] = ()) -> tuple[str, Any]:
    """``key.sub=value``; the value is read as YAML, so numbers, booleans and lists work. Keys in
    ``literal_keys`` (paths) take the text as it is: YAML would cut ``runs/a #1`` at its comment."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. generation.rollouts=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted config key")
    if key in literal_keys:
        return key, raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def validate(model: type[M], raw: dict[str, Any], source: str = "<dict>") -> M:
    """``raw`` as a ``model``, or a ConfigError that names each bad key and suggests the closest."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=model)) from None


def load_yaml_model(
    model: type[M],
    path: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    path_fields: tuple[str, ...],
    values: dict[str, Any] | None = None,
    cwd: str | Path | None = None,
) -> M:
    """The one loader of every YAML config this project reads (run, training, online): the file,
    then ``values`` (typed, e.g. the CLI's own options), then ``--set`` overrides, each later one
    winning. Path keys written in the file resolve against the file's folder; those given as
    values or overrides against the current directory, as a user typing them expects."""
    raw: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    if path is not None:
        base = Path(path).resolve().parent
        for dotted in path_fields:
            key = dotted.removesuffix("[]")
            value = get_dotted(raw, key)
            if value is not None:
                set_dotted(raw, key, _resolved(dotted, value, base))
    here = Path(cwd) if cwd else Path.cwd()
    given = [(k, v) for k, v in (values or {}).items() if v is not None]
    given += [parse_override(item, [f for f in path_fields if not f.endswith("[]")]) for item in overrides]
    for key, value in given:
        if key in path_fields:
            value = _resolved(key, str(value), here)
        elif f"{key}[]" in path_fields:
            value = _resolved(f"{key}[]", value, here)
        set_dotted(raw, key, value)
    return validate(model, raw, source=str(path) if path is not None else "<command line>")


def _resolved(field: str, value: Any, base: Path) -> Any:
    """A path field's value with local paths made absolute. A field ending in ``[]`` is a list whose
    items are a path or a mapping with a ``source`` path (``problems.decontaminate``)."""
    if not field.endswith("[]"):
        return resolve_path(value, base, hub_ok=field not in LOCAL_ONLY)
    if not isinstance(value, list):
        return value  # validation names the wrong type
    out = []
    for item in value:
        if isinstance(item, dict) and "source" in item:
            item = {**item, "source": resolve_path(item["source"], base)}
        elif isinstance(item, str):
            item = resolve_path(item, base)
        out.append(item)
    return out


def with_values(cfg: M, values: dict[str, Any]) -> M:
    """A copy of a config with dotted keys set to typed values, validated again: how Python code
    derives one config from another, never through ``--set`` strings."""
    raw = cfg.model_dump()
    for key, value in values.items():
        set_dotted(raw, key, value)
    return validate(type(cfg), raw, source="<derived config>")


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ: what a user must know before mixing two runs."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        dotted = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, dotted + "."))
        elif a != b:
            out.append(dotted)
    return out
