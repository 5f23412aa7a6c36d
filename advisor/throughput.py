"""Tokens per second of a training job: FLOPs per token over the GPUs' dense 16-bit TFLOP/s at a stated
utilisation, plus the optimizer step, offload and communication as bandwidth terms.

Sources and ranges: ../shared/reference/throughput.md (published MFU: A100 LoRA 31-43 % at >= 2k tokens per
micro batch, 4-34 % at <= 1k; QLoRA 24-41 %; checkpointing costs one more forward).  It ranks candidates;
its absolute numbers are within a factor ~1.5 of real runs, not better.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory.config import TrainConfig
from .memory.estimate import Peaks
from .memory.result import MemoryEstimate
from .models.arch import ModelArch
from .models.params import count_params

# Model FLOPs utilisation at >= FULL_UTILISATION_TOKENS tokens per micro batch (HF + PEFT, SDPA/flash).
BASE_MFU = {"full": 0.40, "lora": 0.38, "lora8bit": 0.22, "qlora": 0.30}
FULL_UTILISATION_TOKENS = 2048
NOMINAL_TFLOPS = 100.0  # when no GPU is known: rankings stay meaningful, absolute tokens/s do not
NOMINAL_BANDWIDTH_GBS = 1000.0
PCIE_GBS = 25.0  # host <-> device, PCIe 4.0 x16 in practice
NVLINK_GBS = 300.0
GB = 1e9


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    step_s: float
    mfu: float
    flops_per_token: float


def flops_per_token(arch: ModelArch, cfg: TrainConfig) -> float:
    """6N (full) or 4N (adapters: no weight grads for the base) + 12·L·d·s attention, + the recomputed
    forward (2N + 4·L·d·s) under checkpointing.  N excludes the input embedding."""
    counts = count_params(arch)
    n = counts.total - counts.embedding + (counts.embedding if arch.tie_word_embeddings else 0)
    if arch.moe is not None:  # only k of E experts run per token
        expert_share = arch.moe.experts_per_token / arch.moe.num_experts
        n -= counts.mlp * (1 - expert_share)
    attention = 12 * arch.num_layers * arch.q_dim * cfg.seq_len
    flops = (6 if cfg.method == "full" else 4) * n + attention
    if cfg.grad_ckpt:
        flops += 2 * n + attention / 3
    return flops


def throughput(arch: ModelArch, cfg: TrainConfig, est: MemoryEstimate | Peaks, effective_batch: int,
               tflops: float | None, bandwidth_gbs: float | None, nvlink: bool) -> Throughput:
    gpus = cfg.gpus
    micro_steps = max(1, -(-effective_batch // (cfg.micro_batch * gpus)))
    tokens_per_step = cfg.seq_len * cfg.micro_batch * gpus * micro_steps
    mfu = BASE_MFU[cfg.method] * min(1.0, cfg.tokens / FULL_UTILISATION_TOKENS) ** 0.5
    fpt = flops_per_token(arch, cfg)
    peak = (tflops or NOMINAL_TFLOPS) * 1e12
    compute_s = tokens_per_step * fpt / (mfu * peak * gpus)
    # the optimizer step reads and writes params, grads and states once: bandwidth bound
    grad_bytes = est.trainable_params * (2 if cfg.method == "full" and not cfg.master_weights else 4)
    state_bytes = {"adamw": 2 * grad_bytes, "sgd": grad_bytes, "adafactor": grad_bytes // 8}.get(
        cfg.optimizer, 2 * est.trainable_params)
    touched = 2 * (grad_bytes + state_bytes + grad_bytes) / gpus
    step_s = touched / ((bandwidth_gbs or NOMINAL_BANDWIDTH_GBS) * GB)
    if cfg.offload != "none":  # states (and grads) cross PCIe every step
        step_s += 2 * est.host_ram_bytes / 1.5 / gpus / (PCIE_GBS * GB)
    link = (NVLINK_GBS if nvlink else PCIE_GBS) * GB
    comm_s = 0.0
    if cfg.offload == "params":  # every GPU fetches each layer's 16-bit weights from host RAM, forward and backward
        comm_s += micro_steps * 2 * est.total_params * 2 / (PCIE_GBS * GB)
    if gpus > 1:
        grads = est.trainable_params * (2 if cfg.method == "full" else 4)
        comm_s = 2 * grads / link  # all-reduce / reduce-scatter of gradients
        if cfg.zero == 3 or cfg.fsdp:  # params gathered for forward and backward, every micro step
            comm_s += micro_steps * 2 * est.total_params * 2 / gpus * (gpus - 1) / link
    total = compute_s + step_s + comm_s
    return Throughput(tokens_per_step / total, total, mfu, fpt)
