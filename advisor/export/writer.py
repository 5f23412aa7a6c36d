"""Writing exported files: atomically, never over an existing file without --force, all or nothing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .context import ExportError


FILE_SUFFIXES = (".yaml", ".yml", ".json", ".py", ".toml", ".txt")


def write_files(files: dict[str, str], target: Path, force: bool) -> list[Path]:
    """``target`` is a directory (several files) or, for a single file, a file path."""
    if len(files) == 1 and target.suffix:
        paths = {target: next(iter(files.values()))}
    elif target.suffix.lower() in FILE_SUFFIXES:  # "-o out.yaml" is a file's name, never a directory's
        raise ExportError(f"{_shown(target)} names one file, but this export writes {len(files)}: "
                          f"{', '.join(sorted(files))}", "give a directory with -o (the files go in it together)")
    else:
        paths = {target / name: text for name, text in files.items()}
    existing = [p for p in paths if _exists(p)]
    if existing and not force:
        raise ExportError(f"{existing[0]} exists", "pass --force to overwrite, or -o another path")
    # --force replaces files, never a directory (or a FIFO, a device): refuse before anything is written,
    # so an export is all or nothing even then
    if odd := next((p for p in existing if not p.is_file()), None):
        raise ExportError(f"{odd} exists and is not a regular file: --force only replaces files",
                          "remove it, or choose another -o path")
    for path in paths:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot create {parent}: {exc.strerror}", "choose a writable -o path") from None
        if not os.access(parent, os.W_OK):
            raise ExportError(f"{parent} is not writable", "choose a writable -o path")
    # every file goes to a temp file first; only when all are written do they get their names
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files: give them the mode open() would (the umask's)
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in paths.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                os.fchmod(handle.fileno(), mode)
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"cannot write {exc.filename}: {exc.strerror}", "choose a writable -o path") from None
    return list(paths)


def _exists(path: Path) -> bool:
    """Whether anything is at ``path`` (a name too long for the file system reads as an error, below)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError as exc:
        raise ExportError(f"cannot use {_shown(path)}: {exc.strerror}", "choose a shorter -o path") from None


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
