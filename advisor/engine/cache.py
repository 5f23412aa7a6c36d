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
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic

FORMAT = 2  # 2: packs are cached only after the expression checks (no regexes, builtins, division)
MAX_CACHE_BYTES = 8 << 20  # one pack's entry; a larger file is not ours: ignored (and replaced)
MAX_FILES = 32  # packs cached at most; the least recently written go first
MAX_AGE_S = 30 * 24 * 3600  # an entry not rewritten for 30 days is removed


def cache_dir() -> Path | None:
    override = os.environ.get("LORA_ADVISOR_CACHE_DIR")
    if override == "off":
        return None
    if override:
        return Path(override)
    return user_dir("cache")


def user_dir(kind: str) -> Path | None:
    """platformdirs' cache or data directory for the advisor, or None when it would hang off a home directory
    that does not exist (HOME unset or pointing nowhere): then nothing is cached or stored, rather than
    creating directories under a path that is not there."""
    import platformdirs

    path = Path(platformdirs.user_cache_dir("lora-advisor") if kind == "cache" else platformdirs.user_data_dir("lora-advisor"))
    home = os.path.expanduser("~")
    if not path.is_absolute() or home == "~" or not home:
        return None
    if path.is_relative_to(home) and not Path(home).is_dir():
        return None
    return path


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
    from ..bounded import load_json, read_text
    from ..errors import AdvisorError

    try:
        path = _path(source)
        if path is None or not path.exists():
            return None
        doc = load_json(read_text(path, MAX_CACHE_BYTES), str(path))  # bounded: size, depth, numbers
        if not isinstance(doc, dict) or doc.get("key") != _key(text, source) or not isinstance(doc.get("rules"), list):
            return None
        return doc["rules"]
    except (OSError, ValueError, AttributeError, RecursionError, AdvisorError):
        return None


def write(text: str, source: str, entries: list[dict[str, Any]]) -> None:
    """Store a pack's entries atomically (a reader never sees half a file); failures are ignored."""
    try:
        path = _path(source)
        if path is None:
            return
        payload = json.dumps({"format": FORMAT, "key": _key(text, source), "source": source, "rules": entries})
        if len(payload) > MAX_CACHE_BYTES:
            return  # larger than any pack we would read back
        write_text_atomic(path, payload, prefix=".rules-")
        prune(path.parent, keep=path)
    except (OSError, TypeError, ValueError, RecursionError):
        pass


def prune(directory: Path, keep: Path | None = None, now: float | None = None) -> None:
    """Remove cache entries not written for MAX_AGE_S, then all but the MAX_FILES newest (and stale temp files)."""
    import time

    now = time.time() if now is None else now
    entries = []
    for path in directory.glob("rules-*.json"):
        try:
            entries.append((path.stat().st_mtime, path))
        except OSError:
            continue
    entries.sort(reverse=True)
    for index, (mtime, path) in enumerate(entries):
        if path != keep and (index >= MAX_FILES or now - mtime > MAX_AGE_S):
            path.unlink(missing_ok=True)
    for tmp in directory.glob(".rules-*.tmp"):
        try:
            if now - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)
        except OSError:
            continue
