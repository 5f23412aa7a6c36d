"""The GPUs a plan is for: detected through NVML, named from the catalog, or described by a size."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Hardware(BaseModel):
    """The GPUs of one job: how many, and one GPU's capacity."""

    model_config = ConfigDict(frozen=True)

    name: str = Field("custom", description="GPU name, e.g. 'NVIDIA GeForce RTX 4090'.")
    memory_bytes: int = Field(gt=0, description="Memory of one GPU that CUDA can use, in bytes.")
    count: int = Field(1, gt=0, description="GPUs in the job.")
    compute_capability: tuple[int, int] | None = Field(None, description="(major, minor), e.g. (8, 9).")
    in_use_bytes: int = Field(0, ge=0, description="Held by other processes now (detected GPUs only).")

    @property
    def usable_bytes(self) -> int:
        return max(self.memory_bytes - self.in_use_bytes, 0)


def host_ram_bytes() -> int | None:
    """Physical RAM of this machine (what CPU offload can use), or None where the OS does not say."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def hardware_for(gpu: str | None = None, vram: str | None = None, gpus: int | None = None,
                 detection=None) -> "Hardware | None":
    """What to plan for.  Flags override detection: ``--gpu NAME`` (with an optional count, 4xA100-80GB),
    ``--vram SIZE`` for a custom card (or to override a catalog card's memory), else the GPUs CUDA will
    see on this machine.  None when nothing is known (no flags, no GPU)."""
    from ..errors import UsageError
    from ..units import parse_size
    from .catalog import resolve_gpu

    if gpu:
        spec, count = resolve_gpu(gpu)
        if gpus is not None and gpus > 1 and count > 1 and gpus != count:
            raise UsageError(f"{gpus} GPUs contradicts {gpu!r}", "give the GPU count once", field="gpus", value=gpus)
        memory = parse_size(vram) if vram else spec.memory_bytes
        return Hardware(name=spec.name, memory_bytes=memory, count=max(count, gpus or 1),
                        compute_capability=spec.compute_capability)
    if vram:
        return Hardware(memory_bytes=parse_size(vram), count=gpus or 1)
    if detection is None or not detection.gpus:
        return None
    visible = detection.gpus
    if detection.cuda_visible is not None:
        by_index = {g.index: g for g in detection.gpus}
        visible = [by_index[i] for i in detection.cuda_visible]
    if not visible:
        return None
    if gpus is not None and gpus > len(visible):
        raise UsageError(f"{gpus} GPUs: this machine has {len(visible)} visible GPU(s)",
                         "ask for fewer GPUs, or plan for another box (4xA100-80GB)", field="gpus", value=gpus)
    first = visible[0]
    if first.total_bytes is None:  # NVML gave no (or a 0-byte) memory size: planning on it would be a guess
        raise UsageError(f"the detected GPU {first.index} ({first.name}) reports no memory size through NVML",
                         "name the GPU or give its memory size", field="gpu", value="")
    return Hardware(name=first.name, memory_bytes=first.total_bytes, count=gpus or len(visible),
                    compute_capability=first.compute_capability, in_use_bytes=first.used_bytes or 0)
