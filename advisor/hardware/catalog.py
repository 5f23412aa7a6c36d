"""The GPU catalog (gpus.json, datasheet facts) and resolving ``--gpu``."""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, Field

from ..errors import AdvisorError
from ..units import GiB


class UnknownGpuError(AdvisorError):
    """--gpu names no catalog GPU."""


class GpuSpec(BaseModel):
    """One catalog GPU (datasheet facts)."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    memory_gb: float = Field(gt=0, description="Marketed memory; NVIDIA's GB here are GiB as CUDA reports them.")
    compute_capability: tuple[int, int]
    bf16: bool
    tflops_bf16: float | None = Field(None, description="Dense BF16 tensor TFLOP/s.")
    tflops_fp16: float | None = Field(None, description="Dense FP16 tensor TFLOP/s (FP32 accumulate).")
    tflops_fp32: float | None = Field(None, description="Dense FP32 TFLOP/s without tensor cores (PyTorch's fp32 matmul: TF32 is off by default).")
    bandwidth_gbs: float | None = Field(None, description="Memory bandwidth, GB/s.")
    nvlink: bool = False
    nvlink_gbs: float | None = Field(None, description="NVLink bandwidth per direction per GPU, GB/s (None without NVLink).")
    host_link_gbs: float | None = Field(None, description="Host <-> device link per direction in practice, GB/s (PCIe generation and width).")
    source: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GiB)


def _key(text: str) -> str:
    text = text.lower()
    text = re.sub(r"\b(nvidia|geforce|tesla)\b", "", text)
    return re.sub(r"[\s_\-]", "", text)


@lru_cache(maxsize=1)
def gpu_catalog() -> list[GpuSpec]:
    data = json.loads(resources.files("advisor.hardware").joinpath("gpus.json").read_text(encoding="utf-8"))
    return [GpuSpec(**entry) for entry in data["gpus"]]


@lru_cache(maxsize=1)
def _index() -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for spec in gpu_catalog():
        for name in [spec.name, *spec.aliases]:
            index.setdefault(_key(name), spec)
            # "rtx 4090" also answers to "4090", and vice versa
            index.setdefault(_key(name).removeprefix("rtx"), spec)
    return index


def find_gpu(name: str) -> GpuSpec | None:
    """The catalog entry for a name as NVML or a user writes it, or None."""
    return _index().get(_key(name)) or _index().get(_key(name).removeprefix("rtx"))


def nearest_gpus(name: str, count: int = 3) -> list[str]:
    names = {_key(spec.name): spec.name for spec in gpu_catalog()}
    best = sorted(names, key=lambda k: difflib.SequenceMatcher(None, _key(name), k).ratio(), reverse=True)
    return [names[k] for k in best[:count]]


MAX_GPUS = 1024  # TrainConfig's bound (core.MAX_GPUS): a named count beyond it is refused where it is read
_COUNT = re.compile(r"^\s*(\d+)\s*[x×*]\s*(.+?)\s*$", re.IGNORECASE)


def resolve_gpu(text: str) -> tuple[GpuSpec, int]:
    """'4090', 'rtx4090', 'A100-80GB', 'h100', '4xA100-80GB' -> (spec, count)."""
    count, name = 1, text.strip()
    if len(name) > 200:
        raise UnknownGpuError(f"{name[:37]!r}...: not a GPU name", "name a catalog GPU such as 4090 or 4xA100-80GB",
                              field="gpu", value=text)
    match = _COUNT.match(name)
    if match:
        digits, name = match.group(1), match.group(2)
        count = int(digits) if len(digits) <= 12 else MAX_GPUS + 1
        if count < 1:
            raise UnknownGpuError(f"{text!r}: the GPU count must be at least 1", "write it like 4xA100-80GB",
                                  field="gpu", value=text)
        if count > MAX_GPUS:
            raise UnknownGpuError(f"{digits if len(digits) <= 12 else digits[:9] + '...'} GPUs: a job has 1 to {MAX_GPUS}",
                                  f"give a GPU count from 1 to {MAX_GPUS}", field="gpu", value=text)
    spec = find_gpu(name)
    if spec is None:
        raise UnknownGpuError(f"unknown GPU {name!r}",
                              "nearest catalog GPUs: " + ", ".join(nearest_gpus(name)) + " (or a memory size such as 24GiB)",
                              field="gpu", value=text)
    return spec, count
