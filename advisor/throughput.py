"""Tokens per second of a training job, built from mechanisms rather than one curve.

One optimizer step is ``micro_steps`` micro steps plus the step itself.  A micro step on one GPU costs

* **GEMMs**, per Linear and per pass (forward; backward = input grad + weight grad for full fine-tuning, the
  input grad only for a frozen base; the checkpointing recompute is one more forward, counted as compute,
  never folded into the utilisation): FLOPs / (GEMM_EFFICIENCY x peak) + bytes moved / bandwidth.  The
  second term is what makes the achieved fraction of peak depend on the GEMM's shape (tokens per micro
  batch x the Linear's width): a 256-token micro batch of a 14B model is weight-read bound, a 4k-token one
  is compute bound (`gemm_efficiency`).
* **attention** at the causal half of s^2 (FlashAttention-2 and SDPA skip the masked blocks; a sliding
  window caps the context), its backward at 2.5x the forward (FlashAttention recomputes QK^T: five matmuls
  to the forward's two).
* **memory-bound work**: the norms, activations, residuals and rotary (ELEMENTWISE_PASSES reads/writes of a
  hidden-state vector per token and layer), the fp32 loss over the vocabulary, and QLoRA's dequantisation
  (the 4-bit base read and a 16-bit copy written, each pass, at DEQUANT_EFFICIENCY of the bandwidth).
* **fixed overheads**: kernel launches per layer and pass (LAYER_OVERHEAD_S) and per LoRA module.

and the step adds the optimizer (params, grads and states read and written once: bandwidth bound, or on
the CPU when offloaded), gradient clipping, a fixed per-step cost (STEP_OVERHEAD_S: data loading, logging,
scheduler), the collectives of DDP / ZeRO / FSDP over NVLink or PCIe (partly hidden behind the backward)
and the offload traffic over the host link.  Every term is added; none replaces another.

The fitted constants (benchmarks/throughput_accuracy.py, on a documented split of
../shared/data/public-throughput.csv) are the four marked below the imports, each with its reason.
Tokens/s is reported as a range: the held-out rows' spread of measured / estimated (RANGE_LOW, RANGE_HIGH).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from .memory.config import TrainConfig
from .memory.targets import effective_attention, lora_linears
from .models.arch import ModelArch
from .models.params import count_params, layer_linears, layer_share

# --- fitted on the training rows of benchmarks/throughput_accuracy.py --fit (four, each with its reason) ---
GEMM_EFFICIENCY = 0.556  # cuBLAS reaches ~60-75 % of the datasheet's dense peak on large GEMMs; the fit also carries
#                          clock throttling under sustained load and what the model leaves out
STEP_OVERHEAD_S = 0.107  # per optimizer step: data loading and collation, logging, LR scheduler, zero_grad,
#                          a host sync for the loss and the grad norm
HOPPER_PEAK_SHARE = 0.815  # Hopper / Blackwell reach a smaller share of their datasheet peak than Ampere / Ada with
#                          the same kernels (power and clock limits at 700 W; published H100 MFU 33-42 % vs A100 ~50 %)
ATTENTION_EFFICIENCY = 0.353  # FlashAttention reaches less of peak than a GEMM (FA2 paper: 50-73 % forward,
#                               35-63 % backward on A100), lowest in the backward that dominates
# --- reasoned, not fitted ---
ELEMENTWISE_PASSES = 24  # hidden-state vectors (2 B each) read or written per token and layer by the norms, residual
#                          adds and activation: ~8 forward, twice that backward.  Not fitted: the published rows cannot
#                          tell it from GEMM_EFFICIENCY (a fit drove it to 0)
LAYER_OVERHEAD_S = 100e-6  # kernel launches per decoder layer, forward + backward: ~60 eager kernels x ~5 us that the
#                            GPU waits for only when its own work per kernel is shorter (tiny micro batches)
DEQUANT_EFFICIENCY = 0.26  # bitsandbytes' 4-bit dequantise reaches ~1/4 of peak bandwidth: LitGPT's Llama-2-7B table
#                            (rows 394/395: +79 ms per iteration for QLoRA, two passes of 6.5e9 weights x 2.5 B)
BANDWIDTH_EFFICIENCY = 0.80  # streaming kernels reach ~80 % of the datasheet memory bandwidth (STREAM-like)
LINK_EFFICIENCY = 0.80  # NCCL bus bandwidth ~80 % of the link's rate
KERNEL_LAUNCH_S = 6e-6  # one eager kernel launch from Python
LORA_KERNELS = 12  # per adapted Linear, forward + backward: dropout, A, B, scale, add and their grads
CPU_ADAM_PARAMS_PER_S = 1.5e9  # DeepSpeed's CPU Adam on a server CPU (the ZeRO-Offload paper's order)
ATTENTION_BACKWARD = 2.5  # FlashAttention-2's backward: five matmuls to the forward's two
COLLECTIVE_OVERLAP = {"ddp": 0.7, "zero2": 0.5, "zero3": 0.7, "fsdp": 0.7}  # share a collective hides behind compute
# spread of measured / estimated tokens/s on the held-out rows (10th and 90th percentile of estimate / measured
# were 0.74 and 1.13): the range reported
RANGE_LOW, RANGE_HIGH = 0.88, 1.35

NOMINAL_TFLOPS = 100.0  # when no GPU is known: rankings stay meaningful, absolute tokens/s do not
NOMINAL_BANDWIDTH_GBS = 1000.0
NOMINAL_HOST_GBS = 25.0  # PCIe 4.0 x16 in practice
GB = 1e9


@dataclass(frozen=True)
class GpuPerf:
    """What the throughput model reads of one GPU (catalog facts; nominal values when the GPU is unknown)."""

    name: str = "unknown"
    tflops: dict = field(default_factory=lambda: {"bf16": NOMINAL_TFLOPS, "fp16": NOMINAL_TFLOPS,
                                                  "fp32": NOMINAL_TFLOPS / 8})
    bandwidth_gbs: float = NOMINAL_BANDWIDTH_GBS
    nvlink_gbs: float | None = None  # per direction per GPU; None: GPU to GPU goes over PCIe through the host
    host_link_gbs: float = NOMINAL_HOST_GBS
    known: bool = False
    compute_capability: tuple[int, int] = (8, 0)

    def peak(self, precision: str) -> float:
        """Dense FLOP/s the job's compute dtype can reach (the datasheet's, less on Hopper and later)."""
        share = HOPPER_PEAK_SHARE if self.compute_capability >= (9, 0) else 1.0
        return self.tflops[precision] * 1e12 * share

    def datasheet_peak(self, precision: str) -> float:
        return self.tflops[precision] * 1e12

    @property
    def link_gbs(self) -> float:
        """GPU to GPU bandwidth a ring collective sees: NVLink, or PCIe peer traffic bounced through host
        memory (each byte crosses the host link twice)."""
        return self.nvlink_gbs if self.nvlink_gbs else self.host_link_gbs / 2


def gpu_perf(name: str | None) -> GpuPerf:
    """The catalog's facts for a GPU name (as NVML or a user writes it); nominal when unknown."""
    if not name:
        return GpuPerf()
    from .hardware.catalog import find_gpu

    spec = find_gpu(name)
    if spec is None:
        return GpuPerf(name=name)
    half = spec.tflops_bf16 or spec.tflops_fp16 or NOMINAL_TFLOPS
    tflops = {"bf16": half, "fp16": spec.tflops_fp16 or half, "fp32": spec.tflops_fp32 or half / 8}
    return GpuPerf(name=spec.name, tflops=tflops, bandwidth_gbs=spec.bandwidth_gbs or NOMINAL_BANDWIDTH_GBS,
                   nvlink_gbs=spec.nvlink_gbs if spec.nvlink else None,
                   host_link_gbs=spec.host_link_gbs or NOMINAL_HOST_GBS, known=True,
                   compute_capability=tuple(spec.compute_capability))


@dataclass(frozen=True)
class Throughput:
    """One configuration's speed.  Times are seconds per optimizer step on each GPU (all GPUs run in step)."""

    tokens_per_s: float  # the whole job (all GPUs)
    tokens_per_s_low: float
    tokens_per_s_high: float
    step_s: float  # one optimizer step
    tokens_per_step: int
    mfu: float  # model FLOPs (no recompute) x tokens/s / (GPUs x peak)
    hfu: float  # the same with the recompute
    flops_per_token: float  # model FLOPs per token (forward + backward, causal attention, no recompute)
    terms: dict = field(default_factory=dict)  # seconds per optimizer step: compute, memory, overhead, ...

    @property
    def step_s_low(self) -> float:
        return self.tokens_per_step / self.tokens_per_s_high

    @property
    def step_s_high(self) -> float:
        return self.tokens_per_step / self.tokens_per_s_low


# ---------------------------------------------------------------------------------------------- FLOPs


def _attention_context(arch: ModelArch, seq_len: int) -> float:
    """Keys each query attends to, averaged over positions and layers: s/2 for causal attention (the
    masked half is skipped), about w - w^2/2s under a sliding window w < s."""
    def causal(window: int | None) -> float:
        if window is None or window >= seq_len:
            return seq_len / 2
        return window - window * window / (2 * seq_len)

    window = arch.sliding_window
    if arch.layer_types:
        per = [causal(window if kind == "sliding_attention" else None) for kind in arch.layer_types
               if kind != "linear_attention"]
        return sum(per) / len(arch.layer_types) if per else 0.0
    if window is not None and arch.model_type in ("gemma2",):  # alternate layers slide
        return (causal(window) + causal(None)) / 2
    return causal(window)


def active_layer_weights(arch: ModelArch) -> int:
    """Weights one token multiplies with in one decoder layer: every Linear of the layer (attention, the
    router, a dense MLP) and, of a mixture of experts, the shared experts in full and k of the E routed ones."""
    dense = sum(spec.per_layer * spec.weight_params * layer_share(arch, spec) for spec in layer_linears(arch))
    dense = int(dense)
    if arch.moe is None:
        return dense
    per_expert = 3 * arch.hidden_size * arch.moe.expert_intermediate_size
    return dense + (arch.moe.shared_experts + arch.moe.experts_per_token) * per_expert


def matmul_params(arch: ModelArch) -> int:
    """Active weights per token: the decoder layers' plus the LM head (the input embedding is a lookup)."""
    return arch.num_layers * active_layer_weights(arch) + arch.vocab_size * arch.hidden_size


@dataclass(frozen=True)
class Flops:
    """FLOPs per token of one training step, by pass."""

    forward: float
    backward: float
    recompute: float
    attention: float = 0.0  # the part of forward + backward + recompute that is attention (runs at its own efficiency)

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def hardware(self) -> float:
        return self.forward + self.backward + self.recompute


def flops(arch: ModelArch, cfg: TrainConfig) -> Flops:
    """2 FLOPs per weight per token forward; backward 2x that for trained weights (input and weight
    gradient), 1x for a frozen base (input gradient only); attention 4 x q_dim x context per layer
    forward at the causal context (`_attention_context`), 2.5x that backward; LoRA adds 2r(in + out) per
    adapted Linear forward and three times that backward.  Checkpointing recomputes the decoder layers'
    forward once (not the LM head)."""
    L, head = arch.num_layers, arch.vocab_size * arch.hidden_size
    layer = active_layer_weights(arch)
    # eager attention multiplies the whole s x s square and masks it afterwards
    context = cfg.seq_len if effective_attention(arch, cfg) == "eager" else _attention_context(arch, cfg.seq_len)
    attention = 4 * arch.q_dim * context
    adapters = sum(2 * cfg.rank * spec.per_layer * (spec.in_features + spec.out_features) * layer_share(arch, spec)
                   for spec in lora_linears(arch, cfg))
    layer_fwd = 2 * layer + attention + adapters
    forward = L * layer_fwd + 2 * head
    grad_factor = 2 if cfg.method == "full" else 1
    backward = L * (grad_factor * 2 * layer + ATTENTION_BACKWARD * attention + 2 * adapters) + grad_factor * 2 * head
    attn_total = L * attention * (1 + ATTENTION_BACKWARD + (1 if cfg.grad_ckpt else 0))
    return Flops(forward, backward, L * layer_fwd if cfg.grad_ckpt else 0.0, attn_total)


def flops_per_token(arch: ModelArch, cfg: TrainConfig) -> float:
    """Model FLOPs per token (forward + backward, no recompute): what MFU counts."""
    return flops(arch, cfg).model


def gemm_efficiency(tokens: int, d_in: int, d_out: int, perf: GpuPerf, precision: str = "bf16") -> float:
    """Achieved fraction of peak of one [tokens x d_in] @ [d_in x d_out] GEMM under this model: its FLOPs
    over (FLOPs at GEMM_EFFICIENCY x peak + its bytes at the achievable bandwidth)."""
    width = 4 if precision == "fp32" else 2
    work = 2 * tokens * d_in * d_out
    seconds = (work / (GEMM_EFFICIENCY * perf.peak(precision))
               + width * (tokens * d_in + d_in * d_out + tokens * d_out) / (BANDWIDTH_EFFICIENCY * perf.bandwidth_gbs * GB))
    return work / seconds / perf.datasheet_peak(precision)


# ---------------------------------------------------------------------------------------------- time


def _gemms(arch: ModelArch, tokens: int) -> list[tuple[int, int, float, float]]:
    """(d_in, d_out, rows, weight matrices read) of each kind of GEMM in one decoder layer for ``tokens``
    tokens.  A routed expert sees tokens x k / E rows, and every expert the batch reaches has its weights read."""
    gemms = [(s.in_features, s.out_features, float(tokens), s.per_layer * layer_share(arch, s)) for s in layer_linears(arch)]
    if arch.moe is not None:
        moe, h, ei = arch.moe, arch.hidden_size, arch.moe.expert_intermediate_size
        routed_rows = max(1.0, tokens * moe.experts_per_token / moe.num_experts)
        reached = min(moe.num_experts, tokens * moe.experts_per_token)
        for experts, rows in ((moe.shared_experts, float(tokens)), (reached, routed_rows)):
            if experts:
                gemms += [(h, ei, rows, 2.0 * experts), (ei, h, rows, float(experts))]
    return gemms


def micro_step_terms(arch: ModelArch, cfg: TrainConfig, perf: GpuPerf, f: Flops | None = None) -> dict[str, float]:
    """Seconds of one micro step on one GPU, by mechanism (``f``: this config's FLOPs, when already counted)."""
    T, L, h, V = cfg.tokens, arch.num_layers, arch.hidden_size, arch.vocab_size
    width = 4 if cfg.precision == "fp32" else 2
    peak = GEMM_EFFICIENCY * perf.peak(cfg.precision)
    bw = BANDWIDTH_EFFICIENCY * perf.bandwidth_gbs * GB
    f = f or flops(arch, cfg)
    passes = 1 + (2 if cfg.method == "full" else 1) + (1 if cfg.grad_ckpt else 0)  # GEMM passes over the weights
    gemm_bytes = sum(width * (copies * d_in * d_out + copies * rows * (d_in + d_out))
                     for d_in, d_out, rows, copies in _gemms(arch, T))
    memory_bytes = L * passes * gemm_bytes + passes * width * (T * h + h * V + T * V)
    elementwise = L * ELEMENTWISE_PASSES * T * h * 2 * (4 if cfg.grad_ckpt else 3) / 3
    loss = T * V * 16  # 16-bit logits written, upcast to fp32, softmax and its gradient: ~16 B per logit
    if effective_attention(arch, cfg) == "eager":  # the s x s scores go through memory: write, softmax, its grad
        elementwise += L * arch.num_heads * T * cfg.seq_len * 12 * (4 if cfg.grad_ckpt else 3) / 3
    attention = T * f.attention / (ATTENTION_EFFICIENCY * perf.peak(cfg.precision))
    terms = {"compute_s": T * (f.hardware - f.attention) / peak + attention,
             "memory_s": (memory_bytes + elementwise + loss) / bw}
    if cfg.method in ("qlora", "lora8bit"):  # each pass dequantises the base: read the packed weights, write 16 bits
        quantized = count_params(arch).linear_in_layers
        packed = 0.5 if cfg.method == "qlora" else 1.0
        terms["dequant_s"] = passes * quantized * (packed + 2) / (DEQUANT_EFFICIENCY * perf.bandwidth_gbs * GB)
    adapters = sum(spec.per_layer * layer_share(arch, spec) for spec in lora_linears(arch, cfg))
    terms["overhead_s"] = L * (LAYER_OVERHEAD_S * passes / 3 + adapters * LORA_KERNELS * KERNEL_LAUNCH_S)
    return terms


def _sharded(cfg: TrainConfig) -> bool:
    return bool(cfg.zero) or cfg.fsdp


def throughput(arch: ModelArch, cfg: TrainConfig, est, effective_batch: int, perf: GpuPerf | None = None,
               measured_ratio: float | None = None) -> Throughput:
    """Tokens/s and step time of ``cfg`` reaching ``effective_batch`` sequences per optimizer step.
    ``est`` is the memory estimate (Peaks or MemoryEstimate: trainable/total params, host RAM).
    ``measured_ratio``: measured / estimated tokens/s of a real run of this setup (calibration), applied to
    the whole step."""
    perf = perf or GpuPerf()
    g = cfg.gpus
    micro_steps = cfg.accumulation(effective_batch)
    tokens_per_step = cfg.tokens * g * micro_steps
    f = flops(arch, cfg)
    micro = micro_step_terms(arch, cfg, perf, f)
    terms = {k: v * micro_steps for k, v in micro.items()}
    busy = sum(micro.values())  # one micro step's GPU time, what a collective can hide behind
    bw = BANDWIDTH_EFFICIENCY * perf.bandwidth_gbs * GB
    link = LINK_EFFICIENCY * perf.link_gbs * GB
    host = LINK_EFFICIENCY * perf.host_link_gbs * GB
    trainable, total = est.trainable_params, est.total_params
    width = 4 if cfg.precision == "fp32" else 2

    # the optimizer step and clipping: params, grads and states read and written once (bandwidth bound)
    grad_bytes = trainable * (4 if cfg.master_weights or cfg.uses_adapters or cfg.precision == "fp32" else 2)
    param_bytes = trainable * (width + (4 if cfg.master_weights else 0))
    state_bytes = trainable * {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 4, "adafactor": 1}.get(
        cfg.optimizer, 8)
    shard = g if _sharded(cfg) else 1
    accumulate = (micro_steps - 1) * 2 * grad_bytes  # each later micro step adds into the grads
    optimizer_bytes = (2 * param_bytes + 2 * grad_bytes + 2 * state_bytes) / shard + grad_bytes / shard + accumulate
    # offloaded: the step runs on the CPU (offload_s); accumulation and clipping stay on the GPU
    terms["optimizer_s"] = (optimizer_bytes if cfg.offload == "none" else accumulate + grad_bytes / shard) / bw
    terms["step_overhead_s"] = STEP_OVERHEAD_S

    # collectives (ring: each GPU sends and receives (g-1)/g of the buffer per pass over it)
    comm_s = 0.0
    if g > 1:
        ring = (g - 1) / g
        overlap = COLLECTIVE_OVERLAP.get(cfg.sharding, 0.7)
        grads_wire = trainable * (2 if cfg.precision != "fp32" else 4)  # reduced in the compute dtype
        if cfg.zero == 3 or cfg.fsdp:
            base_wire = total * width if cfg.method != "qlora" else count_params(arch).linear_in_layers * 0.5 + (
                total - count_params(arch).linear_in_layers) * 2
            gathers = 3 if cfg.grad_ckpt else 2  # forward, backward (and the recompute)
            per_micro = (gathers * base_wire + grads_wire) * ring / link
            comm_s += micro_steps * max(per_micro * (1 - overlap), per_micro - busy)
        elif cfg.zero in (1, 2):
            per_micro = grads_wire * ring / link  # reduce-scatter every micro step
            comm_s += micro_steps * max(per_micro * (1 - overlap), per_micro - busy)
            comm_s += trainable * width * ring / link  # all-gather of the updated params
        else:  # DDP: one all-reduce of the grads, with the last micro step's backward
            per_step = 2 * grads_wire * ring / link
            comm_s += max(per_step * (1 - overlap), per_step - busy)
    terms["comm_s"] = comm_s

    # offload: added to everything above, never in place of it
    offload_s = 0.0
    if cfg.offload != "none":
        # grads go to the host, updated 16-bit params come back; the CPU runs the optimizer
        offload_s += (grad_bytes + trainable * width) / g / host + trainable / CPU_ADAM_PARAMS_PER_S
    if cfg.offload == "params":  # each GPU fetches its shard of the weights for every pass over them
        passes = 3 if cfg.grad_ckpt else 2
        offload_s += micro_steps * passes * total * width / g / host
    terms["offload_s"] = offload_s

    if measured_ratio:
        terms = {k: v / measured_ratio for k, v in terms.items()}
    step_s = sum(terms.values())
    tokens_per_s = tokens_per_step / step_s
    peak = perf.datasheet_peak(cfg.precision) * g
    return Throughput(tokens_per_s=tokens_per_s, tokens_per_s_low=tokens_per_s * RANGE_LOW,
                      tokens_per_s_high=tokens_per_s * RANGE_HIGH, step_s=step_s, tokens_per_step=tokens_per_step,
                      mfu=f.model * tokens_per_s / peak, hfu=f.hardware * tokens_per_s / peak,
                      flops_per_token=f.model, terms=terms)


# ---------------------------------------------------------------------------------------------- time and cost


@dataclass(frozen=True)
class Job:
    """How much training: the data set's tokens (or samples x the sequence length), epochs, and a price."""

    dataset_tokens: int | None = None
    samples: int | None = None  # sequences; tokens = samples x seq_len
    epochs: float = 1.0
    price_per_gpu_hour: float | None = None

    @classmethod
    def of(cls, source) -> "Job":
        """The job a request or the planner's goals describe (both carry these four fields)."""
        return cls(dataset_tokens=source.dataset_tokens, samples=source.samples, epochs=source.epochs,
                   price_per_gpu_hour=source.price_per_gpu_hour)

    def tokens(self, seq_len: int) -> int | None:
        if self.dataset_tokens is not None:
            return self.dataset_tokens
        return None if self.samples is None else self.samples * seq_len


class Speed(BaseModel):
    """Throughput of one configuration and, for a job of known size, its time, GPU-hours and cost.  Every
    figure has a low-high range: the spread of measured / estimated on the held-out published rows
    (benchmarks/throughput_accuracy.py)."""

    model_config = ConfigDict(frozen=True)

    tokens_per_s: float = Field(description="Training tokens per second of the whole job (all GPUs), expected.")
    tokens_per_s_range: tuple[float, float] = Field(description="Low and high tokens/s.")
    step_s: float = Field(description="Seconds per optimizer step, expected.")
    step_s_range: tuple[float, float] = Field(description="Low and high seconds per optimizer step.")
    tokens_per_step: int = Field(description="Tokens per optimizer step (micro batch x seq len x GPUs x accumulation).")
    mfu: float = Field(description="Model FLOPs utilisation: model FLOPs (causal attention, no recompute) x tokens/s / peak.")
    gpus: int
    terms: dict[str, float] = Field(default_factory=dict, description="Seconds per optimizer step by mechanism "
                                    "(compute, memory, dequant, overhead, optimizer, step overhead, comm, offload).")
    dataset_tokens: int | None = Field(None, description="Tokens in one epoch of the data set (given, or samples x seq len).")
    epochs: float | None = None
    steps: int | None = Field(None, description="Optimizer steps for the whole job.")
    wall_s: float | None = Field(None, description="Wall-clock seconds of training, expected.")
    wall_s_range: tuple[float, float] | None = None
    gpu_hours: float | None = Field(None, description="GPUs x wall-clock hours, expected.")
    gpu_hours_range: tuple[float, float] | None = None
    price_per_gpu_hour: float | None = Field(None, description="As given (no built-in price list).")
    cost: float | None = Field(None, description="GPU-hours x price, expected (the price's currency).")
    cost_range: tuple[float, float] | None = None
    basis: str = Field("", description="What the figures rest on.")
    calibrated: bool = Field(False, description="Tokens/s scaled by what a real verify run of this setup measured.")


def speed(tp: Throughput, gpus: int, seq_len: int, job: Job | None = None, calibration=None) -> Speed:
    """The report of one Throughput, with the job's time and cost when its size is known.  ``calibration``: the
    CalibrationPoint whose measured tokens/s the throughput was scaled by (named in the basis)."""
    low, high = tp.tokens_per_s_low, tp.tokens_per_s_high
    fields: dict = {}
    tokens = job.tokens(seq_len) if job else None
    if tokens is not None:
        total = tokens * job.epochs
        wall = total / tp.tokens_per_s
        fields = dict(dataset_tokens=tokens, epochs=job.epochs, steps=max(1, -(-int(total) // tp.tokens_per_step)),
                      wall_s=wall, wall_s_range=(total / high, total / low), gpu_hours=wall * gpus / 3600,
                      gpu_hours_range=(total / high * gpus / 3600, total / low * gpus / 3600))
        if job.price_per_gpu_hour is not None:
            price = job.price_per_gpu_hour
            fields.update(price_per_gpu_hour=price, cost=fields["gpu_hours"] * price,
                          cost_range=(fields["gpu_hours_range"][0] * price, fields["gpu_hours_range"][1] * price))
    return Speed(tokens_per_s=tp.tokens_per_s, tokens_per_s_range=(low, high), step_s=tp.step_s,
                 step_s_range=(tp.step_s_low, tp.step_s_high), tokens_per_step=tp.tokens_per_step, mfu=tp.mfu,
                 gpus=gpus, terms={k: round(v, 6) for k, v in tp.terms.items()},
                 basis=(f"calibrated: x{calibration.tokens_per_s_ratio:.2f} the model, as a real verify run on "
                        f"{calibration.gpu_name} measured ({calibration.measured_at}); " if calibration else "")
                 + f"throughput model (advisor/throughput.py); range x{RANGE_LOW:.2f}-x{RANGE_HIGH:.2f} of the "
                   f"expected tokens/s: the held-out published runs' 10th-90th percentile",
                 calibrated=calibration is not None, **fields)
