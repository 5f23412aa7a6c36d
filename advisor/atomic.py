"""Writing a file so that a reader never sees half of it (house rule 9): a temporary file in the same
directory, renamed over the target.  The export writer has its own all-or-nothing variant for several files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, prefix: str = ".tmp-") -> None:
    """Write ``text`` to ``path`` (creating its directory); OSError when it cannot, with nothing left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
