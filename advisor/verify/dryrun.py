"""The oracle: one real training step on fake tensors, counting live tensor bytes per phase.

``FakeTensorMode`` runs every PyTorch op for its shapes and dtypes without allocating, so a 7B-shaped
step takes seconds on a CPU.  A ``TorchDispatchMode`` sees every op's outputs; each new storage is
counted (rounded up to 512 B like the CUDA caching allocator) until Python drops it.  The step is the
real one (``step.train_step`` on the model ``build`` makes), so this counts what autograd really saves.

Pitfalls avoided here (see the memory-model reference): CPU fake tensors, never ``meta`` (wrong SDPA
path) nor fake ``cuda`` on a CPU torch; PEFT applied on meta first; ``foreach=True`` optimizers; the step
run twice so optimizer states exist.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from ..memory.config import TrainConfig
from ..models.arch import ModelArch

ALLOC_ROUND = 512
PHASES = ("forward", "backward", "optimizer")


def _round(n: int) -> int:
    return (n + ALLOC_ROUND - 1) // ALLOC_ROUND * ALLOC_ROUND


@dataclass
class DryRunResult:
    """Tensor bytes measured on the fake step (the second of two, so optimizer state exists)."""

    phase_peaks: dict[str, int]
    weights_bytes: int  # parameters and buffers, after the model is built
    trainable_params: int
    total_params: int
    steady_bytes: int  # live between steps: weights + optimizer states
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_peaks.values())


class _StorageCounter:
    """Counts live storages by identity.  Python keeps one object per storage, so a weakref tells us
    when autograd, the optimizer or the user code let go of it."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def add(self, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        ref = self._seen.get(key)
        if ref is not None and ref() is storage:
            return
        nbytes = _round(storage.nbytes())
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self._seen[key] = weakref.ref(storage, lambda _r, k=key, n=nbytes: self._drop(k, n))

    def _drop(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.pop(key, None)


def run_dry(arch: ModelArch, cfg: TrainConfig, steps: int = 2) -> DryRunResult:
    """Trace ``steps`` training steps on fake CPU tensors; return the last step's phase peaks."""
    import time

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from .build import build_on_meta, materialize, prepare_quantization, trainable_parameters
    from .step import make_optimizer, train_step

    started = time.perf_counter()
    counter = _StorageCounter()

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                counter.add(t)
            return out

    # SDPA picks its CPU flash kernel (no s x s matrix), matching the GPU's flash/memory-efficient kernels.
    model = build_on_meta(arch, cfg, attn_implementation="eager" if cfg.attn == "eager" else "sdpa")
    prepare_quantization(cfg)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # bitsandbytes' quant maps are real tensors
    phase_peaks: dict[str, int] = {}
    current: list[str] = ["idle"]

    def on_phase(name: str) -> None:
        if current[0] in PHASES:
            phase_peaks[current[0]] = counter.peak
        current[0] = name
        counter.peak = counter.live

    with fake_mode, _Track():
        materialize(model, lambda shape, dtype: torch.empty(shape, dtype=dtype), cfg)
        for tensor in list(model.parameters()) + list(model.buffers()):
            counter.add(tensor)
        weights = counter.live
        params = trainable_parameters(model)
        optimizer = make_optimizer(params, cfg)
        input_ids = torch.zeros((cfg.micro_batch, cfg.seq_len), dtype=torch.long)
        for _ in range(steps):
            phase_peaks.clear()
            steady = counter.live
            train_step(model, optimizer, input_ids, input_ids, on_phase)
    return DryRunResult(
        phase_peaks=dict(phase_peaks),
        weights_bytes=weights,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        steady_bytes=steady,
        seconds=time.perf_counter() - started,
    )
