"""estimate(arch, train_config, hardware) -> MemoryEstimate.

The peak of a training step is not the sum of its parts: weights and optimizer states live all the time,
saved activations grow through the forward pass and shrink through the backward pass while gradients
grow, and the optimizer step needs gradients, states and its own temporaries but no activations.  So the
model walks the step in order (forward layer by layer, the loss, backward layer by layer, the optimizer
step) and takes the largest live total in each phase.  All sizes are per GPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from ..errors import AdvisorError, UsageError
from ..hardware import Hardware
from ..models.arch import ModelArch
from .activations import (FP32, GEMMA3, GEMMA_NORMS, attention_masks, attention_scores_bytes, chunk_padding_bytes, layer_plan,
                          layer_saved, layer_transients)
from .config import PREQUANTIZED, TrainConfig
from .fsdp import StepWalk, fsdp_phases
from .overheads import (device_range, measured_tensor_high, nccl_communicators, overheads, unchecked_part,
                        unpacked_cache, unpacked_note, zero_first_step_cache)
from .result import Component, MemoryEstimate, PhasePeaks
from .sharding import per_gpu_states
from .states import gradient_timeline, optimizer_bytes, param_bytes, rounded
from .targets import effective_attention, lora_linears
from .vision import image_inputs, vision_terms


def estimate(arch: ModelArch, cfg: TrainConfig, hardware: Hardware | None = None, detail: bool = True,
             calibration=None) -> "MemoryEstimate | Peaks":
    """The memory of one configuration.  ``detail=False`` returns only the `Peaks` (the planner's fast
    path over thousands of candidates, see `peaks`); every number that decides fits is the same.  ``calibration``
    (a CalibrationPoint from a real run on this GPU) replaces the overhead constants with what was
    measured."""
    pb = param_bytes(arch, cfg)
    opt = optimizer_bytes(arch, cfg, pb)
    gpu = per_gpu_states(arch, cfg, pb, opt)
    attn = effective_attention(arch, cfg)
    if cfg.kbit_upcast != "none":
        kbit_upcast_modelled(arch, cfg, attn)
    lora_names = frozenset(spec.name for spec in lora_linears(arch, cfg))
    plan = layer_plan(arch, cfg, lora_names, attn)
    a = plan.act_bytes
    vis = vision_terms(arch, cfg, a)  # images: refused for a text-only model; NO_IMAGES without them
    # Gemma 3 interleaves sliding and global layers: SDPA gets a mask on some layers only (activations.layer_plan)
    # Qwen3.5 interleaves linear-attention (Gated DeltaNet) and full-attention layers: one plan per kind too
    per_kind = arch.model_type in GEMMA3 or arch.linear_attention is not None
    kinds = arch.layer_types[:arch.num_layers] if arch.layer_types and per_kind else None
    plans = {kind: layer_plan(arch, cfg, lora_names, attn, kind) for kind in set(kinds)} if kinds else {}
    uniform = len(set(plans.values())) <= 1
    T, h, L = cfg.tokens, arch.hidden_size, arch.num_layers
    full = cfg.method == "full"
    head_trains = full or cfg.train_embeddings

    # --- saved activations, layer by layer: what requires grad changes after the first layer (for LoRA
    # the first layer's input comes from a frozen embedding), then every layer is the same.  With checkpointing the
    # embedding's output requires grad whatever trains: transformers turns on enable_input_require_grads for a PEFT
    # model (modeling_utils.py _activation_checkpointing_enable), as TRL and LLaMA-Factory do themselves
    in_rg = head_trains or cfg.grad_ckpt
    per_layer: list[int] = []
    first_layer: dict[str, int] = {}
    for l in range(L):
        saved, out_rg = layer_saved(arch, plans[kinds[l]] if kinds else plan, in_rg)
        per_layer.append((rounded(T * saved.total) if saved.total else 0) + attention_scores_bytes(arch, cfg, saved)
                         + saved.layer_bytes + chunk_padding_bytes(cfg, saved))
        first_layer = first_layer or saved.items
        if out_rg == in_rg and len(per_layer) > 1 and uniform:  # same input state, same layer: the rest repeat
            per_layer += [per_layer[-1]] * (L - len(per_layer))
            break
        in_rg = out_rg
    # the residual stream's dtype: fp32 under autocast over master weights, and where k-bit preparation left fp32
    # norms (4-bit layers return their input's dtype: TrainConfig.kbit_upcast); the embedding's output is 16-bit
    # unless the embedding itself was upcast
    stream = FP32 if cfg.master_weights or cfg.kbit_upcast != "none" else a
    embed_out = rounded(T * (FP32 if cfg.master_weights or cfg.kbit_upcast == "all" else a) * h)
    ckpt_input = rounded(T * stream * h)  # all a checkpointed layer keeps: its input hidden states
    stored_acts = L * ckpt_input if cfg.grad_ckpt else sum(per_layer)
    if cfg.grad_ckpt and embed_out < ckpt_input:  # the first layer's input is the embedding's output
        stored_acts -= ckpt_input - embed_out

    # --- saved outside the layers: RoPE cos/sin (position ids are (1, s): one copy for the batch), the
    # final norm (fp32 input, rsqrt; its normalized input when its weight trains), lm_head's input
    shared = 2 * rounded(cfg.seq_len * arch.head_dim * stream)
    final = 0
    if in_rg:
        final += rounded(T * FP32 * h) + rounded(T * FP32)
    if full:
        final += rounded(T * (FP32 if arch.model_type in GEMMA_NORMS else stream) * h)
    if head_trains:
        final += rounded(T * a * h)
    if cfg.kbit_upcast == "all" and in_rg and not head_trains:
        # lm_head's weight is fp32: autocast casts it to 16 bit for the matmul (not cached: it does not require grad),
        # and the matmul keeps that copy for its input's gradient until lm_head's backward
        final += rounded(arch.vocab_size * h * 2)

    # --- the loss region (HF ForCausalLMLoss): forward holds the 16-bit logits, their fp32 copy and the
    # log-softmax output (and the final hidden states, still referenced); backward holds the log-softmax
    # output, its gradient and the gradient of its input.  Soft-capping keeps its tanh output too.
    loss_fwd, loss_bwd = loss_region(arch, cfg, a, head_trains, stream)

    tr = layer_transients(arch, plan, cfg, quantized=cfg.method in ("qlora", "lora8bit"),
                          after_attention=rounded(T * saved.after_attention), probs_saved=saved.probs_saved)
    grads = gradient_timeline(arch, cfg, pb)
    grad_share = gpu.grads / pb.trainable if pb.trainable else 0.0
    steady = gpu.params + gpu.states + gpu.held_buffers

    # Attention masks live while the decoder runs; checkpointing keeps them (a layer input) until the
    # backward pass has recomputed every layer.
    masks = attention_masks(arch, cfg, attn)[1]
    held_masks = masks if cfg.grad_ckpt else 0

    # Mixed precision: autocast caches a 16-bit copy of every fp32 weight a Linear reads (every Linear and lm_head
    # over master weights; lora_A and lora_B of the adapted Linears over fp32 adapters) for the whole forward;
    # the copies are kept for backward until each Linear's backward has run.
    cache_layer, cache_head = _autocast_cache(arch, cfg, plan.lora_autocast)
    if cfg.grad_ckpt:
        # the forward caches every copy until autocast exits; the backward holds lm_head's copy and the
        # copies of the one layer being recomputed
        fwd_cache, bwd_cache = L * cache_layer + cache_head, cache_layer + cache_head
    else:
        fwd_cache = bwd_cache = L * cache_layer + cache_head

    # --- forward: the peak is in the loss region at the end, or inside the last layer's MLP
    # without checkpointing the model's forward still holds the embedding output (its local inputs_embeds) while the
    # layers run; with it, that tensor is the first checkpoint
    in_layer = masks + ((L * ckpt_input + tr.forward_unsaved) if cfg.grad_ckpt
                        else (stored_acts + tr.forward + embed_out))
    forward = steady + gpu.gathered + shared + fwd_cache + max(stored_acts + final + loss_fwd + held_masks, in_layer)

    # --- backward: starts at the loss with everything saved; then layer by layer activations go and
    # gradients come; it ends with every gradient (for tied embeddings: two partial grads and their sum)
    candidates = [stored_acts + shared + final + loss_bwd + held_masks + bwd_cache]
    head_grads = int(grads.head * grad_share)
    layer_grads = int(grads.per_layer * grad_share)
    # the final norm's backward (fp32 temporaries, as a layer's input norm) comes right after the loss's, with every
    # layer's saved activations still held
    candidates.append(stored_acts + shared + final + held_masks + bwd_cache + head_grads + tr.norm_backward)
    prefix = [0, *itertools.accumulate(per_layer)]  # prefix[l] = saved by the layers below l
    # Every term below is linear in l between layers whose saved bytes change, so its maximum lies at the
    # ends of those runs: evaluating those layers gives the same peak as walking all of them.
    for l in _run_ends(per_layer):
        grads_before = head_grads + (L - 1 - l) * layer_grads  # grads of the layers above l
        if cfg.grad_ckpt:  # inputs of layers <= l still held; layer l recomputed with saving, then backward
            held = (l + 1) * ckpt_input + per_layer[l] + rounded(T * stream * h)  # + the incoming gradient
            candidates.append(held + held_masks + bwd_cache + shared + grads_before + max(tr.forward, tr.backward))
            if tr.attention_backward:  # the attention's backward, after the layer's MLP grads (full FT) exist
                candidates.append(held + held_masks + bwd_cache + shared + grads_before + layer_grads
                                  + tr.attention_backward)
        else:
            candidates.append(prefix[l + 1] + (l + 1) * cache_layer + cache_head + shared + grads_before
                              + tr.backward)
            if tr.attention_backward:
                candidates.append(prefix[l + 1] + (l + 1) * cache_layer + cache_head + shared + grads_before
                                  + layer_grads + rounded(T * stream * h) + tr.attention_backward)
        below = l * ckpt_input if cfg.grad_ckpt else prefix[l]
        candidates.append(below + (held_masks if l else 0) + shared + grads_before + layer_grads + tr.norm_backward)
    # after the first layer's backward the checkpoints (and the masks they held) are released
    candidates.append(gpu.grads + int(grads.embedding_transient * grad_share))
    backward = steady + gpu.gathered + gpu.grad_buckets + max(candidates)
    if gpu.fsdp is not None:  # FSDP2: gathered units, buffers and unsharded grads move with the step (fsdp.py)
        forward, backward = fsdp_phases(gpu.fsdp, StepWalk(
            steady=steady, shared=shared, final=final, stored_acts=stored_acts, per_layer=per_layer,
            ckpt_input=ckpt_input, grad_ckpt=cfg.grad_ckpt, masks=masks, held_masks=held_masks,
            embed_out=embed_out, loss_fwd=loss_fwd, loss_bwd=loss_bwd,
            logits_grad=(rounded(min(T, TOKEN_TILE) * min(arch.vocab_size, VOCAB_CHUNK) * a) if cfg.loss == "chunked"
                         else rounded(T * arch.vocab_size * a)),
            in_layer=in_layer, tr_forward=tr.forward, tr_backward=tr.backward, tr_norm_backward=tr.norm_backward))

    # --- images: the pixel values live the whole step; the frozen tower runs before the language model (its
    # working set over the input embeddings), and the model holds its output through the decoder (vision.py)
    if vis.images:
        forward = max(forward + vis.held_forward + vis.graph, steady + gpu.gathered + vis.tower_peak) + vis.pixels
        backward = max(backward + vis.graph, steady + gpu.gathered + gpu.grad_buckets + gpu.grads + vis.tower_backward)
        backward += vis.pixels

    # --- optimizer step: no activations; grads, states and the step's temporaries
    optimizer = steady + gpu.grads + gpu.step_temporaries + vis.pixels

    by_phase = {"forward": forward, "backward": backward, "optimizer": optimizer}
    peak_phase = max(by_phase, key=by_phase.__getitem__)
    tensor_peak = by_phase[peak_phase]
    paged = gpu.states if cfg.optimizer == "paged_adamw_8bit" else 0
    # the standard loss's fp32 tokens x vocabulary blocks fragment the allocator's cache (overheads.py)
    loss_block = rounded(T * arch.vocab_size * FP32) if cfg.loss != "chunked" else 0
    communicators = nccl_communicators(cfg.gpus, cfg.zero, cfg.fsdp)
    over = overheads(tensor_peak, cfg.gpus, hardware.compute_capability if hardware else None, paged, loss_block,
                     communicators)
    allocated = tensor_peak + over.workspace - paged  # paged states live in unified memory, not torch's pool
    first_step_cache = 0
    # DeepSpeed's ZeRO-1/2 optimizer (stage_1_and_2.py), which ZeRO-1 runs only with fp16 (bf16: BF16_Optimizer)
    zero_optimizer = cfg.zero == 2 or (cfg.zero == 1 and cfg.precision == "fp16")
    if zero_optimizer and cfg.precision != "fp32" and cfg.offload == "none" and pb.trainable_params:
        first_step_cache = zero_first_step_cache(backward, steady + gpu.grads, 4 * pb.trainable_params // cfg.gpus,
                                                 loss_block)
        if optimizer + over.workspace + first_step_cache > allocated + over.fragmentation:
            over = replace(over, fragmentation=optimizer + over.workspace + first_step_cache - allocated)
    reserved = allocated + over.fragmentation
    device = reserved + over.context + over.outside_torch
    calibrated = calibrated_context = None
    if calibration is not None:
        allocated = int(allocated * calibration.allocated_ratio)
        reserved = int(allocated * calibration.reserved_over_allocated)
        if first_step_cache:  # a point from a run without DeepSpeed cannot know its partitions' cache
            reserved = max(reserved, int((optimizer + over.workspace + first_step_cache) * calibration.allocated_ratio))
        context = calibration.context_bytes if calibration.context_bytes is not None else over.context
        calibrated_context = context
        device = reserved + context + over.outside_torch
        calibrated = (f"calibrated from a real run on {calibration.gpu_name} ({calibration.model_family}, "
                      f"{calibration.method}, {calibration.measured_at}): allocated x{calibration.allocated_ratio:.3f}, "
                      f"reserved/allocated {calibration.reserved_over_allocated:.3f}")

    span = device_range(allocated - over.workspace, over.workspace, cfg.gpus, paged, unchecked_part(cfg, arch),
                        cfg.offload == "params", calibrated_context, loss_block, cfg.method == "full", communicators,
                        first_step_cache, measured_tensor_high(cfg))
    if not detail:
        return Peaks(peak_device_bytes=device, peak_device_high_bytes=span.high, activation_bytes=stored_acts + shared + final,
                     optimizer_state_bytes=gpu.states, host_ram_bytes=gpu.host_ram, total_params=pb.total_params,
                     trainable_params=pb.trainable_params)
    phases = PhasePeaks.model_construct(**by_phase)
    components = _components(arch, cfg, pb, gpu, opt.formula, stored_acts + shared + final, first_layer,
                             loss_fwd, loss_bwd, over, per_layer)
    notes = _notes(arch, cfg, attn) + ([calibrated] if calibrated else []) + _kbit_upcast_note(arch, cfg, attn, device)
    # model_construct: every value here is computed, not user input; validation would only cost time
    # (the planner builds thousands of these)
    result = MemoryEstimate.model_construct(
        capacity_bytes=None, fits=None, headroom_bytes=None,
        components=components, phases=phases, peak_phase=peak_phase,
        peak_allocated_bytes=allocated, peak_reserved_bytes=reserved, peak_device_bytes=device,
        peak_device_range_bytes=(span.low, span.high), range_basis=span.why,
        peak_allocated_range_bytes=(span.allocated_low, span.allocated_high),
        host_ram_bytes=gpu.host_ram, total_params=pb.total_params, trainable_params=pb.trainable_params,
        tokens_per_micro_batch=T, notes=notes, activation_bytes=stored_acts + shared + final,
        optimizer_state_bytes=gpu.states, calibration=calibration.model_dump() if calibration else None,
        unpacked_cache_bytes=None,
    )
    if cfg.lengths == "variable":
        result.unpacked_cache_bytes = unpacked_cache(tensor_peak, steady)
        result.notes.append(unpacked_note(result.unpacked_cache_bytes))
    if hardware is not None:
        result.capacity_bytes = hardware.usable_bytes
        result.fits = device <= hardware.usable_bytes
        result.fit = fit_verdict(span.low, span.high, hardware.usable_bytes)
        result.headroom_bytes = hardware.usable_bytes - device
        if hardware.in_use_bytes:
            result.notes.append(f"{hardware.in_use_bytes / 2**30:.1f} GiB of the GPU are in use by other processes")
    return result


def _kbit_upcast_note(arch: ModelArch, cfg: TrainConfig, attn: str, device: int) -> list[str]:
    """What k-bit preparation would add to a bitsandbytes QLoRA estimated without it, where it is modelled and
    material (1 %): the exports do not upcast, but a script following PEFT's QLoRA recipe does."""
    if (cfg.method != "qlora" or cfg.quant_type in PREQUANTIZED or cfg.kbit_upcast != "none" or cfg.zero
            or not cfg.under_autocast or cfg.stack not in ("auto", "transformers")):
        return []
    try:
        # validated (not model_copy): the config refuses the upcast where it is not modelled
        upcast = {kind: estimate(arch, TrainConfig(**{**cfg.model_dump(), "kbit_upcast": kind}), detail=False)
                  .peak_device_bytes - device for kind in ("all", "norms")}
    except (ValueError, AdvisorError):  # not modelled for this model or configuration
        return []
    if upcast["all"] < device / 100:
        return []
    return [f"a script that calls PEFT's prepare_model_for_kbit_training (its QLoRA recipe) keeps embeddings, norms "
            f"and lm_head in fp32, and the residual stream follows: +{upcast['all'] / 2**30:.2f} GiB per GPU "
            f"(--kbit-upcast all); TRL 0.7.5-0.25's fp32 norms: +{upcast['norms'] / 2**30:.2f} GiB (--kbit-upcast norms)"]


# the decoders whose fp32 stream under k-bit preparation the oracle checks (tests/test_oracle.py)
KBIT_UPCAST_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def kbit_upcast_modelled(arch: ModelArch, cfg: TrainConfig, attn: str) -> None:
    """Refuse k-bit preparation (TrainConfig.kbit_upcast) where its fp32 stream is not modelled: one line, exit 2."""
    if arch.model_type not in KBIT_UPCAST_FAMILIES or arch.moe or arch.vision or arch.linear_attention:
        raise UsageError(f"--kbit-upcast is modelled for dense text decoders ({', '.join(KBIT_UPCAST_FAMILIES)}), "
                         f"not {arch.model_type}", "estimate with --kbit-upcast none: that reads low for this run",
                         field="kbit_upcast", value=arch.model_type)
    if attn == "eager":
        raise UsageError("--kbit-upcast with eager attention is not modelled (its fp32 probabilities)",
                         "use --attn sdpa or flash", field="kbit_upcast", value=attn)
    if attention_masks(arch, cfg, attn)[0]:
        raise UsageError(f"--kbit-upcast with SDPA at {cfg.seq_len} tokens under {arch.name}'s {arch.sliding_window}-token "
                         "sliding window is not modelled (SDPA's mask and the GQA-repeated fp32 k/v)",
                         f"use --attn flash (the window in the kernel) or --seq-len under {arch.sliding_window}",
                         field="kbit_upcast", value=cfg.seq_len)


def fit_verdict(low: int, high: int, capacity: int) -> str:
    """fits: even the high end is under the card; tight: the card lies inside the range; does_not_fit."""
    return "fits" if high <= capacity else "tight" if low <= capacity else "does_not_fit"


@dataclass(frozen=True, slots=True)
class Peaks:
    """What the planner needs of an estimate, without the breakdown (a plain object: the planner makes
    hundreds a plan, and a pydantic model costs more to build than the numbers do)."""

    peak_device_bytes: int
    peak_device_high_bytes: int  # the range's high end: what the planner keeps under the card
    activation_bytes: int
    optimizer_state_bytes: int
    host_ram_bytes: int
    total_params: int
    trainable_params: int


def peaks(arch: ModelArch, cfg: TrainConfig, hardware: Hardware | None = None, calibration=None) -> Peaks:
    """The device peak of one configuration and the terms the planner's rules and throughput read."""
    return estimate(arch, cfg, hardware, detail=False, calibration=calibration)


def _run_ends(per_layer: list[int]) -> list[int]:
    """The first and last layer of every run of layers that save the same bytes."""
    last = len(per_layer) - 1
    if per_layer.count(per_layer[-1]) >= last:  # the usual case: every layer after the first alike
        return sorted({0, min(1, last), last})
    ends = {0, last}
    for l in range(1, len(per_layer)):
        if per_layer[l] != per_layer[l - 1]:
            ends.update((l - 1, l))
    return sorted(ends)


def _autocast_cache(arch: ModelArch, cfg: TrainConfig, lora_autocast: bool) -> tuple[int, int]:
    """16-bit copies autocast makes of fp32 weights: (one layer's, lm_head's).  torch's autocast caches the cast
    of a leaf tensor that requires grad until the autocast region exits (aten/src/ATen/autocast_mode.cpp
    cached_cast)."""
    from ..models.params import layer_linears, layers_holding

    if cfg.master_weights:
        specs = [(spec, spec.per_layer * rounded(2 * spec.weight_params)) for spec in layer_linears(arch)]
        head = rounded(2 * arch.vocab_size * arch.hidden_size)
    elif lora_autocast:
        # lora_A (r x in) and lora_B (out x r) of each adapted nn.Linear; PEFT's fused-expert adapters are cast
        # by PEFT itself (a plain .to), which autocast does not cache
        r = cfg.rank
        specs = [(spec, spec.per_layer * (rounded(2 * r * spec.in_features) + rounded(2 * r * spec.out_features)))
                 for spec in lora_linears(arch, cfg) if spec.lora_rank_multiplier == 1]
        head = 0
    else:
        return 0, 0
    # a hybrid's (Qwen3.5) mixers differ by layer kind: their copies averaged over the layers
    per_layer = sum(size * layers_holding(arch, spec.kind) for spec, size in specs) // arch.num_layers
    return per_layer, head


# The chunked loss is TRL's fused LM head as it runs on a GPU (trl/trainer/utils.py add_fused_lm_head ->
# trl/kernels/chunked_logprob.py, Triton path): one [token tile x vocab chunk] logits buffer in the compute dtype,
# fp32 per-token statistics, never the full logits.  The oracle traces the same allocations (verify/step.py).
TOKEN_TILE = 4096  # chunked_logprob.py TOKEN_CHUNK_SIZE
VOCAB_CHUNK = 32768  # trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
TILE_STATS = 6  # fp32 per-token vectors the forward keeps (statistics and outputs; verify/step.py lists them)


def tiled_loss_region(arch: ModelArch, cfg: TrainConfig, a: int, head_trains: bool, stream: int) -> tuple[int, int]:
    """Forward and backward peak of the tiled loss: the scored positions' hidden states are copied
    (hidden_states[labels != -100]) and saved; forward adds the statistics and one tile buffer; backward the
    input gradient, the tile buffer again, one tile x hidden product, and lm_head's fp32 gradient when it trains."""
    n, h, V = cfg.micro_batch * (cfg.seq_len - 1), arch.hidden_size, arch.vocab_size
    rows, cols = min(n, TOKEN_TILE), min(V, VOCAB_CHUNK)
    # the copy is in the stream's dtype; an fp32 copy (TrainConfig.kbit_upcast) is cast to 16 bit for the tiles
    copy, buf = rounded(n * h * stream), rounded(rows * cols * a)
    cast = rounded(n * h * a) if stream != a else 0
    hidden_alive = 0 if head_trains else rounded(cfg.tokens * stream * h)  # the norm's output, until the head is done
    forward = hidden_alive + copy + cast + TILE_STATS * rounded(n * FP32) + buf
    held = copy + rounded(n * FP32) + copy  # the saved copy, the log-sum-exp, the input gradient
    backward = held + buf + rounded(rows * h * a)
    if head_trains:  # lm_head's gradient accumulates in fp32 and is handed back in its own dtype
        # (chunked_logprob.py backward returns ``grad_weight.to(weight.dtype)`` while its locals mm_buf / tile, the
        # tile buffer, are still alive)
        weight_grad = rounded(V * h * FP32)
        backward = max(backward + weight_grad + rounded(cols * h * a) + rounded(cols * h * FP32),
                       held + weight_grad + rounded(V * h * a) + buf)
    return forward, backward


def loss_region(arch: ModelArch, cfg: TrainConfig, a: int, head_trains: bool, stream: int) -> tuple[int, int]:
    """Peak bytes of the logits/loss region in the forward and in the backward pass.  ``stream``: bytes per element
    of the final norm's output (the residual stream's dtype)."""
    if cfg.loss == "chunked":
        return tiled_loss_region(arch, cfg, a, head_trains, stream)
    T, V = cfg.tokens, arch.vocab_size
    tv = T * V
    softcap = rounded(tv * a) if arch.final_logit_softcap else 0
    hidden_alive = 0 if head_trains else rounded(cfg.tokens * stream * arch.hidden_size)
    # the loss's ``logits.float()`` copies 16-bit logits; on fp32 logits it is the same tensor (no copy)
    upcast = rounded(tv * FP32) if a != FP32 else 0
    forward = rounded(tv * a) + upcast + rounded(tv * FP32) + softcap + hidden_alive
    if cfg.loss == "shifted":
        # transformers before 4.49: ``logits[..., :-1, :].contiguous()`` of the fp32 logits, alive with them at the
        # log-softmax, which reads s - 1 positions per sequence (one sequence: the slice is contiguous already and
        # .contiguous() copies nothing); in the backward the slice's gradient is a new zero-filled tokens x vocab
        # tensor, made after the log-softmax's own gradients are released
        shifted = rounded(cfg.micro_batch * (cfg.seq_len - 1) * V * FP32)
        forward += (shifted if cfg.micro_batch > 1 else 0) + shifted - rounded(tv * FP32)
        return forward, 3 * shifted + softcap
    backward = 3 * rounded(tv * FP32) + softcap  # the log-softmax output, its gradient and its input's gradient
    return forward, backward



def _components(arch, cfg, pb, gpu, opt_formula, activations, first_layer, loss_fwd, loss_bwd, over, per_layer):
    full = cfg.method == "full"
    weights16 = pb.frozen_16bit + (pb.trainable if full else 0)
    # the share of the sharded (or offloaded) parameters on this GPU; what is not a parameter stays whole
    whole = min(pb.not_parameters, gpu.params)
    shard = (gpu.params - whole) / (pb.total - whole) if pb.total > whole else 1.0
    return [
        Component(name="weights", label="weights", bytes=int(weights16 * shard),
                  formula="params x bytes/param (16-bit unless quantized)",
                  inputs={"params": pb.total_params, "bytes_per_param": 4 if cfg.master_weights else 2 if cfg.precision != "fp32" else 4}),
        Component(name="quantized", label="4-bit weights + constants", bytes=whole + int((pb.quantized - whole) * shard),
                  formula="0.5 B/param + absmax per 64-block (8-bit with double quant)",
                  inputs={"quant_type": cfg.quant_type, "double_quant": cfg.double_quant} if cfg.method == "qlora" else {}),
        Component(name="adapters", label="LoRA adapters (+ trained copies)", bytes=0 if full else int(pb.trainable * shard),
                  formula="r x (d_in + d_out) x 4 B per adapted Linear (fp32)",
                  inputs={"adapter_params": pb.adapter_params, "rank": cfg.rank, "targets": sorted(
                      s.name for s in lora_linears(arch, cfg))} if not full else {}),
        Component(name="gathered_params", label="gathered params (ZeRO-3/FSDP)", bytes=gpu.gathered,
                  formula="2 layers gathered whole + embeddings", inputs={"largest_layer_params": pb.largest_layer_params}),
        Component(name="gradients", label="gradients", bytes=gpu.grads + gpu.grad_buckets + gpu.held_buffers,
                  formula="trainable params x their dtype"
                  + (" (+ communication buckets)" if gpu.grad_buckets or gpu.held_buffers else ""),
                  inputs={"trainable_params": pb.trainable_params}),
        Component(name="optimizer_states", label="optimizer states", bytes=gpu.states, formula=opt_formula,
                  inputs={"optimizer": cfg.optimizer, "sharding": gpu.formula}),
        Component(name="optimizer_temporaries", label="optimizer step temporaries", bytes=gpu.step_temporaries,
                  formula="foreach AdamW: one temporary the size of the trainable params"),
        Component(name="activations", label="saved activations", bytes=activations,
                  formula=("layer inputs kept by checkpointing + one layer recomputed" if cfg.grad_ckpt
                           else "sum over layers of saved bytes/token x tokens"),
                  inputs={"tokens": cfg.tokens, "layers": arch.num_layers, "per_layer_bytes": per_layer[-1],
                          "saved_per_token_first_layer": first_layer}),
        Component(name="logits_loss", label="logits and loss", bytes=max(loss_fwd, loss_bwd),
                  formula="fp32 logits, log-softmax and its gradient: ~12 B x tokens x vocab",
                  inputs={"tokens": cfg.tokens, "vocab": arch.vocab_size, "loss": cfg.loss}),
        Component(name="cublas_workspace", label="cuBLAS workspaces", bytes=over.workspace,
                  formula="2 x 8.125 MiB (32 MiB on Hopper)"),
        Component(name="allocator_fragmentation", label="allocator fragmentation", bytes=over.fragmentation,
                  formula="max(5% of allocated, the cached segments of the loss's fp32 blocks); default allocator"
                          + ("; under DeepSpeed ZeRO-2 at least the first step's cache, which its flat fp32 "
                             "partitions cannot reuse" if cfg.zero == 2 else "")),
        Component(name="cuda_context", label="CUDA context + outside torch", bytes=over.context + over.outside_torch,
                  formula="768 MiB context (+ NCCL: 556 MiB for the first communicator on one GPU, 1 GiB with "
                          "several, 390 MiB each further one; + paged optimizer states)"),
    ]


def _notes(arch: ModelArch, cfg: TrainConfig, attn: str) -> list[str]:
    notes = [f"derived estimate ({arch.model_type} is not in the torch-free model): shapes from {arch.derived_from}"] \
        if arch.derived_from else []
    if arch.dropout:
        notes.append("config.json turns dropout on (" + ", ".join(arch.dropout) + "): the memory model counts no "
                     "dropout; its masks keep about one byte per activation element they touch while training "
                     "(more with eager attention). Fine-tuning recipes usually set it to 0")
    if cfg.seq_len > arch.max_position_embeddings:
        notes.append(f"seq len {cfg.seq_len} exceeds the model's max positions {arch.max_position_embeddings}")
    if attn == "eager" and cfg.attn == "auto":
        notes.append(f"{arch.model_type} runs eager attention by default (s x s scores per head); --attn flash avoids them")
    if cfg.optimizer == "paged_adamw_8bit":
        notes.append("paged optimizer states live in unified memory: counted at device level, not in torch's pool")
    if cfg.fsdp and cfg.offload == "none" and cfg.method != "qlora":
        notes.append("FSDP2 as accelerate wraps it (embedding, layers, [norm, lm_head]) is checked by the sharded "
                     "oracle (advisor/verify/sharded.py)")
    elif cfg.gpus > 1 or cfg.offload != "none":
        notes.append("DeepSpeed / DDP buffers and offload follow the frameworks' sources and defaults; "
                     "no oracle traces them (their model states are checked against DeepSpeed's own estimator)")
    if arch.vision is not None:
        v = arch.vision
        images = image_inputs(arch, cfg, strict=False)
        if images.images:
            resized = (f"; images of {cfg.image_size} px are resized to {v.image_size} x {v.image_size} by the processor"
                       if cfg.image_size and cfg.image_size != v.image_size else "")
            notes.append(f"images: {images.images} per sequence, {images.tokens} image tokens counted inside seq len "
                         f"{cfg.seq_len} ({v.tokens_per_image} per image after pooling {v.patches_per_image} patches)"
                         f"{resized}")
        notes.append("vision tower and projector loaded and frozen (not adapted, not trained); LoRA targets the "
                     "language model only" + ("" if images.images else "; text-only batches do not run the tower"))
    if arch.moe is not None:
        notes.append("MoE activations assume balanced top-k routing")
        if cfg.method in ("qlora", "lora8bit"):
            from ..models.params import count_params, expert_params_per_layer

            share = arch.num_layers * expert_params_per_layer(arch) / count_params(arch).total
            notes.append(f"bitsandbytes quantizes nn.Linear layers only (transformers replace_with_bnb_linear): the fused "
                         f"expert tensors ({share:.0%} of the params) and the routers stay 16-bit; counted so")
        if cfg.uses_adapters and any(spec.name.startswith("experts.") for spec in lora_linears(arch, cfg)):
            notes.append("PEFT adapts the fused expert tensors (target_parameters) with rank r x experts and merges "
                         "W + B·A of each adapted expert stack every forward: one 16-bit copy per layer is kept")
    if arch.linear_attention is not None:
        kinds = arch.layer_types[:arch.num_layers] if arch.layer_types else ()
        linear = sum(1 for t in kinds if t == "linear_attention")
        notes.append(f"{linear} of {arch.num_layers} layers are Gated DeltaNet linear attention, modelled as transformers' "
                     "torch fallbacks run them (torch_chunk_gated_delta_rule in fp32, chunks of 64, the conv1d reference; "
                     "what the CPU oracle traces; linear in seq len): an upper bound on a GPU with the "
                     "flash-linear-attention and causal-conv1d kernels, whose ChunkGatedDeltaRuleFunction keeps only "
                     "q, k, v, g, beta, the l2-norm inverses and the chunk matrix A and recomputes the states in backward")
    if arch.attention_sinks and attn == "flash":
        notes.append("gpt-oss with flash attention needs a kernel that takes the sinks (vllm-flash-attn3 or FA4; "
                     "FlashAttention-2 drops them): modelled like flash, not checked by the oracle (CPU has no such kernel)")
    if arch.checkpoint_quant == "mxfp4":
        notes.append("the checkpoint's MXFP4 experts are dequantized to bf16 for training (transformers' Mxfp4HfQuantizer "
                     "is not trainable; load with Mxfp4Config(dequantize=True)): counted as 16-bit")
        if cfg.method in ("qlora", "lora8bit"):
            notes.append("transformers refuses a BitsAndBytesConfig on the MXFP4 checkpoint (quantizers/auto.py "
                         "merge_quantization_configs): load a bf16 copy; bitsandbytes then quantizes only the "
                         "attention Linears, so this saves little over LoRA")
    if cfg.method == "qlora" and cfg.quant_type in PREQUANTIZED:
        notes.append(f"{cfg.quant_type.upper()} base: packed 4-bit weights, int32 zeros and fp16 scales per 128-group "
                     "as the checkpoint stores them (exact); the kernel's dequantized weight is modelled like "
                     "bitsandbytes' (one 16-bit weight at a time); GPTQ/AWQ kernels compute in fp16 and are not traced "
                     "by the oracle")
    if cfg.method == "lora8bit":
        notes.append("8-bit base (LLM.int8): weights exact, activations modelled like QLoRA; not checked by the oracle")
    if cfg.optimizer in ("adamw_8bit", "paged_adamw_8bit", "adafactor"):
        notes.append(f"{cfg.optimizer}: states from the implementation's layout; the dry run cannot trace its step")
    if cfg.loss == "chunked":
        notes.append("chunked loss: TRL's fused LM head as it runs on a GPU (one logits tile, never the full "
                     "logits), traced by the oracle; Liger's fused linear cross-entropy (axolotl, LLaMA-Factory) "
                     "holds about as little")
    return notes
