"""The parent side of a verification run: starts the worker, reads its events, can cancel it.

No torch here: the CLI and the TUI stay light, and a crash or an OOM in the child is just an event.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Callable

from ..memory.config import TrainConfig
from ..models.arch import ModelArch

CANCEL_GRACE_S = 2.0


class VerifyRun:
    """One worker process.  ``events()`` yields its JSON events; ``cancel()`` ends it within ~2 s."""

    def __init__(self, arch: ModelArch, cfg: TrainConfig, mode: str, steps: int = 10, sample_hz: float = 10.0,
                 workspace_bytes: int | None = None) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "advisor.verify.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        request = {"arch": arch.model_dump(), "config": cfg.model_dump(), "mode": mode, "steps": steps,
                   "sample_hz": sample_hz,
                   "workspace_bytes": workspace_bytes}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.close()
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def events(self):
        for line in self._proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)
        self._proc.wait()
        if self._proc.returncode not in (0, None) and self._proc.returncode > 0:
            yield {"event": "error", "message": f"the worker exited with code {self._proc.returncode}",
                   "hint": "".join(self._stderr[-5:]).strip() or "no output"}
        elif self._proc.returncode and self._proc.returncode < 0:
            yield {"event": "cancelled", "signal": -self._proc.returncode}

    def cancel(self) -> None:
        """SIGTERM, then SIGKILL after the grace period: no orphan, no GPU memory left held."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    @property
    def stderr_tail(self) -> str:
        return "".join(self._stderr[-20:])


def drain(run, on_event: Callable[[dict], None] | None = None) -> list[dict]:
    """Every event of a run (a VerifyRun or a launch.ExportedRun) to its end, each also to ``on_event`` as it
    comes; Ctrl-C cancels the child (no orphan) and goes on up."""
    events = []
    try:
        for event in run.events():
            events.append(event)
            if on_event:
                on_event(event)
    except KeyboardInterrupt:
        run.cancel()
        raise
    return events


def run_to_end(arch: ModelArch, cfg: TrainConfig, mode: str, steps: int = 10,
               on_event: Callable[[dict], None] | None = None) -> list[dict]:
    return drain(VerifyRun(arch, cfg, mode, steps), on_event)
