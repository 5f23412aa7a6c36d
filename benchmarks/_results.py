"""Where benchmark scripts record what they measured: benchmarks/results/<name>-<date>.md, headed by the
date and the machine (a number means little without the machine it came from)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(kind: str) -> Path:
    return RESULTS / f"{kind}-{dt.date.today().isoformat()}.md"


def write_result(path: Path, title: str, body: str, about: str = "") -> Path:
    """Write ``body`` under a heading with the date, the machine and ``about`` (more facts of the run)."""
    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\nDate: {dt.datetime.now().isoformat(timespec='minutes')}; machine: {machine}"
                    f"{about}.\n\n{body}\n")
    return path
