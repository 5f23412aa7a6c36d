"""The GPUs a plan is for.  (NVML detection and the GPU catalog come with the GPU issue.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Hardware(BaseModel):
    """The GPUs of one job: how many, and one GPU's capacity."""

    model_config = ConfigDict(frozen=True)

    name: str = Field("custom", description="GPU name, e.g. 'NVIDIA GeForce RTX 4090'.")
    memory_bytes: int = Field(gt=0, description="Memory of one GPU that CUDA can use, in bytes.")
    count: int = Field(1, gt=0, description="GPUs in the job.")
    compute_capability: tuple[int, int] | None = Field(None, description="(major, minor), e.g. (8, 9).")
