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

import contextlib
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
    peak_ops: dict[str, str] = field(default_factory=dict)  # op running at each phase's peak
    # the traced allocations played through PyTorch's caching allocator (advisor/memory/allocator.py) with
    # the cuBLAS workspaces added; None unless run_dry was given workspace_bytes
    replayed_peak_allocated: int | None = None
    replayed_reserved: int | None = None
    replayed_reserved_by_step: list[int] = field(default_factory=list)  # each step's peak reserved, in order

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_peaks.values())


class _StorageCounter:
    """Counts live storages by identity.  Python keeps one object per storage, so a weakref tells us
    when autograd, the optimizer or the user code let go of it."""

    def __init__(self, log: list | None = None) -> None:
        self.live = 0
        self.peak = 0
        self.current_op = ""
        self.peak_op = ""  # the op during which the peak was reached (for diagnosing a mismatch)
        self._seen: dict[int, weakref.ref] = {}
        # every allocation (key, bytes) and free (key, None) in order, for the allocator replay
        self.log = log

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
        if self.log is not None and nbytes:
            self.log.append((key, storage.nbytes()))
        self.live += nbytes
        if self.live > self.peak:
            self.peak, self.peak_op = self.live, self.current_op
        self._seen[key] = weakref.ref(storage, lambda _r, k=key, n=nbytes: self._drop(k, n))

    def _drop(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.pop(key, None)
        if self.log is not None and nbytes:
            self.log.append((key, None))


@contextlib.contextmanager
def _masks_as_on_gpu():
    """transformers treats fake tensors as graph tracing, so it cannot read the position ids or the cache
    offset; it then assumes a packed batch and builds a dense causal mask, which also turns off SDPA's
    native GQA (k/v get repeated).  A real step on our synthetic batch (one unpacked sequence per row,
    no KV cache) has no such mask.  Tell the mask code what it would have read."""
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    saved = masking_utils._ignore_causal_mask_sdpa, masking_utils.find_packed_sequence_indices
    original_ignore = saved[0]

    def at_offset_zero(padding_mask, q_length, kv_length, q_offset, kv_offset, *args, **kwargs):
        return original_ignore(padding_mask, q_length, kv_length, 0, 0, *args, **kwargs)

    masking_utils._ignore_causal_mask_sdpa = at_offset_zero
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa, masking_utils.find_packed_sequence_indices = saved


@contextlib.contextmanager
def _autocast_asked_as_on_gpu():
    """``torch.is_autocast_enabled()`` without a device asks about CUDA, so on the CPU it reads False under the
    CPU autocast this trace runs in.  PEFT's bitsandbytes and AWQ LoRA layers branch on it
    (peft/tuners/lora/bnb.py: ``requires_conversion = not torch.is_autocast_enabled()``): on a GPU under
    autocast they skip the cast of the input to the fp32 adapters.  Without this the trace took the CPU's
    branch, an fp32 copy and a 16-bit copy per adapted module, which a real step does not make (an H200 read
    Llama-3.2-3B QLoRA without checkpointing 9 % below the oracle; results/gpu-h200-2026-12-04c).  Answer
    for the device this trace stands for."""
    import torch

    original = torch.is_autocast_enabled

    def on_the_gpu(*args, **kwargs):
        return original("cpu") if not args and not kwargs else original(*args, **kwargs)

    torch.is_autocast_enabled = on_the_gpu
    try:
        yield
    finally:
        torch.is_autocast_enabled = original


@contextlib.contextmanager
def _dropout_as_on_gpu():
    """Dropout in training keeps what it needs for its backward, and that differs by device: on a GPU ATen's
    ``dropout`` takes the fused ``native_dropout``, which saves a bool mask (one byte per element); on the CPU
    (``is_fused_kernel_acceptable`` is false) it multiplies by a noise tensor in the input's dtype and saves
    that (four bytes per element of an fp32 input).  PEFT's LoRA dropout (lora_dropout > 0) is one per adapted
    module, so the CPU's branch would trace several times the mask.  Take the GPU's kernel."""
    import torch
    import torch.nn.functional as F

    original = F.dropout

    def as_on_the_gpu(input, p=0.5, training=True, inplace=False):
        if training and not inplace and 0.0 < p < 1.0 and input.numel():
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    F.dropout = as_on_the_gpu
    try:
        yield
    finally:
        F.dropout = original


@contextlib.contextmanager
def _value_checks_off():
    """transformers checks values where fake tensors have none (Gemma 3: that the image tokens number the image
    features, ``torch_compilable_check`` on a sum); its own switch turns those checks off.  The batch is built so
    that they hold (image_batch)."""
    import os

    saved = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = saved


def _cpu_attention(arch: ModelArch, cfg: TrainConfig) -> str:
    """FlashAttention-2 does not run on a CPU; SDPA's CPU flash kernel keeps the same tensors (q, k, v,
    output, log-sum-exp), so it stands in for it.  transformers refuses SDPA for Gemma 2 (it cannot
    soft-cap), so there the model is built for eager and switched to SDPA after building."""
    from ..memory.targets import effective_attention

    kernel = effective_attention(arch, cfg)
    return "eager" if kernel == "eager" else "sdpa"


TRACEABLE_OPTIMIZERS = ("adamw", "sgd")


def image_batch(arch: ModelArch, cfg: TrainConfig, input_ids):
    """A vision-language batch as the model's processor makes it (Gemma3Processor): the image tokens at the
    start of each sequence (``image_token_index``), token_type_ids 1 there, and fp32 pixel values, one
    (channels, size, size) image per image.  Text-only configs get the plain batch unchanged."""
    from ..memory.vision import image_inputs

    inputs = image_inputs(arch, cfg)
    if not inputs.images:
        return input_ids, {}
    import json

    import torch

    v = arch.vision
    image_token = json.loads(arch.hf_config_json or "{}").get("image_token_index", 262_144)
    input_ids = input_ids.clone()
    input_ids[:, :inputs.tokens] = image_token
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, :inputs.tokens] = 1
    pixel_values = torch.empty((cfg.micro_batch * inputs.images, v.num_channels, v.image_size, v.image_size),
                               dtype=torch.float32)
    return input_ids, {"pixel_values": pixel_values, "token_type_ids": token_type_ids}


MATMUL_OPS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")


def replay_allocator(log: list) -> tuple[int, int, list[int]]:
    """(peak allocated, peak reserved) of the last step when the traced allocations run through the caching
    allocator, and each step's peak reserved in order; ``log`` holds (storage key, bytes) allocations,
    (key, None) frees and ("step", None) marks."""
    from ..memory.allocator import CachingAllocator

    allocator, blocks, by_step, steps = CachingAllocator(), {}, [], 0
    for key, size in log:
        if key == "step":
            if steps:
                by_step.append(allocator.peak_reserved)
            steps += 1
            allocator.reset_peaks()  # the verify run's reset_peak_memory_stats at each step's start
        elif size is not None:
            blocks[key] = allocator.malloc(size)
        elif key in blocks:
            allocator.free(blocks.pop(key))
    by_step.append(allocator.peak_reserved)
    return allocator.peak_allocated, allocator.peak_reserved, by_step


def refuse_untraceable(cfg: TrainConfig) -> None:
    """What fake tensors cannot trace, refused before a child process starts (bad input: exit 2)."""
    from ..errors import UsageError

    if cfg.optimizer not in TRACEABLE_OPTIMIZERS:
        raise UsageError(f"the dry run cannot trace the {cfg.optimizer} optimizer: its step reads tensor values",
                         "fake tensors carry no values; trace with adamw or sgd (their states are exact in the estimate)",
                         field="optimizer", value=cfg.optimizer)
    if cfg.method == "lora8bit":
        raise UsageError("the dry run cannot trace an 8-bit (LLM.int8) base: bitsandbytes int8 layers need real tensors",
                         "trace qlora or lora instead", field="method", value="lora8bit")


def run_dry(arch: ModelArch, cfg: TrainConfig, steps: int = 2, workspace_bytes: int | None = None,
            seq_lens: list[int] | None = None) -> DryRunResult:
    """Trace ``steps`` training steps on fake CPU tensors; return the last step's phase peaks.
    ``workspace_bytes`` (one cuBLAS workspace: advisor/memory/overheads.py) also replays the allocations
    through the caching allocator, with a workspace allocated at the first matrix product of the forward
    and of the backward (two cuBLAS handles: the caller's thread and autograd's).  ``seq_lens``: one step per
    length instead (unpacked data of varying length; the replay then shows what the changing shapes leave
    in the allocator's cache)."""
    refuse_untraceable(cfg)
    import time

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from .build import autocast_dtype, build_on_meta, materialize, prepare_quantization, trainable_parameters
    from .step import make_optimizer, train_step

    started = time.perf_counter()
    log: list | None = [] if workspace_bytes is not None else None
    counter = _StorageCounter(log)
    workspaces: set[str] = set()

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counter.current_op = str(func)
            phase = current[0]
            if log is not None and phase in ("forward", "backward") and phase not in workspaces \
                    and counter.current_op.startswith(MATMUL_OPS):
                workspaces.add(phase)
                log.append((("cublas workspace", phase), workspace_bytes))
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                counter.add(t)
            return out

    kernel = _cpu_attention(arch, cfg)
    model = build_on_meta(arch, cfg, attn_implementation="eager" if arch.model_type == "gemma2" else kernel)
    if kernel == "sdpa" and arch.model_type == "gemma2":
        # Looked up at run time by every attention layer.  FlashAttention-2 soft-caps inside the kernel
        # without extra memory; the SDPA stand-in cannot, so it runs without the cap.
        model.config._attn_implementation = "sdpa"
        for module in model.modules():
            if hasattr(module, "attn_logit_softcapping"):
                module.attn_logit_softcapping = None
        model.config.attn_logit_softcapping = None
    prepare_quantization(cfg)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # bitsandbytes' quant maps are real tensors
    phase_peaks: dict[str, int] = {}
    peak_ops: dict[str, str] = {}
    current: list[str] = ["idle"]

    def on_phase(name: str) -> None:
        if current[0] in PHASES:
            phase_peaks[current[0]] = counter.peak
            peak_ops[current[0]] = counter.peak_op
        current[0] = name
        counter.peak = counter.live

    with fake_mode, _Track(), _masks_as_on_gpu(), _value_checks_off(), _autocast_asked_as_on_gpu(), \
            _dropout_as_on_gpu():
        materialize(model, lambda shape, dtype: torch.empty(shape, dtype=dtype), cfg)
        for tensor in list(model.parameters()) + list(model.buffers()):
            counter.add(tensor)
        weights = counter.live
        params = trainable_parameters(model)
        optimizer = make_optimizer(params, cfg)
        input_ids = extra = None
        for length in seq_lens or cfg.step_lengths(steps):
            if input_ids is None or input_ids.shape[1] != length:  # a new batch only when the shape changes
                input_ids, extra = image_batch(arch, cfg, torch.zeros((cfg.micro_batch, length), dtype=torch.long))
            if log is not None:
                log.append(("step", None))
            phase_peaks.clear()
            steady = counter.live
            train_step(model, optimizer, input_ids, input_ids, on_phase, autocast_dtype(cfg, arch), extra)
    replayed = replay_allocator(log) if log is not None else (None, None, [])
    return DryRunResult(
        replayed_peak_allocated=replayed[0],
        replayed_reserved=replayed[1],
        replayed_reserved_by_step=replayed[2],
        phase_peaks=dict(phase_peaks),
        weights_bytes=weights,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        steady_bytes=steady,
        peak_ops=peak_ops,
        seconds=time.perf_counter() - started,
    )
