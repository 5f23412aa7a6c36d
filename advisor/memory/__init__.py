"""The memory model: pure Python, no torch."""

from .config import TrainConfig
from .estimate import estimate
from .result import Component, MemoryEstimate, PhasePeaks

__all__ = ["Component", "MemoryEstimate", "PhasePeaks", "TrainConfig", "estimate"]
