"""The memory model's answer: components with their reasons, phase peaks, and the three peak levels."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Component(BaseModel):
    """One term of the memory breakdown, with the formula and inputs that produced it."""

    name: str = Field(description="Stable identifier, e.g. 'weights', 'activations', 'logits_loss'.")
    label: str = Field(description="Human name.")
    bytes: int = Field(description="Bytes per GPU at the phase where this term peaks.")
    formula: str = Field(description="How the number was computed.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The values the formula used.")


class PhasePeaks(BaseModel):
    """Peak live tensor bytes per GPU inside each phase of a training step."""

    forward: int
    backward: int
    optimizer: int


class MemoryEstimate(BaseModel):
    """Everything the memory model says about one configuration on one GPU of the job."""

    components: list[Component]
    phases: PhasePeaks
    peak_phase: str
    peak_allocated_bytes: int = Field(description="Live tensors at the peak (torch.cuda.max_memory_allocated).")
    peak_reserved_bytes: int = Field(description="What the caching allocator holds at the peak (max_memory_reserved).")
    peak_device_bytes: int = Field(description="What nvidia-smi shows for the process: reserved + CUDA context.")
    peak_device_range_bytes: tuple[int, int] = Field(
        (0, 0), description="Low and high device peak: the expected one widened by the known spread of the terms "
        "that are not exact (tensors the oracle cannot trace, allocator fragmentation, CUDA context, NCCL).")
    range_basis: str = Field("", description="The terms and spreads that make the range.")
    peak_allocated_range_bytes: tuple[int, int] = Field(
        (0, 0), description="Low and high peak allocated (torch.cuda.max_memory_allocated): the tensors' spread "
        "alone, without the allocator's and the context's.")
    host_ram_bytes: int = Field(description="CPU RAM for offloaded states/params (0 without offload).")
    total_params: int
    trainable_params: int
    tokens_per_micro_batch: int
    activation_bytes: int = Field(0, description="Saved activations (incl. checkpoint inputs) at the end of forward.")
    optimizer_state_bytes: int = Field(0, description="Optimizer states resident on one GPU.")
    notes: list[str] = Field(default_factory=list)
    calibration: dict | None = Field(None, description="The calibration point applied, if any.")
    unpacked_cache_bytes: int | None = Field(
        None, description="Unpacked data (lengths variable) only: what the caching allocator keeps cached, on a card "
        "with room, each time a batch is longer than every one before it (one step's transient bytes).  Not part "
        "of the peak: the allocator frees those segments and retries when memory runs short, so they change what "
        "nvidia-smi reads, not what fits.")
    capacity_bytes: int | None = Field(None, description="One GPU's usable memory, when known.")
    fits: bool | None = Field(None, description="peak_device_bytes <= capacity_bytes, when a capacity is known.")
    fit: str | None = Field(None, description="With the range: 'fits' (the high end is under the card), 'tight' "
                            "(the card lies inside the range) or 'does_not_fit'; null without a capacity.")
    headroom_bytes: int | None = Field(None, description="capacity_bytes - peak_device_bytes (negative: does not fit).")

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)
