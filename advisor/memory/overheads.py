"""What the GPU adds on top of live tensors.  Constants until real runs calibrate them.

Three readings of one run, from small to large (see the memory-model reference, section 6):
- allocated: live tensors, plus the cuBLAS workspaces that go through PyTorch's allocator;
- reserved: what the caching allocator holds, allocated plus fragmentation;
- device: what nvidia-smi shows for the process, reserved plus the CUDA context and memory allocated
  outside PyTorch (NCCL, paged optimizer states in unified memory).
Each constant below is a documented starting point; ``lora-advisor verify`` on a real GPU measures
them (the calibration issue stores what it measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..units import MiB
from .config import PREQUANTIZED

# cuBLAS keeps one workspace per (handle, stream): 8.125 MiB before Hopper, 32 MiB on Hopper (sm_90+);
# a training step uses two streams (the forward thread and autograd's backward thread).
CUBLAS_WORKSPACE_BYTES = int(8.125 * MiB)
CUBLAS_WORKSPACE_HOPPER_BYTES = 32 * MiB
CUBLAS_WORKSPACES_PER_STEP = 2

# reserved / allocated with fixed shapes and the default allocator: published triples give 1.001-1.03
# (5,959 / 5,964 MB; 37.36 / 37.43 GiB; 75.31 / 77.14 GiB at OOM); 5% covers the 2-10% range reported for
# steady training.  Variable sequence lengths need far more (30-100%).  Measured on an H200 (2026-12-04,
# Llama-3.2-1B): 1.144 (LoRA, ckpt, 512 tokens), 1.072 (LoRA, 2048, no ckpt), 1.045 (full FT, 512).  The
# allocator replay (allocator.py over the oracle's trace) reproduces those to 0.04 % and shows 5 % is low
# for small models with a large vocabulary (benchmarks/results/allocator-replay-2026-12-04.md): the loss
# term below takes over where it is larger.
FRAGMENTATION = 0.05

# CUDA context with lazy module loading: ~250-450 MiB at first use, growing as kernels load; measured
# non-PyTorch memory of a training process is 0.8-1 GiB.  Measured on an H200 (torch 2.11 + CUDA 13.0,
# driver 580; benchmarks/results/gpu-h200-2026-12-04): 619 MiB at the first tensor, 767 MiB once cuBLAS,
# SDPA and AdamW kernels are loaded, and 767 MiB (device minus reserved) in three training runs.
CUDA_CONTEXT_BYTES = 768 * MiB

# NCCL communicators hold device memory outside PyTorch's allocator (their buffers, and NCCL's kernels load with
# the first).  A stack that starts a process group pays for them on one GPU too: FSDP and DeepSpeed do.
# Measured on the H200 (benchmarks/gpu_context.py --distributed, results/gpu-h200-2026-12-04c): the first
# communicator (init_process_group with device_id) 556 MiB, a second (new_group + a collective) 390 MiB, at
# world size 1.  The exported jobs agree: FSDP2 through accelerate (one communicator) held 545 MiB more than the
# same job without it, DeepSpeed 926 MiB more: its engine runs its collectives on a clone of the world group
# (deepspeed/utils/groups.py _clone_world_group, "dist.get_global_rank() does not work on dist.group.WORLD";
# runtime/engine.py: self.data_parallel_group = groups._get_data_parallel_group()), a second communicator.
# Several GPUs add per-peer buffers: 0.5-1.6 GB reported for one communicator, 1 GiB expected.
NCCL_FIRST_COMMUNICATOR_BYTES = 556 * MiB
NCCL_MORE_COMMUNICATOR_BYTES = 390 * MiB
NCCL_BYTES = 1024 * MiB


def nccl_communicators(gpus: int, zero: int, fsdp: bool) -> int:
    """NCCL communicators a rank holds: DeepSpeed two (the world group and its clone), FSDP and DDP one."""
    if zero:
        return 2
    return 1 if fsdp or gpus > 1 else 0


def nccl_bytes(gpus: int, communicators: int) -> int:
    """What the communicators hold on one GPU, outside PyTorch's allocator."""
    if not communicators:
        return 0
    first = NCCL_BYTES if gpus > 1 else NCCL_FIRST_COMMUNICATOR_BYTES
    return first + (communicators - 1) * NCCL_MORE_COMMUNICATOR_BYTES


# The loss's vocabulary-sized blocks fragment the cache beyond the flat share (allocator replay,
# benchmarks/results/allocator-replay-2026-12-04.md): `logits.float()`, the log-softmax and its gradient are
# fp32 blocks of tokens x vocabulary x 4 B (L), allocated at different moments in segments of their own
# size; best fit splits them for smaller requests, so the next one needs a new segment.  While L is small
# next to the rest the cache holds about two of them beyond the live set; once L is large its segments serve
# the layers' activations too and about 0.6 L stays unused.  min(2 L, 0.6 L + 0.3 GiB) fits the replay of
# Qwen2.5-0.5B and Llama-3.2-1B LoRA / QLoRA (256-4096 tokens) and reads the held-out Llama-3.2-3B and
# Qwen2.5-7B LoRA / QLoRA rows within -4.4 % .. +3.5 % of reserved; the H200 run (Llama-3.2-1B, LoRA, ckpt,
# 512 tokens: reserved 1.144 x allocated) is one of the fitted rows.  Full fine-tuning fragments more at long
# sequences (below); that is in the range, not in the expected value.
LOSS_BLOCKS_SMALL = 2.0
LOSS_BLOCKS_LARGE = 0.6
LOSS_BLOCKS_OFFSET = 300 * MiB
# Full fine-tuning's high end: the optimizer creates its states lazily at the first step, after the backward,
# and best fit places them in the loss's cached segments; the second step then reserves the loss's blocks
# again (two fp32 blocks and the 16-bit logits, 2.5 L).  The replay shows it for Llama-3.2-1B with
# checkpointing at 2048-4096 tokens (fragmentation 25-44 %); it is not in the expected value, whose
# mechanism depends on how the layers' segments are reused (no checkpointing reads 2-13 %).
FULL_FT_LOSS_BLOCKS_HIGH = 2.5


def loss_fragmentation(loss_block: int) -> int:
    """Cached bytes the loss's fp32 vocabulary-sized blocks (``loss_block`` bytes each) leave unusable."""
    return int(min(LOSS_BLOCKS_SMALL * loss_block, LOSS_BLOCKS_LARGE * loss_block + LOSS_BLOCKS_OFFSET))


# ---- unpacked data (TrainConfig.lengths = "variable") ------------------------------------------------------
# Each batch is padded to its own longest sequence, so every length-dependent block (activations, the loss's
# fp32 vocabulary blocks) has a new size whenever a batch is longer than all before it.  Best fit cannot place
# a block in a smaller cached segment, so such a step takes a new set of segments and the old ones stay cached:
# about one step's transient bytes (its peak minus what lives between steps) per new longest batch.  Measured
# on an H200 (benchmarks/results/gpu-h200-2026-12-04b): Llama-3.2-1B LoRA 6.24 -> 9.18 GiB reserved at the
# one new longest batch of 12 steps (+2.94; this term: 3.08), Qwen2.5-0.5B +3.48 (3.57); 1B full fine-tuning
# grew at five of the twelve steps, +1.5 to +2.9 each (this term: 4.6), its gradients taking cached segments.
# The allocator frees cached segments that hold no live block when cudaMalloc fails, and retries
# (c10/cuda/CUDACachingAllocator.cpp malloc: release_available_cached_blocks, then release_cached_blocks):
# capped at this estimate's reserved bytes, all four unpacked runs on the H200 trained without an OOM
# (benchmarks/gpu_tight.py).  So the growth is what nvidia-smi reads on a card with room, not memory the job
# needs: reported beside the peak, not in it.
def unpacked_cache(tensor_peak: int, steady: int) -> int:
    """Bytes each new longest batch of unpacked data leaves cached on a card with room."""
    return max(0, tensor_peak - steady)


def unpacked_note(cache_bytes: int) -> str:
    return (f"unpacked data (lengths variable): the peak is at the longest batch (seq_len, the cutoff). On a card "
            f"with room nvidia-smi reads more: each batch longer than all before it leaves about "
            f"{cache_bytes / 2**30:.2f} GiB more cached, up to what the card has. The allocator frees that cache "
            "when memory runs short (an H200 capped at this estimate's reserved bytes trained unpacked runs without "
            "an OOM), so it does not change what fits")


# ---- DeepSpeed ZeRO-2's flat optimizer partitions --------------------------------------------------------
# With bf16/fp16 the ZeRO optimizer (stage_1_and_2.py) steps on flat fp32 partitions of F = 4 B x trainable / N,
# one tensor each: the master (single_partition_of_fp32_groups), the fp32 gradient partition step() makes, and
# the torch optimizer's exp_avg / exp_avg_sq and foreach temporaries over that one flat param, the states made at
# the first step.  A block of F fits none of the segments the first forward and backward left cached
# (activations, the loss's vocabulary blocks), so those stay reserved beside the step's new segments.  One more:
# after its start-up empty_cache(), the optimizer's __init__ calls initialize_optimizer_states, which makes a
# zeroed fp32 gradient partition and drops it (`single_grad_partition = torch.zeros(...)`, then
# `group.grad = None  #class init`): an F segment stays cached.  The 16-bit gradient partition (F / 2) takes half
# of it for the run; the other half holds the step's 16-bit flat copy, which is freed before the optimizer's
# peak.  So at that peak, reserved minus allocated = F / 2 + the first forward and backward's cache.
# Measured on the H200 (results/gpu-h200-2026-12-04c, allocation traces recorded on the card):
#  - Qwen2.5-0.5B full FT, 1024 tokens: 2.374 GiB free at the peak (F / 2 = 0.92, the rest 1.45); this term
#    2.44 (its forward-backward part, the backward's transient plus its fragmentation from the terms above: 1.52);
#  - Llama-3.2-1B full FT, 512 tokens: 4.546 free (F / 2 = 2.30, the rest 2.25); this term 4.27 (1.97).
# The allocator replay of both traces (DeepSpeed's empty_cache honoured) reads 13.580 and 34.189 GiB reserved
# against 13.486 and 32.232 measured.  ZeRO-1 with bf16 runs DeepSpeed's BF16_Optimizer instead (not this).
# Its spread: the two runs read 0.97 and 1.06 of this term; the range takes 0.75 to 1.25 of it.
ZERO_FIRST_STEP_CACHE_LOW, ZERO_FIRST_STEP_CACHE_HIGH = 0.75, 1.25


def zero_first_step_cache(backward: int, after_backward: int, flat_partition: int, loss_block: int) -> int:
    """Bytes reserved beyond allocated at DeepSpeed ZeRO-2's optimizer peak (see above): ``backward``, the
    phase's tensor peak; ``after_backward``, what stays allocated when it ends; ``flat_partition``, F; 0 when
    F fits the loss's cached segments."""
    if flat_partition <= loss_block:
        return 0
    transient = max(0, backward - after_backward)
    return flat_partition // 2 + transient + max(int(backward * FRAGMENTATION), loss_fragmentation(loss_block))


@dataclass(frozen=True)
class Overheads:
    workspace: int
    fragmentation: int
    context: int
    outside_torch: int  # NCCL, paged optimizer states


def cublas_workspace_bytes(compute_capability: tuple[int, int] | None) -> int:
    """One cuBLAS handle's workspace on a GPU of this compute capability (None: not Hopper)."""
    hopper = compute_capability is not None and tuple(compute_capability) >= (9, 0)
    return CUBLAS_WORKSPACE_HOPPER_BYTES if hopper else CUBLAS_WORKSPACE_BYTES


def overheads(tensor_peak: int, gpus: int, compute_capability: tuple[int, int] | None,
              paged_bytes: int = 0, loss_block: int = 0, communicators: int = 0) -> Overheads:
    """``loss_block``: one fp32 tokens x vocabulary block of the standard loss (0 for a chunked loss);
    ``communicators``: NCCL communicators per rank (nccl_communicators)."""
    workspace = CUBLAS_WORKSPACES_PER_STEP * cublas_workspace_bytes(compute_capability)
    fragmentation = max(int((tensor_peak + workspace) * FRAGMENTATION), loss_fragmentation(loss_block))
    outside = paged_bytes + nccl_bytes(gpus, communicators)
    return Overheads(workspace, fragmentation, CUDA_CONTEXT_BYTES, outside)


# ---- the honest range: how far the device peak can sit from the expected value --------------------------
# Each term that is not exact has a known spread; the range adds the low ends and the high ends (they are
# independent mechanisms, and a range that must contain the real number cannot assume they cancel).
#  - tensors: the oracle (a fake-tensor trace of the real step) matches the model within 0.5 % on configs it
#    never saw (1.3 % for MoE); kernels the oracle cannot trace (multi-GPU collectives, offload, bitsandbytes
#    8-bit states, LLM.int8 bases) are wider, from the published multi-GPU rows (3-12 % above the estimate)
#    and the FSDP CPU-offload row (31 % above), benchmarks/public_measurements.py.
#  - fragmentation: published reserved/allocated triples give 1.001-1.03 with fixed shapes; 2-10 % is
#    reported for steady training, so 1 % to 10 % around the expected 5 %.
#  - CUDA context and the kernels lazy loading brings in: ~250-450 MiB at first use, 0.8-1 GiB of
#    non-PyTorch memory measured in training processes: 384 MiB to 1.25 GiB around 768 MiB.
#  - NCCL with several GPUs: 0.5-1.6 GB reported around the expected 1 GiB for the first communicator.  On one
#    GPU the communicators were measured (above): their spread is the context's, -30 % / +60 % (another GPU,
#    driver or NCCL loads other kernels).
# A calibration point from a real run on this GPU replaces the context and allocator terms by what was
# measured, so their spread shrinks to what one run tells of the next.
TENSOR_SPREAD = 0.01
UNCHECKED_TENSOR_HIGH = 0.12
# DeepSpeed ZeRO-2 on one GPU has no collectives to trace but its own buffers; the exported job allocated within
# 0.4 % of the estimate in three H200 runs (LoRA and full FT, 0.5B and 1B; results/gpu-h200-2026-12-04c)
ONE_GPU_ZERO2_TENSOR_HIGH = 0.03
OFFLOADED_PARAMS_HIGH = 0.35
FRAGMENTATION_LOW, FRAGMENTATION_HIGH = 0.01, 0.10
CONTEXT_LOW, CONTEXT_HIGH = 384 * MiB, 1280 * MiB
NCCL_LOW, NCCL_HIGH = 512 * MiB, 1600 * 1000**2
NCCL_MEASURED_LOW, NCCL_MEASURED_HIGH = 0.7, 1.6
CALIBRATED_FRAGMENTATION, CALIBRATED_CONTEXT = 0.02, 64 * MiB


@dataclass(frozen=True)
class DeviceRange:
    low: int
    high: int
    why: str  # the terms that make the range, for the estimate's notes
    allocated_low: int = 0  # the same tensors' spread alone: the range of torch's peak allocated
    allocated_high: int = 0


def device_range(tensor_peak: int, workspace: int, gpus: int, paged_bytes: int, unchecked: str | None,
                 offloaded_params: bool, calibrated_context: int | None = None, loss_block: int = 0,
                 states_after_loss: bool = False, communicators: int = 0,
                 first_step_cache: int = 0, tensor_high: float | None = None) -> DeviceRange:
    """Low and high device peak around the expected one.  ``unchecked`` names the part of the config the
    oracle cannot trace (None when it traces all of it); ``calibrated_context``: the context a real run on
    this GPU measured (its allocator ratio is already in ``tensor_peak``); ``loss_block`` as in overheads():
    the loss's fragmentation is added to the high end's (the replay reads up to 5 % above the fitted term);
    ``states_after_loss``: full fine-tuning, whose large optimizer states can take the loss's cached
    segments (FULL_FT_LOSS_BLOCKS_HIGH)."""
    if tensor_high is None:
        tensor_high = (OFFLOADED_PARAMS_HIGH if offloaded_params else UNCHECKED_TENSOR_HIGH if unchecked
                       else TENSOR_SPREAD)
    low_tensors = int(tensor_peak * (1 - TENSOR_SPREAD)) + workspace
    high_tensors = int(tensor_peak * (1 + tensor_high)) + workspace
    if calibrated_context is not None:
        low = int(low_tensors * (1 + FRAGMENTATION - CALIBRATED_FRAGMENTATION)) + calibrated_context - CALIBRATED_CONTEXT
        high = int(high_tensors * (1 + FRAGMENTATION + CALIBRATED_FRAGMENTATION)) + calibrated_context + CALIBRATED_CONTEXT
    else:
        low = int(low_tensors * (1 + FRAGMENTATION_LOW)) + CONTEXT_LOW
        loss_high = loss_fragmentation(loss_block) + int(states_after_loss * FULL_FT_LOSS_BLOCKS_HIGH * loss_block)
        high = high_tensors + max(int(high_tensors * FRAGMENTATION_HIGH),
                                  loss_high + int(high_tensors * FRAGMENTATION)) + CONTEXT_HIGH
    if first_step_cache:  # DeepSpeed ZeRO-2's flat partitions beside the first step's cache (zero_first_step_cache)
        low = low + int(first_step_cache * ZERO_FIRST_STEP_CACHE_LOW)
        high = high + int(first_step_cache * ZERO_FIRST_STEP_CACHE_HIGH)
    more = (communicators - 1) * NCCL_MORE_COMMUNICATOR_BYTES if communicators else 0
    if gpus > 1:
        low, high = low + NCCL_LOW + more, high + NCCL_HIGH + int(more * NCCL_MEASURED_HIGH)
    elif communicators:
        nccl = nccl_bytes(gpus, communicators)
        low, high = low + int(nccl * NCCL_MEASURED_LOW), high + int(nccl * NCCL_MEASURED_HIGH)
    low, high = low + paged_bytes, high + paged_bytes
    why = (f"tensors -{TENSOR_SPREAD:.0%}/+{tensor_high:.0%}"
           + (f" ({unchecked}: not traced by the oracle)" if unchecked else " (oracle-checked)")
           + (", allocator and context as calibrated" if calibrated_context is not None else
              f", fragmentation {FRAGMENTATION_LOW:.0%}-{FRAGMENTATION_HIGH:.0%}, CUDA context "
              f"{CONTEXT_LOW / MiB:.0f}-{CONTEXT_HIGH / MiB:.0f} MiB")
           + (f", NCCL {communicators} communicator{'s' if communicators > 1 else ''}" if communicators else ""))
    return DeviceRange(low, high, why, low_tensors, high_tensors)


def measured_tensor_high(cfg) -> float | None:
    """The tensors' high spread where a real GPU measured it instead of an oracle (None: the default rule)."""
    if cfg.zero == 2 and cfg.gpus == 1 and cfg.offload == "none" and cfg.method != "qlora":
        return ONE_GPU_ZERO2_TENSOR_HIGH
    return None


def unchecked_part(cfg, arch=None) -> str | None:
    """What of a configuration the fake-tensor oracle does not trace (None: it traces all of it)."""
    if arch is not None and arch.derived_from:
        return f"{arch.model_type}'s layers in generic terms"
    if arch is not None and arch.dropout:
        return "dropout (" + ", ".join(arch.dropout) + ")"
    if arch is not None and arch.linear_attention is not None and cfg.adapters_under_autocast and not cfg.fsdp:
        return "autocast over the linear-attention layers (TrainConfig.lora_autocast)"
    if cfg.stack == "torchtune":
        # the oracle traces transformers' modeling code and its step; torchtune's recipes run their own modules
        return "torchtune's own model code"
    if cfg.offload != "none":
        return "CPU offload"
    if cfg.fsdp and cfg.method == "qlora":
        return "FSDP1 with a 4-bit base"
    if cfg.zero:
        return "DeepSpeed's buffers and collectives"
    if cfg.gpus > 1 and not cfg.fsdp:
        return "DDP's buckets and collectives"
    # FSDP2 (accelerate's wrap) is traced by the sharded oracle (advisor/verify/sharded.py)
    if cfg.method == "lora8bit":
        return "the LLM.int8 base"
    if cfg.method == "qlora" and cfg.quant_type in PREQUANTIZED:
        return f"the {cfg.quant_type.upper()} kernels"
    if cfg.optimizer in ("adamw_8bit", "paged_adamw_8bit", "adafactor"):
        return f"the {cfg.optimizer} step"
    return None
