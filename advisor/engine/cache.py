"""A disk cache of compiled rule packs, so a `--json` run does not parse YAML, import rule-engine and
compile 30 rules again every time (that was ~15 % of the run).

One JSON file per rule pack source (so editing a pack replaces its entry instead of adding files), holding
a key over everything that decides its content: the pack's text and source name, this module's format,
the facts rules can see (names and types), the fast path's code and the installed rule-engine (its path,
size and mtime: an upgrade or reinstall changes them).  An entry is used only when its key matches.  A
pack is cached only after it loaded and type-checked cleanly, so a hit needs no checks beyond the spec
model's.  Like Python's own bytecode cache,
the cache is an optimisation only: a missing, unreadable, corrupt or unwritable cache is silently
rebuilt or skipped, never an error.  ``LORA_ADVISOR_CACHE_DIR`` moves it (tests use it);
``LORA_ADVISOR_CACHE_DIR=off`` turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = 1


def cache_dir() -> Path | None:
    override = os.environ.get("LORA_ADVISOR_CACHE_DIR")
    if override == "off":
        return None
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lora-advisor"))


def _engine_stamp() -> str:
    spec = importlib.util.find_spec("rule_engine")  # finds the package without importing it
    if spec is None or not spec.origin:
        return "none"
    stat = os.stat(spec.origin)
    return f"{spec.origin}:{stat.st_size}:{stat.st_mtime_ns}"


def _key(text: str, source: str) -> str:
    import dataclasses

    from .facts import FACT_CLASSES
    from .fastpath import __file__ as fastpath_file

    facts = ",".join(f"{prefix}.{f.name}:{f.type}" for prefix, cls in FACT_CLASSES.items() for f in dataclasses.fields(cls))
    fastpath = Path(fastpath_file).stat()
    parts = [str(FORMAT), source, text, facts, _engine_stamp(), f"{fastpath.st_size}:{fastpath.st_mtime_ns}"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _path(source: str) -> Path | None:
    directory = cache_dir()
    name = hashlib.sha256(source.encode()).hexdigest()[:16]
    return None if directory is None else directory / f"rules-{name}.json"


def read(text: str, source: str) -> list[dict[str, Any]] | None:
    """The cached entries ({spec, source, ir}) of a pack, or None (not cached, or unusable)."""
    try:
        path = _path(source)
        if path is None or not path.exists():
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("key") != _key(text, source) or not isinstance(doc.get("rules"), list):
            return None
        return doc["rules"]
    except (OSError, ValueError, AttributeError):
        return None


def write(text: str, source: str, entries: list[dict[str, Any]]) -> None:
    """Store a pack's entries atomically (a reader never sees half a file); failures are ignored."""
    try:
        path = _path(source)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rules-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"format": FORMAT, "key": _key(text, source), "source": source, "rules": entries}, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, TypeError, ValueError):
        pass
