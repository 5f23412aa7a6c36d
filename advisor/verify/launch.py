"""Verify with the exported job itself: run a directory's train.py on the GPUs and read its events.

``run_exported(directory, gpus, steps)`` starts ``python train.py --synthetic --random-init --max-steps N``
(one GPU) or ``accelerate launch --config_file accelerate.yaml --num_processes G train.py ...`` (several) in
that directory, as a child process in its own session.  It yields the same events as the worker
(advisor/verify/worker.py), so ``VerifyReport.build(..., mode="cuda", events)`` folds them unchanged:

- ``start`` and ``step`` come from the script's own JSON lines (rank 0's stdout);
- ``sample`` ({"used_bytes": {nvml index: bytes}}) from an NVML thread here in the parent;
- ``oom`` when the job runs out of GPU memory (its own oom line, or "CUDA out of memory" on stderr);
- ``error`` ({"message", "hint"}) for any other non-zero exit, ``cancelled`` after ``cancel()``;
- ``result`` ({"mode": "cuda", "steps": N, "environment": {...}}) when it finished.

No torch here: the parent stays light, and whatever the job does to CUDA stays in the job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from queue import Queue
from typing import Callable, Iterator

CANCEL_GRACE_S = 2.0
SCRIPT = "train.py"
ACCELERATE_CONFIG = "accelerate.yaml"
OOM_MARKERS = ("torch.OutOfMemoryError", "CUDA out of memory", "OutOfMemoryError")
_DONE = object()  # the job closed its stdout


def command(directory: Path, gpus: int, steps: int, random_init: bool = True,
            extra: tuple[str, ...] = ()) -> list[str]:
    """The command line that runs the exported job on synthetic data for ``steps`` optimizer steps."""
    job = [SCRIPT, "--synthetic", "--max-steps", str(steps), *(["--random-init"] if random_init else []), *extra]
    if gpus > 1 or (directory / ACCELERATE_CONFIG).exists():
        # accelerate's own entry point in this interpreter, so a venv without `accelerate` on PATH still works
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG,
                "--num_processes", str(gpus), *job]
    return [sys.executable, *job]


class ExportedRun:
    """One exported job.  ``events()`` yields its events as they come; ``cancel()`` ends it (and every process
    accelerate started) within ~2 s.

    ``random_init=False`` loads the real checkpoint (a download): the script cannot build quantized random
    weights, so a QLoRA / 8-bit plan is checked that way.  ``extra`` is passed on to train.py (the tests use
    ``("--cpu",)``); ``env`` is added to the job's environment."""

    def __init__(self, directory: str | Path, gpus: int, steps: int = 10, sample_hz: float = 10.0,
                 random_init: bool = True, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        if not (self.directory / SCRIPT).is_file():
            raise FileNotFoundError(f"no {SCRIPT} in {self.directory}")
        self.steps = steps
        self.device = "cuda"  # what the job reports in its start event (cpu only for a --cpu smoke run)
        self._sample_hz = sample_hz
        self._stderr: list[str] = []
        self._cancelled = False
        self.command = command(self.directory, gpus, steps, random_init, tuple(extra))
        self._proc = subprocess.Popen(
            self.command, cwd=self.directory, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True)  # its own process group: cancel() reaches accelerate's children too
        self._drain = threading.Thread(target=self._read_stderr, name="exported-stderr", daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stderr_tail(self) -> str:
        return "".join(self._stderr[-20:])

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line)

    def events(self) -> Iterator[dict]:
        """The job's events as they come (NVML samples included, also while the model loads), then exactly
        one of result, oom, error or cancelled (see the module docstring)."""
        queue: Queue = Queue()
        stop = threading.Event()
        threads = [threading.Thread(target=self._read_stdout, args=(queue,), name="exported-stdout", daemon=True),
                   threading.Thread(target=_sample, args=(stop, self._sample_hz, queue), name="nvml-sampler",
                                    daemon=True)]
        for thread in threads:
            thread.start()
        steps, oom = 0, None
        try:
            while (event := queue.get()) is not _DONE:
                if event["event"] == "oom":  # reported once, as the ending
                    oom = event
                    continue
                if event["event"] == "start":
                    self.device = event.get("device", self.device)
                steps += event["event"] == "step"
                yield event
            self._proc.wait()
            self._drain.join(timeout=1.0)
        finally:
            stop.set()
            threads[1].join(timeout=1.0)
        yield self._ending(steps, oom)

    def _read_stdout(self, queue: Queue) -> None:
        for line in self._proc.stdout:
            event = _parse(line)
            if event is not None:  # the Trainer's own log dicts and prints share stdout
                queue.put(event)
        queue.put(_DONE)

    def _ending(self, steps: int, oom: dict | None) -> dict:
        code = self._proc.returncode
        if self._cancelled or code < 0:
            return {"event": "cancelled", "signal": -code if code < 0 else int(signal.SIGTERM)}
        stderr = "".join(self._stderr)
        if oom is not None or any(marker in stderr for marker in OOM_MARKERS):
            message = oom["message"] if oom else _oom_line(stderr)
            return {"event": "oom", "step": (oom or {}).get("step", steps + 1), "message": message}
        if code != 0:
            return {"event": "error",
                    "message": f"the exported {SCRIPT} exited with code {code}: {failure_line(self._stderr)}",
                    "hint": f"run it yourself in {self.directory}: {' '.join(self.command)}"}
        return {"event": "result", "mode": self.device, "steps": steps, "environment": _environment()}

    def cancel(self) -> None:
        """SIGTERM to the job's process group, SIGKILL after the grace period: no orphan holds GPU memory."""
        if self._proc.poll() is not None:
            return
        self._cancelled = True
        _signal_group(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


def run_exported(directory: str | Path, gpus: int, steps: int = 10, on_event: Callable[[dict], None] | None = None,
                 random_init: bool = True, extra: tuple[str, ...] = ()) -> list[dict]:
    """Run an exported directory's train.py to the end; every event also goes to ``on_event`` as it comes."""
    from .runner import drain

    return drain(ExportedRun(directory, gpus, steps, random_init=random_init, extra=extra), on_event)


def _parse(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _sample(stop: threading.Event, hz: float, out: Queue) -> None:
    """NVML readings from the parent: the job's processes are opaque, the GPUs are not."""
    from ..hardware.sampler import MemorySampler

    with MemorySampler() as sampler:
        if not sampler.available:
            return
        while not stop.wait(1.0 / hz):
            out.put({"event": "sample", "time": time.time(),
                        "used_bytes": {str(k): v for k, v in sampler.sample().items()}})


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # already gone
        pass


# A Python exception as the job's stderr shows it: "ValueError: ...", or under torchrun "[rank0]: ValueError: ..."
_EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b:?.*)$")
# torchrun's summary after a child failed names its own error, not the child's
_LAUNCHER_ERRORS = ("ChildFailedError", "torch.distributed.elastic")


def failure_line(stderr_lines: list[str]) -> str:
    """The line that says why the job failed: the last exception the training process raised (the prefix
    torchrun adds removed), else the last line with words in it.  accelerate and torchrun end a failed job
    with a banner of '=' and a summary that only says the child failed."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION.match(line)
        if match and not any(name in line for name in _LAUNCHER_ERRORS):
            return match.group(1)
    worded = [line for line in lines if re.search(r"[A-Za-z]{3}", line)]
    return worded[-1] if worded else "no output"


def _oom_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if any(marker in line for marker in OOM_MARKERS):
            return line.strip()
    return "out of GPU memory"


def _environment() -> dict:
    """What a calibration point is keyed by, read without importing torch (versions of the installed stack)."""
    stack = {}
    for name in ("transformers", "peft", "trl", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            stack[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env: dict = {"stack": stack, "launcher": "exported train.py"}
    try:
        env["torch_version"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        pass
    from ..hardware.nvml import Nvml

    with Nvml() as nvml:
        detection = nvml.detect()
    if detection.driver:
        env["driver_version"] = detection.driver.driver_version
    order = detection.cuda_visible or [gpu.index for gpu in detection.gpus]  # CUDA device 0 first
    names = {gpu.index: gpu.name for gpu in detection.gpus}
    if order and order[0] in names:
        env["gpu_name"] = names[order[0]]
    return env

