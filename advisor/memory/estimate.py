"""estimate(arch, train_config, hardware) -> MemoryEstimate.

The peak of a training step is not the sum of its parts: weights and optimizer states live all the time,
saved activations grow through the forward pass and shrink through the backward pass while gradients
grow, and the optimizer step needs gradients, states and its own temporaries but no activations.  So the
model walks the step in order (forward layer by layer, the loss, backward layer by layer, the optimizer
step) and takes the largest live total in each phase.
"""

from __future__ import annotations

from ..models.arch import ModelArch
from .activations import FP32, attention_scores_bytes, layer_plan, layer_saved, layer_transients
from .config import TrainConfig
from .result import Component, MemoryEstimate, PhasePeaks
from .states import gradient_timeline, optimizer_bytes, param_bytes, rounded
from .targets import effective_attention, lora_linears


def estimate(arch: ModelArch, cfg: TrainConfig, hardware: object | None = None) -> MemoryEstimate:
    pb = param_bytes(arch, cfg)
    opt = optimizer_bytes(arch, cfg, pb)
    attn = effective_attention(arch, cfg)
    lora_names = frozenset(spec.name for spec in lora_linears(arch, cfg))
    plan = layer_plan(arch, cfg, lora_names, eager=attn == "eager")
    a = plan.act_bytes
    T, V, h, L = cfg.tokens, arch.vocab_size, arch.hidden_size, arch.num_layers
    full = cfg.method == "full"
    head_trains = full or cfg.train_embeddings

    # --- saved activations, layer by layer (what requires grad changes after the first layer)
    in_rg = full or cfg.train_embeddings
    per_layer: list[int] = []
    first_items = None
    for _ in range(L):
        saved, out_rg = layer_saved(arch, plan, in_rg)
        layer_bytes = rounded(T * saved.total) if saved.total else 0
        layer_bytes += attention_scores_bytes(arch, cfg, saved)
        per_layer.append(layer_bytes)
        first_items = first_items or saved.items
        in_rg = out_rg
        if len(per_layer) >= 2 and per_layer[-1] == per_layer[-2]:
            per_layer += [per_layer[-1]] * (L - len(per_layer))  # the rest repeat
            break
    acts_total = sum(per_layer)
    ckpt_input = rounded(T * a * h)  # what a checkpointed layer keeps: its input hidden states

    # --- saved outside the layers: RoPE cos/sin (shared), the final norm, lm_head's input
    shared = 2 * rounded(cfg.seq_len * arch.head_dim * a)  # position ids are (1, s): shared by the batch
    final = 0
    if in_rg:  # the final norm: fp32 input and rsqrt; the normalized input when its weight trains
        final += rounded(T * FP32 * h) + rounded(T * FP32)
    if full:
        final += rounded(T * (FP32 if arch.model_type in ("gemma", "gemma2") else a) * h)
    if head_trains:
        final += rounded(T * a * h)  # lm_head's input, for its weight gradient

    # --- the loss region: bf16 logits, their fp32 copy and the log-softmax output (forward);
    # the log-softmax output, its gradient and the gradient of the input (backward)
    tv = T * V
    softcap_saved = rounded(tv * a) if arch.final_logit_softcap else 0
    # The final hidden states stay referenced through the loss; saved anyway when lm_head trains.
    hidden_alive = 0 if head_trains else rounded(T * a * h)
    loss_fwd = rounded(tv * a) + 2 * rounded(tv * FP32) + softcap_saved + hidden_alive
    loss_bwd = 3 * rounded(tv * FP32) + softcap_saved

    steady = pb.total + opt.states
    grads = gradient_timeline(arch, cfg, pb)

    tr = layer_transients(arch, plan, cfg, quantized=cfg.method == "qlora")

    # --- forward: activations pile up; the peak is in the loss region at the end, or inside the last
    # layer (its MLP) when the vocabulary is small
    stored_acts = L * ckpt_input if cfg.grad_ckpt else sum(per_layer)
    if cfg.grad_ckpt:
        in_layer = L * ckpt_input + tr.forward_unsaved
    else:
        in_layer = stored_acts + tr.forward
    forward = steady + shared + max(stored_acts + final + loss_fwd, in_layer)

    # --- backward: starts at the loss with everything saved; then layer by layer activations go and
    # gradients come; it ends with every gradient (and, for tied embeddings, two partial gradients
    # summed into the shared weight's).
    candidates = [stored_acts + shared + final + loss_bwd]
    grads_so_far = grads.head
    for l in reversed(range(L)):
        grads_so_far += grads.per_layer
        if cfg.grad_ckpt:
            # inputs of layers <= l are still held; layer l is recomputed (with saving), then run backward
            held = (l + 1) * ckpt_input + per_layer[l] + rounded(T * a * h)
            candidates.append(held + shared + grads_so_far - grads.per_layer + max(tr.forward, tr.backward))
        else:
            candidates.append(sum(per_layer[: l + 1]) + shared + grads_so_far - grads.per_layer + tr.backward)
        # the layer's end: its weight grads exist, its activations are gone, the input norm runs backward
        below = l * ckpt_input if cfg.grad_ckpt else sum(per_layer[:l])
        candidates.append(below + shared + grads_so_far + tr.norm_backward)
    candidates.append(grads.total + grads.embedding_transient)
    backward = steady + max(candidates)
    optimizer = steady + grads.total + opt.step_temporaries

    phases = PhasePeaks(forward=forward, backward=backward, optimizer=optimizer)
    peak_phase = max(("forward", "backward", "optimizer"), key=lambda p: getattr(phases, p))
    peak = getattr(phases, peak_phase)
    components = [
        Component(name="weights", label="weights (16-bit)", bytes=pb.frozen_16bit + (pb.trainable if full else 0),
                  formula="params x bytes/param", inputs={"params": pb.total_params}),
        Component(name="quantized", label="4-bit weights + constants", bytes=pb.quantized, formula="0.5 B/param + absmax"),
        Component(name="adapters", label="trainable adapters", bytes=0 if full else pb.trainable,
                  formula="r x (d_in + d_out) x 4 B per adapted Linear", inputs={"params": pb.adapter_params}),
        Component(name="gradients", label="gradients", bytes=grads.total, formula="trainable params x their dtype"),
        Component(name="optimizer_states", label="optimizer states", bytes=opt.states, formula=opt.formula),
        Component(name="optimizer_temporaries", label="optimizer step temporaries", bytes=opt.step_temporaries, formula=opt.formula),
        Component(name="activations", label="saved activations", bytes=stored_acts + shared + final,
                  formula="sum over layers of bytes/token x tokens", inputs={"tokens": T, "first_layer": first_items or {}}),
        Component(name="logits_loss", label="logits and loss", bytes=max(loss_fwd, loss_bwd),
                  formula="~12 B x tokens x vocab at the loss peak", inputs={"tokens": T, "vocab": V}),
    ]
    return MemoryEstimate(
        components=components,
        phases=phases,
        peak_phase=peak_phase,
        peak_allocated_bytes=peak,
        peak_reserved_bytes=peak,
        peak_device_bytes=peak,
        host_ram_bytes=0,
        total_params=pb.total_params,
        trainable_params=pb.trainable_params,
        tokens_per_micro_batch=T,
    )
