"""A fake ``pynvml`` module for tests: the same names and error classes, driven by plain data."""

from __future__ import annotations

import time
import types
from dataclasses import dataclass, field

GiB = 1 << 30


@dataclass
class FakeMig:
    uuid: str
    total: int
    used: int


@dataclass
class FakeGpu:
    name: str = "NVIDIA GeForce RTX 4090"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    total: int = 24 * GiB
    used: int = 1 * GiB
    cc: tuple[int, int] | None = (8, 9)
    bus_id: str = "00000000:01:00.0"
    mem_v2: bool = True
    mig: bool | None = None  # None: not MIG-capable
    migs: list[FakeMig] = field(default_factory=list)
    processes: list[tuple[int, int | None, str | None]] = field(default_factory=list)  # pid, bytes, name
    nvlink: list[int] | None = None  # None: not supported
    lost: bool = False


def make_fake_pynvml(gpus: list[FakeGpu] | None = None, init_error: str | None = None, hang_s: float = 0.0,
                     driver: str = "550.54.15", cuda: int = 12040) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.calls = []
    nv.shutdowns = 0

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError
    for name in ("LibraryNotFound", "DriverNotLoaded", "NoPermission", "NotSupported", "GpuIsLost",
                 "LibRmVersionMismatch", "FunctionNotFound", "InvalidArgument", "Unknown"):
        setattr(nv, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    nv.NVML_FEATURE_ENABLED = 1
    nv.NVML_FEATURE_DISABLED = 0
    nv.NVML_NVLINK_MAX_LINKS = 4
    nv.nvmlMemory_v2 = 0x2000028
    gpus = list(gpus or [])

    def alive(handle):
        if getattr(handle, "lost", False):
            raise nv.NVMLError_GpuIsLost("GPU is lost")
        return handle

    def nvmlInit():
        nv.calls.append("init")
        if hang_s:
            time.sleep(hang_s)
        if init_error:
            raise getattr(nv, f"NVMLError_{init_error}")(init_error)

    def nvmlShutdown():
        nv.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(index):
        if index >= len(gpus):
            raise nv.NVMLError_InvalidArgument("index")
        return alive(gpus[index])

    def nvmlDeviceGetMemoryInfo(handle, version=None):
        alive(handle)
        if version is not None and not getattr(handle, "mem_v2", True):
            raise nv.NVMLError_FunctionNotFound("v2 unsupported")
        return types.SimpleNamespace(total=handle.total, used=handle.used, free=handle.total - handle.used)

    def nvmlDeviceGetCudaComputeCapability(handle):
        if alive(handle).cc is None:
            raise nv.NVMLError_NotSupported("cc")
        return handle.cc

    def nvmlDeviceGetMigMode(handle):
        if alive(handle).mig is None:
            raise nv.NVMLError_NotSupported("mig")
        return (int(handle.mig), int(handle.mig))

    def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
        if index >= len(handle.migs):
            raise nv.NVMLError_NotFound("no MIG device") if hasattr(nv, "NVMLError_NotFound") else nv.NVMLError("x")
        return handle.migs[index]

    def nvmlDeviceGetComputeRunningProcesses(handle):
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used, _ in alive(handle).processes]

    names = {}

    def nvmlSystemGetProcessName(pid):
        for gpu in gpus:
            for p, _, n in gpu.processes:
                names[p] = n
        if names.get(pid) is None:
            raise nv.NVMLError_NoPermission("other user")
        return names[pid]

    def nvmlDeviceGetNvLinkState(handle, link):
        if alive(handle).nvlink is None:
            raise nv.NVMLError_NotSupported("nvlink")
        return handle.nvlink[link] if link < len(handle.nvlink) else 0

    nv.nvmlInit = nvmlInit
    nv.nvmlShutdown = nvmlShutdown
    nv.nvmlDeviceGetCount = lambda: len(gpus)
    nv.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    nv.nvmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo
    nv.nvmlDeviceGetCudaComputeCapability = nvmlDeviceGetCudaComputeCapability
    nv.nvmlDeviceGetName = lambda h: alive(h).name
    nv.nvmlDeviceGetUUID = lambda h: alive(h).uuid
    nv.nvmlDeviceGetPciInfo_v3 = lambda h: types.SimpleNamespace(busId=alive(h).bus_id.encode())
    nv.nvmlDeviceGetPciInfo = nv.nvmlDeviceGetPciInfo_v3
    nv.nvmlDeviceGetMigMode = nvmlDeviceGetMigMode
    nv.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(alive(h).migs) if h.mig else 0
    nv.nvmlDeviceGetMigDeviceHandleByIndex = nvmlDeviceGetMigDeviceHandleByIndex
    nv.nvmlDeviceGetComputeRunningProcesses = nvmlDeviceGetComputeRunningProcesses
    nv.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    nv.nvmlSystemGetProcessName = nvmlSystemGetProcessName
    nv.nvmlDeviceGetNvLinkState = nvmlDeviceGetNvLinkState
    nv.nvmlSystemGetDriverVersion = lambda: driver
    nv.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda
    return nv
