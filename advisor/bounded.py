"""Reading files other people write, with bounds on size, shape and work.

Every file the advisor reads (a config.json, a training YAML, a rule pack, a saved plan, its own caches)
goes through here: it must be a regular file under a size limit (a FIFO, ``/dev/zero`` or a directory is
refused before it is opened), text in UTF-8 (a UTF-16 file, a ``.safetensors`` checkpoint or any other
binary is refused from its first bytes, not after reading it whole), and its JSON or YAML is bounded in
nesting depth and, for YAML, in the size its aliases expand to ("billion laughs"), checked on the event
stream before anything is built.  Numbers must be finite and of a sane length (``1e400`` and a
thousand-digit integer are refused, not turned into ``inf`` or an ``OverflowError`` later).

Each function raises ``InputError`` (an ``AdvisorError``: exit 2) with what was wrong; a caller that reads
its own stores catches it and ignores the store instead.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import AdvisorError

KiB, MiB = 1 << 10, 1 << 20

MAX_DEPTH = 64  # nesting of JSON / YAML collections: real configs nest 3-6 deep
MAX_NODES = 200_000  # scalars and collections in one document, aliases expanded
MAX_INT_DIGITS = 30  # any count or size the advisor reads fits in 30 digits (10^30 bytes is a quettabyte)
MAX_ALIASES = 1_000

# Files that are never text: what a user may pass by mistake for a config (a checkpoint, an archive).
BINARY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".h5", ".msgpack", ".onnx",
                   ".npz", ".npy", ".pkl", ".pickle", ".zip", ".tar", ".gz", ".tgz", ".xz", ".zst", ".7z", ".parquet",
                   ".arrow")


class InputError(AdvisorError):
    """A file that is too large, not text, too deeply nested, or expands beyond the bounds."""


def _error(message: str, hint: str, error: type[AdvisorError], field: str | None, value: object) -> AdvisorError:
    return error(message, hint, field=field, value=value)


def read_text(path: Path, limit: int, *, what: str = "file", hint: str = "check the path",
              error: type[AdvisorError] = InputError, field: str | None = None) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (a UTF-8 byte-order mark is dropped)."""
    path = Path(path)
    where = str(path)
    if path.suffix.lower() in BINARY_SUFFIXES:
        raise _error(f"{where} is a {path.suffix} file, not a {what}", hint, error, field, where)
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or "not a valid path"
        raise _error(f"cannot read {where}: {reason}", hint, error, field, where) from None
    if stat.S_ISDIR(info.st_mode):
        raise _error(f"{where} is a directory, not a {what}", hint, error, field, where)
    if not stat.S_ISREG(info.st_mode):
        raise _error(f"{where} is not a regular file (a device or a pipe), not a {what}", hint, error, field, where)
    if info.st_size > limit:
        raise _error(f"{where} is {info.st_size / MiB:.1f} MiB: larger than any {what} ({limit // KiB:,} KiB at most)",
                     hint, error, field, where)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _error(f"cannot read {where}: {exc.strerror}", hint, error, field, where) from None
    if len(data) > limit:  # grew while we looked
        raise _error(f"{where} is larger than any {what} ({limit // KiB:,} KiB at most)", hint, error, field, where)
    return decode_text(data, where, what=what, hint=hint, error=error, field=field)


def _looks_utf16(head: bytes) -> bool:
    """Text in UTF-16 without a byte-order mark: every other byte zero, the rest printable ASCII."""
    if len(head) < 4:
        return False
    for zeros, chars in ((head[1::2], head[0::2]), (head[0::2], head[1::2])):
        if zeros.count(0) == len(zeros) and all(32 <= c < 127 or c in (9, 10, 13) for c in chars):
            return True
    return False


def decode_text(data: bytes, where: str, *, what: str = "file", hint: str = "check the file",
                error: type[AdvisorError] = InputError, field: str | None = None) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(data[:64]):
        raise _error(f"{where} is UTF-16 or UTF-32 text", f"save the {what} as UTF-8", error, field, where)
    if b"\0" in data[:8192]:
        raise _error(f"{where} is a binary file, not a {what}", hint, error, field, where)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(f"{where}: byte {exc.start} is not UTF-8: this is not a text {what}",
                     f"save the {what} as UTF-8", error, field, where) from None


def shown(value: object, limit: int = 40) -> str:
    """A value for an error message: its repr, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- JSON -----------------------------------------------------------------------------------------------
class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"a number with {len(text.lstrip('-'))} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 100:
        raise _Refused(f"a number written with {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} is beyond a 64-bit float")
    return value


def _parse_constant(text: str) -> float:
    raise _Refused(f"{text} is not a number JSON allows")


def load_json(text: str, where: str, *, what: str = "JSON file", hint: str = "check the file",
              error: type[AdvisorError] = InputError, field: str | None = None) -> Any:
    """JSON with finite numbers of sane length and bounded nesting; a syntax error names its line."""
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise _error(f"{where}: line {exc.lineno}, column {exc.colno}: {exc.msg}", hint, error, field, where) from None
    except _Refused as exc:
        raise _error(f"{where}: {exc}", hint, error, field, where) from None
    except (RecursionError, ValueError) as exc:  # nesting beyond the interpreter's stack; a digit limit
        raise _error(f"{where}: {_parse_limit(exc)}", hint, error, field, where) from None
    check_shape(data, where, hint=hint, error=error, field=field)
    return data


def _parse_limit(exc: Exception) -> str:
    """What a parser hit: the interpreter's nesting limit or its integer digit limit."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"a number with more than {MAX_INT_DIGITS} digits" if "digits" in str(exc) else str(exc)


def check_shape(data: Any, where: str, *, hint: str = "check the file", error: type[AdvisorError] = InputError,
                field: str | None = None, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Nesting depth and node count of parsed data, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise _error(f"{where}: more than {max_nodes:,} values", hint, error, field, where)
        if isinstance(item, (dict, list, tuple)):
            if depth > max_depth:
                raise _error(f"{where}: nested more than {max_depth} levels deep", hint, error, field, where)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


# ---- YAML -----------------------------------------------------------------------------------------------
def _yaml_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: ~20x faster


def check_yaml_events(text: str, where: str, *, hint: str = "check the file", error: type[AdvisorError] = InputError,
                      field: str | None = None, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Walk the YAML event stream (no recursion, nothing built) and refuse a document nested deeper than
    ``max_depth`` or whose aliases expand to more than ``max_nodes`` values."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> expanded size of its finished node
    stack: list[list] = []  # per open collection: [expanded size so far, anchor]
    expanded = 0  # values in the document so far, aliases expanded
    aliases = 0

    def add(size: int) -> None:
        nonlocal expanded
        expanded += size
        if stack:
            stack[-1][0] += size
        if expanded > max_nodes:
            raise _error(f"{where}: expands to more than {max_nodes:,} values (YAML aliases?)",
                         "write the values out instead of repeating anchors", error, field, where)

    for event in yaml.parse(text, Loader=_yaml_loader()):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            add(1)
            stack.append([1, event.anchor])
            if len(stack) > max_depth:
                raise _error(f"{where}:{event.start_mark.line + 1}: nested more than {max_depth} levels deep",
                             hint, error, field, where)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            size, anchor = stack.pop()
            if stack:
                stack[-1][0] += size - 1  # the start already counted this collection itself once
            if anchor is not None:
                sizes[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if event.anchor not in sizes:
                raise _error(f"{where}:{event.start_mark.line + 1}: alias *{event.anchor} refers to itself or to "
                             "nothing", hint, error, field, where)
            if aliases > MAX_ALIASES:
                raise _error(f"{where}: more than {MAX_ALIASES:,} aliases", hint, error, field, where)
            add(sizes[event.anchor])


def load_yaml(text: str, where: str, *, what: str = "YAML file", hint: str = "check the indentation and quoting",
              error: type[AdvisorError] = InputError, field: str | None = None) -> Any:
    """Safe YAML, bounded before it is built (depth, alias expansion), with finite numbers of sane length."""
    import yaml

    try:
        check_yaml_events(text, where, hint=hint, error=error, field=field)
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc)
        if "nesting depth" in problem:
            problem = "nested too deeply"
        raise _error(f"{where}{line}: invalid YAML: {problem}", hint, error, field, where) from None
    except (ValueError, RecursionError) as exc:  # an integer beyond Python's digit limit
        raise _error(f"{where}: {_parse_limit(exc)}", hint, error, field, where) from None
    check_numbers(data, where, hint=hint, error=error, field=field)
    return data


def check_numbers(data: Any, where: str, *, hint: str = "check the file", error: type[AdvisorError] = InputError,
                  field: str | None = None) -> None:
    """Every number finite and of at most ``MAX_INT_DIGITS`` digits (the data is already bounded in size)."""
    stack = [data]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int) and abs(item) >= 10 ** MAX_INT_DIGITS:
            raise _error(f"{where}: a number with more than {MAX_INT_DIGITS} digits", hint, error, field, where)
        if isinstance(item, float) and not math.isfinite(item):
            raise _error(f"{where}: {item} is not a finite number", hint, error, field, where)
        if isinstance(item, (dict, list)):
            if id(item) in seen:  # an alias: checked once
                continue
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
            if isinstance(item, dict):
                stack.extend(k for k in item if not isinstance(k, str))
