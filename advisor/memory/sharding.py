"""Data parallelism on several GPUs: what each GPU holds of the model states, and what goes to host RAM.

ZeRO (DeepSpeed) and FSDP split parameters, gradients and optimizer states across N GPUs; activations are
per GPU and do not shrink.  LoRA-aware: frozen base weights have no gradients or optimizer states, so only
ZeRO-3/FSDP (which shard parameters) shrink them.  These terms follow the ZeRO paper and the frameworks'
defaults; the single-process oracle cannot check them, a multi-GPU verification run can.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.arch import ModelArch
from .config import TrainConfig
from .fsdp import FsdpTerms, fsdp_terms
from .states import DTYPE_BYTES, OptimizerBytes, ParamBytes

# DeepSpeed keeps host-side buffers ~1.5x the offloaded bytes (its own estimator's factor).
HOST_BUFFER_FACTOR = 1.5


@dataclass(frozen=True)
class PerGpuStates:
    params: int  # resident parameters (sharded share, or everything)
    gathered: int  # parameters gathered whole while a layer runs (ZeRO-3 / FSDP)
    grads: int
    grad_buckets: int  # communication buffers holding gradient copies
    states: int
    step_temporaries: int
    host_ram: int  # for the whole job (all GPUs' processes on the node)
    formula: str
    fsdp: FsdpTerms | None = None  # FSDP2 units and buffers: estimate walks the step with them (memory/fsdp.py)


def per_gpu_states(arch: ModelArch, cfg: TrainConfig, pb: ParamBytes, opt: OptimizerBytes) -> PerGpuStates:
    n = cfg.gpus
    params, grads = pb.total, pb.trainable
    states, temps = opt.states, opt.step_temporaries
    gathered = buckets = host = 0
    shard_params = cfg.zero == 3 or cfg.fsdp
    shard_grads = cfg.zero >= 2 or cfg.fsdp
    shard_states = cfg.zero >= 1 or cfg.fsdp
    wbytes = DTYPE_BYTES[cfg.precision]
    if cfg.sharding == "ddp":
        # DDP's 25 MiB buckets hold a second copy of the trainable grads (gradient_as_bucket_view=False).
        buckets = grads
        formula = "DDP: full replica per GPU, + a bucket copy of the trainable grads"
    elif cfg.sharding == "single":
        formula = "one GPU: everything resident"
    else:
        formula = f"{cfg.sharding} over {n} GPUs: "
        if shard_params:
            # the largest layer is gathered whole, plus the next one prefetched; and the embedding/lm_head
            embed = arch.vocab_size * arch.hidden_size * wbytes * (1 if arch.tie_word_embeddings else 2)
            gathered = 2 * pb.largest_layer_params * wbytes + embed
            params = params // n
            formula += "params/N + 2 gathered layers + embeddings, "
        if shard_grads:
            # reduce-scatter buckets (HF 'auto' reduce_bucket_size = hidden^2 elements) before sharding
            buckets = min(grads - grads // n, arch.hidden_size**2 * pb.trainable_dtype_bytes)
            grads = grads // n
            formula += "grads/N + a reduce bucket, "
        if shard_states:
            states, temps = states // n, temps // n
            formula += "optimizer states/N"
    fsdp = None
    if cfg.fsdp and cfg.offload == "none" and n > 1:
        # FSDP2 shards every parameter on dim 0, padded to a multiple of N, one allocation per param and rank
        # (torch _fsdp_param.py FSDPParam._init_sharded_param); grads are sharded per unit into one flat
        # reduce-scatter output (_fsdp_collectives.py foreach_reduce); optimizer states are per param, the
        # size of the rank's unpadded local rows (rank 0: the full ceil(dim0 / N) rows).  What is gathered and
        # buffered during forward and backward is not a constant on top: estimate walks it (fsdp_phases).
        fsdp = fsdp_terms(arch, cfg)
        params, grads = fsdp.params, fsdp.grads
        if cfg.optimizer in ("adamw", "sgd") and pb.trainable:  # states and temporaries: per param, like it
            states = opt.states // pb.trainable * fsdp.trainable_shard
            temps = opt.step_temporaries // pb.trainable * fsdp.trainable_shard
        # accelerate's layout (fsdp.py): the root and the [norm, lm_head] tail are never resharded after forward
        gathered = fsdp.root.unsharded + fsdp.tail.unsharded + fsdp.layer.gather + fsdp.layer.unsharded
        buckets = fsdp.layer.reduce_in
        formula = (f"fsdp over {n} GPUs: params, grads and optimizer states per rank (dim 0 padded to a multiple of "
                   f"{n}); root and lm_head tail unsharded + one layer gathered (flat buffer + params); "
                   f"reduce-scatter buffers")
    if cfg.offload in ("optimizer", "params"):
        # states (and the fp32 grads the CPU optimizer steps on) live in host RAM; no GPU step temporaries
        host += int(HOST_BUFFER_FACTOR * (opt.states + 4 * pb.trainable_params))
        states = temps = 0
        formula += "; optimizer states offloaded to CPU"
    if cfg.offload == "params":
        host += int(HOST_BUFFER_FACTOR * pb.total)
        params = 0
        formula += "; parameters offloaded to CPU (gathered per layer)"
    return PerGpuStates(params, gathered, grads, buckets, states, temps, host, formula, fsdp)
