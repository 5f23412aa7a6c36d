"""What detection knows about a GPU.  Sizes are bytes; a field is None when NVML could not tell."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# defer_build: a model's validator and serializer are built when it is first used, not at import; the
# --json plan path imports this module (through the report models) but uses none of these
# (each costs 1-4 ms to build at import).


class ProcessInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    pid: int
    name: str | None = Field(None, description="Process name, when readable (other users' may not be).")
    used_bytes: int | None = Field(None, description="GPU memory it holds (None where the driver hides it).")


class MigInstance(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int
    uuid: str | None = None
    total_bytes: int | None = None
    used_bytes: int | None = None


class GpuInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int = Field(description="NVML index (may differ from the CUDA index; see cuda_visible).")
    uuid: str | None = None
    name: str
    total_bytes: int | None = None
    free_bytes: int | None = None
    used_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    pci_bus_id: str | None = None
    mig_enabled: bool | None = Field(None, description="None: the GPU has no MIG support.")
    mig_instances: list[MigInstance] = Field(default_factory=list)
    processes: list[ProcessInfo] = Field(default_factory=list)
    nvlink_active: bool | None = Field(None, description="None: NVLink not supported.")

    @property
    def supports_bf16(self) -> bool | None:
        return None if self.compute_capability is None else self.compute_capability >= (8, 0)

    @property
    def supports_flash_attention_2(self) -> bool | None:
        """FlashAttention-2 needs Ampere or newer (sm_80+)."""
        return None if self.compute_capability is None else self.compute_capability >= (8, 0)


class DriverInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    driver_version: str | None = None
    cuda_driver_version: str | None = None
