"""NVML through nvidia-ml-py (imported as ``pynvml``), the nvitop way: lazy init, every call guarded.

Nothing here raises to the caller for a machine-side problem.  No library, no driver, a driver/library
mismatch, no permission, an init that hangs, a field the GPU does not support, a GPU that falls off the
bus: each becomes a state (``Detection.reason`` / ``hint``) or a missing field (``None``).
The ``module`` argument lets tests put a fake ``pynvml`` at exactly this boundary.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from .info import DriverInfo, GpuInfo, MigInstance, ProcessInfo

INIT_TIMEOUT_S = 5.0
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
        """Call one NVML function: ``None`` when unsupported or failing, ``GpuLost`` when the GPU left."""
        nv = self.module
        try:
            return fn(*args)
        except _error_class(nv, "GpuIsLost") as exc:
            raise GpuLost(str(exc)) from None
        except nv.NVMLError:
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
        if info is None:
            return None
        return int(info.total), int(info.free), int(info.used)

    # -- the whole picture ---------------------------------------------------------------------------
    def detect(self) -> Detection:
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
