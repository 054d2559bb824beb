"""Text at the boundary: what cannot be stored is replaced here, and said, in one place.

Parquet strings are UTF-8. A Python string can hold what UTF-8 cannot encode: lone surrogates (legal
in JSON as ``"\\udcff"``, and what a model output cut inside an emoji looks like). NUL characters
encode, but break tokenizers and C tools downstream. Either would fail a whole file at write time;
here each becomes U+FFFD, and the caller records the escaped original with the one row it belongs to
(a sample's ``verdict_detail``, a quarantined problem's ``raw``), so every other row is written.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
MAX_ESCAPED_CHARS = 2000


def escaped(value: Any, limit: int = MAX_ESCAPED_CHARS) -> str:
    """An ASCII, storable rendering of any value that keeps what was there (``\\udcff``)."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def storable(text: str) -> tuple[str, str | None]:
    """(text fit to store, None) or (text with U+FFFD in place of each lone surrogate or NUL, a
    description of what was replaced, with the escaped original)."""
    found = _UNSTORABLE.findall(text)
    if not found:
        return text, None
    kinds = sorted({"NUL" if ch == "\x00" else f"lone surrogate U+{ord(ch):04X}" for ch in found})
    clean = _UNSTORABLE.sub(REPLACEMENT, text)
    return clean, f"{len(found)} character(s) that cannot be stored ({', '.join(kinds)}); original: {escaped(text)}"


def storable_tree(value: Any) -> Any:
    """A value with every string in it (nested lists and mappings too) made storable."""
    if isinstance(value, str):
        return storable(value)[0]
    if isinstance(value, list):
        return [storable_tree(v) for v in value]
    if isinstance(value, dict):
        return {storable_tree(k) if isinstance(k, str) else k: storable_tree(v) for k, v in value.items()}
    return value
