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

# cuBLAS keeps one workspace per (handle, stream): 8.125 MiB before Hopper, 32 MiB on Hopper (sm_90+);
# a training step uses two streams (the forward thread and autograd's backward thread).
CUBLAS_WORKSPACE_BYTES = int(8.125 * MiB)
CUBLAS_WORKSPACE_HOPPER_BYTES = 32 * MiB
CUBLAS_WORKSPACES_PER_STEP = 2

# reserved / allocated with fixed shapes and the default allocator: published triples give 1.001-1.03
# (5,959 / 5,964 MB; 37.36 / 37.43 GiB; 75.31 / 77.14 GiB at OOM); 5% covers the 2-10% range reported for
# steady training.  Variable sequence lengths need far more (30-100%).
FRAGMENTATION = 0.05

# CUDA context with lazy module loading: ~250-450 MiB at first use, growing as kernels load; measured
# non-PyTorch memory of a training process is 0.8-1 GiB.  Multi-GPU jobs add NCCL (0.5-1.6 GB reported).
CUDA_CONTEXT_BYTES = 768 * MiB
NCCL_BYTES = 1024 * MiB


@dataclass(frozen=True)
class Overheads:
    workspace: int
    fragmentation: int
    context: int
    outside_torch: int  # NCCL, paged optimizer states


def overheads(tensor_peak: int, gpus: int, compute_capability: tuple[int, int] | None,
              paged_bytes: int = 0) -> Overheads:
    hopper = compute_capability is not None and compute_capability >= (9, 0)
    workspace = CUBLAS_WORKSPACES_PER_STEP * (CUBLAS_WORKSPACE_HOPPER_BYTES if hopper else CUBLAS_WORKSPACE_BYTES)
    fragmentation = int((tensor_peak + workspace) * FRAGMENTATION)
    outside = paged_bytes + (NCCL_BYTES if gpus > 1 else 0)
    return Overheads(workspace, fragmentation, CUDA_CONTEXT_BYTES, outside)
