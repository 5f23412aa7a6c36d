"""Data parallelism on several GPUs: what each GPU holds of the model states, and what goes to host RAM.

ZeRO (DeepSpeed) and FSDP split parameters, gradients and optimizer states across N GPUs; activations are
per GPU and do not shrink.  LoRA-aware: frozen base weights have no gradients or optimizer states, so only
ZeRO-3/FSDP (which shard parameters) shrink them.  These terms follow the ZeRO paper and the frameworks'
defaults; the single-process oracle cannot check them, a multi-GPU verification run can.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.arch import ModelArch
from .config import PREQUANTIZED, TrainConfig
from .fsdp import FsdpTerms, fsdp_terms
from .states import DTYPE_BYTES, OptimizerBytes, ParamBytes, rounded

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
    held_buffers: int = 0  # communication buffers allocated once and held through every phase (ZeRO-3's bucket)


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
            # the largest layer is gathered whole, plus the next one prefetched; and the embedding/lm_head.  A
            # GPTQ / AWQ layer's quantized weights are buffers, never gathered: only its other params are.  A
            # bitsandbytes 4-bit layer is counted at 16 bits, though FSDP1 and ZeRO-3 gather its 4-bit storage
            # (bnb_4bit_quant_storage): the published PEFT FSDP / ZeRO-3 QLoRA runs on 70B read from 0.6 % below
            # to 9 % above this estimate even so, and 7-23 % above it with the layers at 4 bits
            # (benchmarks/public_measurements.py rows 37-39), so something these stacks hold is not modelled;
            # this term stays at its upper bound until a run shows what
            embed = arch.vocab_size * arch.hidden_size * wbytes * (1 if arch.tie_word_embeddings else 2)
            layer = pb.largest_layer_params
            if cfg.method == "qlora" and cfg.quant_type in PREQUANTIZED:
                layer -= pb.layer_linear_params
            gathered = 2 * layer * wbytes + embed
            # what is not a Parameter (ParamBytes.not_parameters) stays whole on every GPU
            params = (params - pb.not_parameters) // n + pb.not_parameters
            formula += "params/N + 2 gathered layers + embeddings, "
            if pb.not_parameters:
                formula += f"+ {pb.not_parameters / 2**30:.2f} GiB of quantized tensors that are not parameters (whole), "
        if shard_grads:
            # reduce-scatter buckets before sharding (FSDP1's; DeepSpeed's own buffers are below)
            buckets = min(grads - grads // n, arch.hidden_size**2 * pb.trainable_dtype_bytes) if cfg.fsdp else 0
            grads = grads // n
            formula += "grads/N + a reduce bucket, " if cfg.fsdp else "grads/N, "
        if shard_states:
            states, temps = states // n, temps // n
            formula += "optimizer states/N"
    fsdp = None
    # QLoRA is exported as FSDP1 (flat parameters over 4-bit storage, PEFT's recipe), which neither fsdp.py nor
    # the sharded oracle models: it keeps the generic terms above.  One GPU walks the same units: on an H200 the
    # exported FSDP2 job on one GPU allocated what this walk gives (Llama-3.2-1B LoRA -0.05 %, full FT 0.00 %;
    # results/gpu-h200-2026-12-04c), where the generic terms read the LoRA run 6 % high
    if cfg.fsdp and cfg.offload == "none" and cfg.method != "qlora":
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
    if cfg.zero and cfg.precision != "fp32" and pb.trainable_params:
        params, grads, states, temps, note = _deepspeed_mixed_precision(cfg, pb, opt, params, grads, states, temps)
        formula += note
    held = 0
    bucket = deepspeed_bucket_bytes(arch, cfg) if pb.trainable_params else 0
    if bucket:
        when = "held throughout" if cfg.zero == 3 else "during backward"
        formula += f"; DeepSpeed's gradient bucket: {bucket / 2**20:.0f} MiB {when}"
        if cfg.zero == 3:
            held = bucket
        else:
            buckets = bucket
    if cfg.offload != "none" and cfg.zero:
        # DeepSpeed's CPU optimizer keeps fp32 master params, fp32 grads and Adam's m and v on the host: 16 B per
        # trainable param, x1.5 for its buffers (its own estimator: stage_1_and_2.py
        # estimate_zero2_model_states_mem_needs `max(4 * total_gpus, 16)`, stage3.py
        # estimate_zero3_model_states_mem_needs `16` / `18` with the 16-bit params, per node)
        per_param = max(4 * n, 16) if cfg.zero < 3 else 16
        host += int(HOST_BUFFER_FACTOR * per_param * pb.trainable_params)
        # each reduced gradient bucket is copied out to the host partition (stage_1_and_2.py
        # copy_grads_in_partition / async_accumulate_grad_in_cpu_via_gpu): no gradient partition stays on the GPU
        states = temps = grads = 0
        formula += "; optimizer states, fp32 master and fp32 grads offloaded to CPU (DeepSpeed CPU Adam)"
        if cfg.offload == "params":
            host += int(HOST_BUFFER_FACTOR * 2 * pb.total_params)  # the 16-bit params (stage3.py: 18 - 16)
            params = pb.not_parameters  # not parameters: DeepSpeed neither partitions nor offloads them
            formula += "; parameters offloaded to CPU (gathered per layer)"
    elif cfg.offload == "params":
        # FSDP's CPUOffload(offload_params=True) keeps the sharded parameters, their gradients and the
        # optimizer states on the host, all together (torch distributed/fsdp CPUOffloadPolicy): all ranks'
        # shards add up to one copy of each per node
        host += pb.total - pb.not_parameters + pb.trainable + opt.states
        grads = states = temps = 0
        params = pb.not_parameters  # not parameters: FSDP neither shards nor offloads them
        formula += "; parameters, gradients and optimizer states offloaded to CPU (FSDP CPU offload)"
    return PerGpuStates(params, gathered, grads, buckets, states, temps, host, formula, fsdp, held)


def deepspeed_bucket_bytes(arch: ModelArch, cfg: TrainConfig) -> int:
    """DeepSpeed's contiguous-gradient (IPG) buffers, whatever the number of GPUs and however few params train:
    - ZeRO-2 (deepspeed/runtime/zero/stage_1_and_2.py ``setup_buckets``): ``torch.empty(reduce_bucket_size)`` at the
      start of each backward, a second one with overlap_comm (double buffering), freed when the backward ends
      (``_release_ipg_buffers``); in the gradient dtype, the module's 16 bits;
    - ZeRO-3 (stage3.py, after ``initialize_optimizer_states``): one ``reduce_bucket_size`` buffer per gradient
      dtype, allocated when the optimizer is built and held for the whole run.
    Both only with contiguous_gradients.  "auto" is what transformers fills in: hidden_size^2 elements
    (transformers integrations/deepspeed.py ``trainer_config_finalize``: ``fill_only("zero_optimization.
    reduce_bucket_size", hidden_size * hidden_size)``).  ZeRO-1 with bf16 runs DeepSpeed's BF16_Optimizer
    (engine.py ``_do_optimizer_sanity_check``), whose buffers are not modelled here."""
    if cfg.zero < 2 or not cfg.contiguous_gradients:
        return 0
    elements = cfg.reduce_bucket_size or arch.hidden_size**2
    dtype = DTYPE_BYTES[cfg.precision]
    copies = 2 if cfg.overlap_comm and cfg.zero == 2 else 1
    return copies * rounded(elements * dtype)


def _deepspeed_mixed_precision(cfg: TrainConfig, pb: ParamBytes, opt: OptimizerBytes, params: int, grads: int,
                               states: int, temps: int) -> tuple[int, int, int, int, str]:
    """DeepSpeed's ZeRO optimizer with bf16 / fp16 (what the HF Trainer enables from its bf16 / fp16 flags):
    - the module is cast to 16 bits (runtime/engine.py _configure_distributed_model: module.bfloat16() /
      half()), PEFT's fp32 adapters included;
    - for the trainable params it keeps an fp32 master partition (stage_1_and_2.py
      single_partition_of_fp32_groups; stage3.py fp32_partitioned_groups_flat), and the optimizer steps on it,
      so a torch optimizer's states are fp32 whatever the module's dtype;
    - the 16-bit grads are reduced into the partition and copied to an fp32 gradient partition for the step
      (stage_1_and_2.py get_flat_partition(...).to(fp32) in step(); a step temporary).
    The same on one GPU: `--zero 2` without other GPUs still changes what is held.  Together: 2 + 2 + 4 + 8 + 4
    bytes per trainable param for AdamW, DeepSpeed's own `2 + 18 / N` (estimate_zero2_model_states_mem_needs)."""
    n, tp = cfg.gpus, pb.trainable_params
    shard = n if cfg.zero == 3 else 1
    params16 = pb.total - pb.trainable + 2 * tp
    params = (params16 - pb.not_parameters) // shard + pb.not_parameters if cfg.zero == 3 else params16
    grads16 = 2 * tp
    grads = grads16 // n if cfg.zero >= 2 else grads16
    master = 4 * tp // n
    fp32_states = cfg.optimizer in ("adamw", "sgd", "adafactor")  # torch optimizers keep states like the params
    scale = 4 / pb.trainable_dtype_bytes if fp32_states else 1.0
    states = int(opt.states * scale) // n + master
    temps = int(opt.step_temporaries * scale) // n + 4 * tp // n
    return params, grads, states, temps, ("; DeepSpeed mixed precision: 16-bit module, fp32 master + fp32 optimizer "
                                          "states per rank, fp32 grad partition in the step")
