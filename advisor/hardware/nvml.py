"""NVML through nvidia-ml-py (imported as ``pynvml``), the nvitop way: lazy init, every call guarded.

Nothing here raises to the caller for a machine-side problem.  No library, no driver, a driver/library
mismatch, no permission, an init that hangs, a field the GPU does not support, a GPU that falls off the
bus: each becomes a state (``Detection.reason`` / ``hint``) or a missing field (``None``).
The ``module`` argument lets tests put a fake ``pynvml`` at exactly this boundary.

``detect()`` is what commands call: it runs the whole probe in a forked child with a deadline, so a driver
that hangs in ``nvmlInit`` or in a query (a GPU fallen off the bus holds the call, and the interpreter lock,
inside the C library), a binding that raises something other than ``NVMLError``, or a library that aborts
the process costs at most the deadline and ends in a state with a message; Ctrl-C still works (the parent
only waits on a pipe) and kills the child.  The result is kept for the process: a failure for good (a hung
driver stays hung), a success for a few seconds (one command asks once).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from .info import DriverInfo, GpuInfo, MigInstance, ProcessInfo

INIT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 6.0  # the whole forked probe; LORA_ADVISOR_NVML_TIMEOUT overrides it
PROBE_REUSE_S = 2.0  # a successful probe answers the same process again for this long (the app polls every 5 s)
MAX_PROBE_BYTES = 4 << 20
NO_DRIVER_HINT = "plan for a GPU anyway with --gpu NAME (e.g. --gpu 4090, --gpu 4xA100-80GB) or --vram SIZE"


class GpuLost(Exception):
    """A GPU stopped answering (fell off the bus, reset) while we were reading it."""


@dataclass
class Detection:
    gpus: list[GpuInfo] = field(default_factory=list)
    driver: DriverInfo | None = None
    reason: str | None = None  # why there are no GPUs (None when detection worked)
    hint: str | None = None
    cuda_visible: list[int] | None = None  # NVML indices CUDA will use, in CUDA order (None: all)


def _error_class(module: ModuleType, name: str) -> type:
    """pynvml builds NVMLError_<Name> subclasses at import; a missing one matches nothing."""
    return getattr(module, f"NVMLError_{name}", type(f"_Absent{name}", (Exception,), {}))


class Nvml:
    """One NVML session.  ``open()`` initialises lazily and at most once; ``close()`` shuts it down."""

    def __init__(self, module: ModuleType | None = None, init_timeout_s: float = INIT_TIMEOUT_S) -> None:
        self._module = module
        self._init_timeout_s = init_timeout_s
        self._lock = threading.RLock()
        self._open = False
        self.failure: tuple[str, str] | None = None  # (reason, hint) once opening failed

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def module(self) -> ModuleType | None:
        if self._module is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                return None
            self._module = pynvml
        return self._module

    def open(self) -> bool:
        with self._lock:
            if self._open:
                return True
            if self.failure is not None:
                return False
            nv = self.module
            if nv is None:
                self.failure = ("the nvidia-ml-py package is not installed", "pip install nvidia-ml-py; " + NO_DRIVER_HINT)
                return False
            outcome: list[BaseException | None] = []

            def init() -> None:
                try:
                    nv.nvmlInit()
                    outcome.append(None)
                except BaseException as exc:  # reported below, never raised
                    outcome.append(exc)

            worker = threading.Thread(target=init, name="nvml-init", daemon=True)
            worker.start()
            worker.join(self._init_timeout_s)
            if not outcome:
                self.failure = (f"NVML did not initialise within {self._init_timeout_s:.0f} s (a hung driver?)",
                                "check `nvidia-smi`; meanwhile " + NO_DRIVER_HINT)
                return False
            if outcome[0] is not None:
                self.failure = self._explain_init_error(outcome[0])
                return False
            self._open = True
            return True

    def _explain_init_error(self, exc: BaseException) -> tuple[str, str]:
        nv = self.module
        if isinstance(exc, _error_class(nv, "LibraryNotFound")):
            return "no NVIDIA driver found (libnvidia-ml is not installed)", NO_DRIVER_HINT
        if isinstance(exc, _error_class(nv, "DriverNotLoaded")):
            return "the NVIDIA driver is installed but not loaded", "load it (or reboot); meanwhile " + NO_DRIVER_HINT
        if isinstance(exc, _error_class(nv, "NoPermission")):
            return "no permission to talk to the NVIDIA driver", "check /dev/nvidia* permissions; meanwhile " + NO_DRIVER_HINT
        if isinstance(exc, _error_class(nv, "LibRmVersionMismatch")):
            return "NVIDIA driver/library version mismatch", "reboot after a driver update; meanwhile " + NO_DRIVER_HINT
        return f"NVML failed to initialise: {exc}", NO_DRIVER_HINT

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                try:
                    self.module.nvmlShutdown()
                except Exception:  # shutting down a broken driver must not crash an exiting app
                    pass

    def __enter__(self) -> "Nvml":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- guarded queries ---------------------------------------------------------------------------
    def query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML function: ``None`` when unsupported or failing (an ``NVMLError``, or anything else a
        mismatched binding raises), ``GpuLost`` when the GPU left."""
        nv = self.module
        try:
            return fn(*args)
        except _error_class(nv, "GpuIsLost") as exc:
            raise GpuLost(str(exc)) from None
        except getattr(nv, "NVMLError", Exception):
            return None
        except Exception:  # a binding / driver mismatch (TypeError, AttributeError, OSError, ...): no value
            return None

    def device_count(self) -> int:
        with self._lock:
            return self.query(self.module.nvmlDeviceGetCount) or 0

    def handle(self, index: int) -> Any:
        return self.query(self.module.nvmlDeviceGetHandleByIndex, index)

    def memory(self, handle: Any) -> tuple[int, int, int] | None:
        """(total, free, used) bytes: memory info v2 (excludes driver-reserved memory from 'used'),
        falling back to v1 on drivers and GPUs that do not support v2."""
        nv = self.module
        with self._lock:
            info = None
            version = getattr(nv, "nvmlMemory_v2", None)
            if version is not None:
                info = self.query(nv.nvmlDeviceGetMemoryInfo, handle, version)
            if info is None:
                info = self.query(nv.nvmlDeviceGetMemoryInfo, handle)
        try:
            total, free, used = int(info.total), int(info.free), int(info.used)
        except (AttributeError, TypeError, ValueError):
            return None
        if total <= 0 or not 0 <= used <= total or not 0 <= free <= total:
            return None  # a GPU reporting 0 bytes (or nonsense) has no known memory
        return total, free, used

    # -- the whole picture ---------------------------------------------------------------------------
    def detect(self) -> Detection:
        try:
            return self._detect()
        except Exception as exc:  # anything a broken binding raises outside a guarded query
            return Detection(reason=f"NVML failed while reading the GPUs ({type(exc).__name__}: {str(exc)[:120]})",
                             hint="check that nvidia-ml-py matches the driver (`nvidia-smi`); meanwhile " + NO_DRIVER_HINT)

    def _detect(self) -> Detection:
        if not self.open():
            reason, hint = self.failure
            return Detection(reason=reason, hint=hint)
        nv = self.module
        driver = DriverInfo(driver_version=_text(self.query(nv.nvmlSystemGetDriverVersion)),
                            cuda_driver_version=_cuda_version(self.query(nv.nvmlSystemGetCudaDriverVersion_v2)))
        gpus: list[GpuInfo] = []
        lost: list[int] = []
        for index in range(self.device_count()):
            try:
                gpus.append(self._gpu(index))
            except GpuLost:
                lost.append(index)
        detection = Detection(gpus=gpus, driver=driver, cuda_visible=cuda_visible_indices(gpus))
        if not gpus:
            detection.reason = ("the NVIDIA driver reports no GPUs" if not lost else f"GPU(s) {lost} stopped responding")
            detection.hint = NO_DRIVER_HINT
        elif lost:
            detection.reason = f"GPU(s) {lost} stopped responding and are left out"
            detection.hint = "check `nvidia-smi` and the kernel log (Xid errors)"
        unsized = [g.index for g in gpus if g.total_bytes is None]
        if unsized and not detection.reason:
            detection.reason = f"GPU(s) {unsized} report no memory size (0 bytes or unreadable)"
            detection.hint = "check `nvidia-smi`; meanwhile " + NO_DRIVER_HINT
        return detection

    def _gpu(self, index: int) -> GpuInfo:
        nv = self.module
        handle = self.handle(index)
        if handle is None:
            raise GpuLost(f"no handle for GPU {index}")
        memory = self.memory(handle)
        cc = self.query(nv.nvmlDeviceGetCudaComputeCapability, handle)
        pci = self.query(nv.nvmlDeviceGetPciInfo_v3, handle) if hasattr(nv, "nvmlDeviceGetPciInfo_v3") else None
        pci = pci or self.query(nv.nvmlDeviceGetPciInfo, handle)
        mig_enabled, instances = self._mig(handle)
        return GpuInfo(
            index=index,
            uuid=_text(self.query(nv.nvmlDeviceGetUUID, handle)),
            name=_text(self.query(nv.nvmlDeviceGetName, handle)) or f"GPU {index}",
            total_bytes=memory[0] if memory else None,
            free_bytes=memory[1] if memory else None,
            used_bytes=memory[2] if memory else None,
            compute_capability=tuple(cc) if cc else None,
            pci_bus_id=_text(getattr(pci, "busId", None)) if pci is not None else None,
            mig_enabled=mig_enabled,
            mig_instances=instances,
            processes=self._processes(handle),
            nvlink_active=self._nvlink(handle),
        )

    def _mig(self, handle: Any) -> tuple[bool | None, list[MigInstance]]:
        nv = self.module
        mode = self.query(nv.nvmlDeviceGetMigMode, handle)
        if mode is None:
            return None, []  # not a MIG-capable GPU
        enabled = bool(mode[0])
        instances: list[MigInstance] = []
        if enabled:
            for slot in range(self.query(nv.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
                mig = self.query(nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
                if mig is None:
                    continue
                memory = self.memory(mig)
                instances.append(MigInstance(index=slot, uuid=_text(self.query(nv.nvmlDeviceGetUUID, mig)),
                                             total_bytes=memory[0] if memory else None,
                                             used_bytes=memory[2] if memory else None))
        return enabled, instances

    def _processes(self, handle: Any) -> list[ProcessInfo]:
        nv = self.module
        seen: dict[int, ProcessInfo] = {}
        for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nv, fn_name, None)
            for proc in (self.query(fn, handle) if fn else None) or []:
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid not in seen:
                    seen[proc.pid] = ProcessInfo(pid=proc.pid, name=_text(self.query(nv.nvmlSystemGetProcessName, proc.pid)),
                                                 used_bytes=int(used) if isinstance(used, int) else None)
        return list(seen.values())

    def _nvlink(self, handle: Any) -> bool | None:
        nv = self.module
        links = getattr(nv, "NVML_NVLINK_MAX_LINKS", 0)
        states = [self.query(nv.nvmlDeviceGetNvLinkState, handle, link) for link in range(links)]
        known = [state for state in states if state is not None]
        if not known:
            return None  # NVLink not supported (most consumer cards)
        return any(state == getattr(nv, "NVML_FEATURE_ENABLED", 1) for state in known)


# ---- the probe commands use: a forked child with a deadline ----------------------------------------------
_probes: dict[int, tuple[float, Detection, bool, object]] = {}  # id(pynvml) -> (when, detection, final, pynvml)
_probe_lock = threading.Lock()


def _probe_timeout() -> float:
    try:
        value = float(os.environ.get("LORA_ADVISOR_NVML_TIMEOUT", PROBE_TIMEOUT_S))
    except ValueError:
        value = PROBE_TIMEOUT_S
    return min(max(value, 0.1), 120.0) if value == value else PROBE_TIMEOUT_S


def _no_driver_here() -> bool:
    """Linux with no trace of an NVIDIA kernel driver (and no WSL GPU bridge): NVML cannot find a GPU, so the
    probe is skipped (near-zero cost on machines without one).  Only when pynvml is not loaded already."""
    import sys

    if not sys.platform.startswith("linux") or "pynvml" in sys.modules:
        return False
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def detect(timeout_s: float | None = None, reuse_s: float = PROBE_REUSE_S) -> Detection:
    """This machine's GPUs, probed in a child process with a deadline (see the module's docstring)."""
    import sys

    if _no_driver_here():
        return Detection(reason="no NVIDIA driver found (the kernel driver is not loaded)", hint=NO_DRIVER_HINT)
    module = sys.modules.get("pynvml")  # kept in the entry, so its id is not reused by another module
    key = id(module)
    with _probe_lock:
        cached = _probes.get(key)
        if cached is not None and (cached[2] or time.monotonic() - cached[0] < reuse_s):
            return cached[1]
        timeout = _probe_timeout() if timeout_s is None else timeout_s
        if not hasattr(os, "fork"):  # Windows: in-process, init bounded by a thread
            detection, final = Nvml(init_timeout_s=min(INIT_TIMEOUT_S, timeout)).detect(), False
        else:
            detection, final = _forked_probe(timeout)
        _probes[key] = (time.monotonic(), detection, final, module)
        return detection


def _forked_probe(timeout: float) -> tuple[Detection, bool]:
    """(detection, final): the probe's answer, or why there is none (a hang or a crash: final for this process)."""
    import pickle
    import select
    import signal

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: probe, write the answer, leave without running the parent's exit handlers
        try:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                import faulthandler
                import resource

                faulthandler.disable()
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an aborting driver leaves no core file
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)  # what the C library prints while it dies is not our output
            except Exception:
                pass
            try:
                with Nvml(init_timeout_s=max(timeout - 0.5, 0.1)) as nvml:
                    payload = pickle.dumps(nvml.detect())
            except BaseException as exc:
                payload = pickle.dumps(Detection(reason=f"NVML failed ({type(exc).__name__}: {str(exc)[:120]})",
                                                 hint=NO_DRIVER_HINT))
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.25))
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PROBE_BYTES:
                timed_out = True
                break
    except BaseException:  # Ctrl-C (or anything): the child goes with us
        _end_child(pid, kill=True)
        raise
    finally:
        os.close(read_fd)
    status = _end_child(pid, kill=timed_out)
    if timed_out:
        return Detection(reason=f"NVML did not answer within {timeout:.0f} s (a hung driver, or a GPU fallen off the bus?)",
                         hint="check `nvidia-smi` and the kernel log (Xid errors); meanwhile " + NO_DRIVER_HINT), True
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return Detection(reason=f"the NVIDIA library crashed while probing the GPUs ({name})",
                         hint="check the driver installation (`nvidia-smi`); meanwhile " + NO_DRIVER_HINT), True
    try:
        detection = pickle.loads(b"".join(chunks))
        if not isinstance(detection, Detection):
            raise TypeError(type(detection).__name__)
        return detection, False
    except Exception:
        return Detection(reason="the GPU probe ended without an answer", hint=NO_DRIVER_HINT), True


def _end_child(pid: int, kill: bool) -> int | None:
    """Reap the probe (killing it first when asked); never wait more than ~1 s for a child stuck in the kernel."""
    import signal

    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + (1.0 if kill else 5.0)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > end:
            if not kill:  # it wrote its answer but does not exit: end it
                kill = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                end = time.monotonic() + 1.0
                continue
            return None  # in uninterruptible sleep inside the driver: the kernel reaps it when it returns
        time.sleep(0.01)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version(value: Any) -> str | None:
    """NVML reports the CUDA driver version as 1000*major + 10*minor (12040 -> '12.4')."""
    if not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def cuda_visible_indices(gpus: list[GpuInfo], env: str | None = None) -> list[int] | None:
    """NVML indices CUDA will see, in CUDA's order, from CUDA_VISIBLE_DEVICES (indices or UUIDs, UUID
    prefixes allowed).  Like CUDA, parsing stops at the first entry that matches nothing.  None: unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if value is None:
        return None
    visible: list[int] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            break
        match = None
        if item.lstrip("-").isdigit():
            number = int(item)
            match = next((g.index for g in gpus if g.index == number), None) if number >= 0 else None
        else:
            match = next((g.index for g in gpus if g.uuid and g.uuid.startswith(item)), None)
            if match is None:
                match = next((g.index for g in gpus for m in g.mig_instances if m.uuid and m.uuid.startswith(item)), None)
        if match is None or match in visible:
            break
        visible.append(match)
    return visible
