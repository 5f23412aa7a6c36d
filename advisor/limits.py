"""The longest sequence and the largest micro batch that fit one configuration on one GPU.

Memory never shrinks when a micro batch carries more tokens (a tested property of the memory model), so
"fits" is monotonic in the sequence length and in the micro batch, and the largest value that fits is
found exactly by doubling until it no longer fits, then bisecting: about 2 x log2(answer) estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hardware import Hardware
from .memory import TrainConfig
from .memory.estimate import peaks
from .models.arch import ModelArch

# Searches stop here: far beyond any model's context and any batch a GPU holds, so hitting it means the
# configuration is bounded by something else (the model's max positions, the effective batch).
SEQ_LEN_CEILING = 1 << 22
MICRO_BATCH_CEILING = 1 << 16


@dataclass(frozen=True)
class Limit:
    """The largest value of one field that fits, with what it and the next value up need."""

    field: str  # "seq_len" or "micro_batch"
    value: int | None  # None: not even 1 fits
    need_bytes: int | None  # device peak at `value`
    next_need_bytes: int | None  # device peak at value + 1 (or at 1 when nothing fits); None at the ceiling
    capped: bool  # the search stopped at its ceiling: everything up to it fits
    power_of_two: int | None = None  # the largest power of two that fits (what people usually set)
    power_of_two_need_bytes: int | None = None


def largest_fitting(arch: ModelArch, cfg: TrainConfig, hardware: Hardware, field: str,
                    capacity_bytes: int | None = None, calibration=None) -> Limit:
    """The largest ``field`` (seq_len or micro_batch) whose device peak is at most ``capacity_bytes``
    (default: the GPU's usable memory), the other fields as in ``cfg``; ``calibration`` as in `estimate`."""
    if field not in ("seq_len", "micro_batch"):
        raise ValueError(f"no limit search for {field!r}")
    capacity = hardware.usable_bytes if capacity_bytes is None else capacity_bytes
    ceiling = SEQ_LEN_CEILING if field == "seq_len" else MICRO_BATCH_CEILING
    needs: dict[int, int] = {}

    def need(value: int) -> int:
        if value not in needs:
            needs[value] = peaks(arch, cfg.model_copy(update={field: value}), hardware, calibration).peak_device_bytes
        return needs[value]

    if need(1) > capacity:
        return Limit(field, None, None, needs[1], False)
    low, high = 1, 2  # low fits; find a high that does not
    while high <= ceiling and need(high) <= capacity:
        low, high = high, high * 2
    power = low  # the doubling visits powers of two only: the last one that fits
    if high > ceiling:
        return Limit(field, low, needs[low], None, True, power, needs[power])
    while high - low > 1:  # invariant: low fits, high does not
        middle = (low + high) // 2
        if need(middle) <= capacity:
            low = middle
        else:
            high = middle
    return Limit(field, low, needs[low], need(low + 1), False, power, needs[power])


def fit_limits(arch: ModelArch, cfg: TrainConfig, hardware: Hardware, calibration=None) -> tuple[Limit, Limit]:
    """(longest sequence at cfg's micro batch, largest micro batch at cfg's sequence length)."""
    return (largest_fitting(arch, cfg, hardware, "seq_len", calibration=calibration),
            largest_fitting(arch, cfg, hardware, "micro_batch", calibration=calibration))
