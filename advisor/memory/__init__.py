"""The memory model: pure Python, no torch."""

from .config import TrainConfig
from .estimate import Peaks, estimate, peaks
from .result import Component, MemoryEstimate, PhasePeaks

__all__ = ["Component", "MemoryEstimate", "Peaks", "PhasePeaks", "TrainConfig", "estimate", "peaks"]
