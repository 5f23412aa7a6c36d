"""FSDP2 (torch.distributed.fsdp.fully_shard) on one GPU of N: what each rank holds, buffer by buffer.

Checked against the sharded oracle (verify/sharded.py: one rank of the job traced on fake tensors under the fake
process group, sharded by accelerate's own ``fsdp2_prepare_model``).  The wrapping is what the exported
accelerate.yaml gets (export/launch.py: fsdp_version 2, TRANSFORMER_BASED_WRAP, reshard_after_forward true)
from accelerate 1.16's ``fsdp2_prepare_model`` (accelerate/utils/fsdp_utils.py), in this order:

- every decoder layer (``_no_split_modules``, ``fsdp2_prepare_auto_wrap_policy``), resharded after forward;
- the input embedding, untied only, resharded after forward;
- the tail ``[final norm, lm_head]`` (tied: ``[final norm, embedding, lm_head]``), ``reshard_after_forward=False``:
  gathered from its first use in the forward to its post-backward.  ``_find_final_norm`` looks for the norm
  among the children of ``getattr(model, model.base_model_prefix)``: on a PEFT model that is the CausalLM
  (whose children are ``model`` and ``lm_head``), so under LoRA the norm is not in the tail;
- the root (the whole model) with torch's default, which for the root is not to reshard
  (``_fully_shard.py`` fully_shard / ``_fsdp_state.py`` _lazy_init: a root's None becomes False): it holds
  whatever no other unit took (nothing under full fine-tuning, the final norm under LoRA).

Sources are torch 2.13's torch/distributed/fsdp/_fully_shard/ files (named per term below).

Per parameter, not per flat buffer (``_fsdp_param.py`` FSDPParam._init_sharded_param): dim 0 is padded to a
multiple of N and every rank allocates its own ceil(dim0 / N) rows, so a rank holds
``ceil(dim0 / N) * rest`` elements of every tensor, not ``numel / N``.  Rank 0 holds the largest share (the
optimizer states follow the unpadded local rows, which are the full ceil rows on rank 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from ..models.arch import ModelArch
from ..models.params import count_params, layer_linears
from .config import TrainConfig
from .states import DTYPE_BYTES, rounded
from .targets import lora_linears

FP32 = 4


@dataclass(frozen=True)
class _Tensor:
    dim0: int
    numel: int
    trainable: bool
    orig_bytes: int  # the sharded (stored) dtype

    def shard_numel(self, n: int) -> int:  # padded rows on one rank
        return -(-self.dim0 // n) * (self.numel // self.dim0)


@dataclass(frozen=True)
class FsdpUnit:
    """One fully_shard unit, seen from one rank."""

    sharded: int  # the rank's padded shard of every param (one allocation each)
    gather: int  # the flat all-gather output: N x the padded shards, in param_dtype (one allocation)
    unsharded: int  # the unsharded params: each param's padded full size in param_dtype
    grads: int  # unsharded grads autograd makes (each trainable param's unpadded size, param_dtype)
    reduce_in: int  # the flat reduce-scatter input: N x padded shards of the grads, in reduce_dtype
    reduce_out: int  # the flat reduce-scatter output in reduce_dtype (becomes the sharded grads)
    sharded_grads: int  # the sharded grads: the reduce output, flat, in the params' own dtype
    trainable_shard: int  # the rank's shards of the trainable params, one allocation each


_EMPTY = FsdpUnit(0, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class FsdpTerms:
    n: int
    layers: int
    root: FsdpUnit  # never resharded: what no other unit took (LoRA: the final norm; full: nothing)
    embed: FsdpUnit | None  # the untied input embedding, resharded after forward (None when tied)
    tail: FsdpUnit  # [final norm,] [embedding,] lm_head: reshard_after_forward=False
    layer: FsdpUnit
    mixed: bool  # MixedPrecisionPolicy(param_dtype=16-bit): unsharded params are already 16-bit
    tail_first: bool  # tied: the tail's forward starts at the embedding (its inputs need no grad)
    embed_grad: int  # the input embedding's unsharded grad (param_dtype), 0 when it does not train

    def _units(self) -> tuple[FsdpUnit, ...]:
        return self.root, self.embed or _EMPTY, self.tail

    @property
    def params(self) -> int:
        return sum(u.sharded for u in self._units()) + self.layers * self.layer.sharded

    @property
    def grads(self) -> int:
        return sum(u.sharded_grads for u in self._units()) + self.layers * self.layer.sharded_grads

    @property
    def trainable_shard(self) -> int:
        return sum(u.trainable_shard for u in self._units()) + self.layers * self.layer.trainable_shard


def _unit(tensors: list[_Tensor], n: int, param_bytes: int | None, reduce_bytes: int | None) -> FsdpUnit:
    def pbytes(t: _Tensor) -> int:  # MixedPrecisionPolicy.param_dtype, else the param's own dtype
        return param_bytes or t.orig_bytes

    train = [t for t in tensors if t.trainable]
    rbytes = reduce_bytes or (train[0].orig_bytes if train else 0)
    shard_grads = sum(t.shard_numel(n) for t in train)
    return FsdpUnit(
        sharded=sum(rounded(t.shard_numel(n) * t.orig_bytes) for t in tensors),
        gather=rounded(n * sum(t.shard_numel(n) * pbytes(t) for t in tensors)),
        unsharded=sum(rounded(n * t.shard_numel(n) * pbytes(t)) for t in tensors),
        grads=sum(rounded(t.numel * pbytes(t)) for t in train),
        reduce_in=rounded(n * shard_grads * rbytes) if train else 0,
        reduce_out=rounded(shard_grads * rbytes) if train else 0,
        sharded_grads=rounded(shard_grads * train[0].orig_bytes) if train else 0,
        trainable_shard=sum(rounded(t.shard_numel(n) * t.orig_bytes) for t in train),
    )


def fsdp_terms(arch: ModelArch, cfg: TrainConfig) -> FsdpTerms:
    """The root, embedding, tail and one decoder-layer unit of FSDP2 over ``cfg.gpus`` ranks (cached on the
    fields they depend on: the planner asks for thousands of candidates that differ only in batch and sequence)."""
    key = cfg.model_copy(update={"seq_len": 1, "micro_batch": 1, "grad_ckpt": False, "optimizer": "adamw",
                                 "attn": "auto", "loss": "standard"})
    return _fsdp_terms(arch, key)


@lru_cache(maxsize=1024)
def _fsdp_terms(arch: ModelArch, cfg: TrainConfig) -> FsdpTerms:
    n = cfg.gpus
    wbytes = DTYPE_BYTES[cfg.precision]
    # Mixed precision as exported (export/context.py ExportContext.autocast): accelerate upcasts trainable
    # params to fp32 and shards them so, with MixedPrecisionPolicy(param_dtype=reduce_dtype=16-bit)
    # (accelerate utils/fsdp_utils.py fsdp2_prepare_model, utils/dataclasses.py set_mixed_precision).
    # Pure 16-bit full fine-tuning: no policy, everything in the params' own 16-bit dtype.
    mixed = cfg.precision != "fp32" and (cfg.master_weights or cfg.method != "full")
    full = cfg.method == "full"
    frozen_bytes = FP32 if cfg.master_weights else wbytes
    train_bytes = FP32 if mixed else wbytes
    h = arch.hidden_size

    def t(dim0: int, numel: int, trainable: bool) -> _Tensor:
        return _Tensor(dim0, numel, trainable, train_bytes if trainable else frozen_bytes)

    layer: list[_Tensor] = [t(h, h, full) for _ in range(arch.norms_per_layer)]
    if arch.qk_norm:
        layer += [t(arch.head_dim, arch.head_dim, full)] * 2
    if arch.extra_layer_params:  # a derived model's other per-layer tensors (models/derive.py), as one
        layer.append(t(arch.extra_layer_params, arch.extra_layer_params, full))
    for spec in layer_linears(arch):
        for _ in range(spec.per_layer):
            layer.append(t(spec.out_features, spec.weight_params, full))
            if spec.bias:
                layer.append(t(spec.out_features, spec.out_features, full))
    if arch.moe is not None:
        ie, e = arch.moe.expert_intermediate_size, arch.moe.num_experts + arch.moe.shared_experts
        layer += [t(e, e * 2 * ie * h, full), t(e, e * h * ie, full)]
    for spec in lora_linears(arch, cfg):
        r = cfg.rank * spec.lora_rank_multiplier
        for _ in range(spec.per_layer):  # lora_A (r, in), lora_B (out, r)
            layer += [t(r, r * spec.in_features, True), t(spec.out_features, spec.out_features * r, True)]
    # Outside the layers, the units accelerate 1.16's fsdp2_prepare_model carves (module docstring).  PEFT's
    # modules_to_save copies (trained, next to the frozen originals) go with the module they wrap.
    vocab, tied, peft = arch.vocab_size, arch.tie_word_embeddings, cfg.method != "full"
    copy = cfg.train_embeddings and peft
    norm = [t(h, h, full)]
    embed = [t(vocab, vocab * h, full)] + ([t(vocab, vocab * h, True)] if copy else [])
    head = [] if tied else [t(vocab, vocab * h, full)] + ([t(vocab, vocab * h, True)] if copy else [])
    root = norm if peft else []  # _find_final_norm finds no norm on a PeftModel: it stays with the root
    root = root + ([t(arch.extra_params, arch.extra_params, full)] if arch.extra_params else [])  # derived: as one
    # a VLM's frozen tower and projector: sharded like the rest, gathered only while the tower runs (accelerate
    # wraps each SiglipEncoderLayer as a unit, _no_split_modules), so a text batch never gathers them; with images
    # one tower layer (~15 M params) is gathered at a time, left out.  Checked by the sharded oracle (text batch).
    tower = count_params(arch).vision
    vision = _unit([t(tower, tower, False)], n, None, None).sharded if tower else 0
    tail = ([] if peft else norm) + (embed if tied else head)
    pbytes = wbytes if mixed else None

    def unit(tensors: list[_Tensor]) -> FsdpUnit:
        return _unit(tensors, n, pbytes, pbytes) if tensors else _EMPTY

    embed_grad = rounded(vocab * h * (pbytes or train_bytes)) if full or copy else 0
    root_unit = unit(root)
    if vision:
        root_unit = replace(root_unit, sharded=root_unit.sharded + vision)
    return FsdpTerms(n, arch.num_layers, root_unit, None if tied else unit(embed), unit(tail), unit(layer),
                     mixed, tied, embed_grad)


@dataclass(frozen=True)
class StepWalk:
    """The single-GPU walk of one step (estimate.py), the activation side of every candidate below."""

    steady: int  # sharded params + optimizer states
    shared: int  # RoPE cos/sin
    final: int  # saved after the layers (final norm, lm_head input)
    stored_acts: int
    per_layer: list[int]
    ckpt_input: int
    grad_ckpt: bool
    masks: int
    held_masks: int
    embed_out: int  # the embedding's output (the first layer's input)
    loss_fwd: int
    loss_bwd: int
    logits_grad: int  # the 16-bit logits' gradient, what reaches lm_head's backward
    in_layer: int  # the forward's peak inside a layer (activations + transients + masks)
    tr_forward: int
    tr_backward: int
    tr_norm_backward: int


def _reduce(unit: FsdpUnit) -> int:
    """A unit's reduce-scatter (_fsdp_collectives.py foreach_reduce): the flat input and output in reduce_dtype,
    and, when the params' dtype differs (fp32 trainable params under a 16-bit policy), the sharded grads the
    output is converted into."""
    return unit.reduce_in + unit.reduce_out + (unit.sharded_grads if unit.sharded_grads != unit.reduce_out else 0)


def fsdp_phases(u: FsdpTerms, w: StepWalk) -> tuple[int, int]:
    """Forward and backward peaks of one rank (the optimizer step is the single-GPU one on shards).

    Forward, torch _fsdp_param_group.py: a unit's pre-forward all-gathers into one flat buffer
    (``foreach_all_gather``), copies out into per-param unsharded tensors (``foreach_all_gather_copy_out``,
    storage re-allocated by ``alloc_storage``), and FSDPParamGroup.wait_for_unshard keeps the flat buffer in
    ``comm_ctx.all_gather_state`` until the next unit's wait_for_unshard has copied out (implicit prefetch
    overlap): the previous buffer is dropped from the context before that copy-out, but the local
    ``prev_all_gather_state`` still references it until the function returns, so a copy-out holds three
    buffers: the previous unit's, its own and its unsharded params.  The last unit's buffer stays in
    ``all_gather_state`` until the root's post-forward (_fsdp_state.py FSDPState._post_forward), which runs
    after the loss (HF computes the loss inside the model's forward).

    Order of the units (accelerate fsdp2_prepare_model): the root (gathered at its pre-forward, kept: not
    resharded), then untied: the embedding (resharded at its post-forward), the layers (each resharded,
    ``free_storage``), the tail (gathered at the final norm, kept); tied: the tail first (its group's
    pre-forward hook fires at the embedding, _fsdp_state.py _register_group_forward_hooks), then the layers,
    the tail staying gathered through the whole forward and the last layer's buffer held to the loss.
    """
    L, R, E, T, lay = u.layers, u.root, u.embed, u.tail, u.layer
    U = lay.unsharded
    below_last = (L - 1) * w.ckpt_input if w.grad_ckpt else sum(w.per_layer[:-1])
    base = w.steady + w.shared + R.unsharded
    if E is None:  # tied: the tail gathered first, for the whole forward
        first = base + R.gather + T.gather + T.unsharded  # its copy-out (the root's buffer, if any, held)
        before, kept = T.gather, T.unsharded
    else:
        first = base + R.gather + E.gather + E.unsharded
        before, kept = E.gather, 0
    forward = max(
        first,
        # the first layer's copy-out: the previous unit's flat buffer, the layer's buffer and unsharded params
        base + kept + before + lay.gather + U + w.embed_out + w.masks,
        # a later layer's copy-out: the previous layer's buffer too
        base + kept + 2 * lay.gather + U + below_last + w.masks if L > 1 else 0,
        # inside a layer: its unsharded params and its flat buffer
        base + kept + lay.gather + U + w.in_layer,
        # untied: the tail's copy-out at the final norm, the last layer's buffer still referenced
        base + lay.gather + T.gather + T.unsharded + w.stored_acts + w.embed_out + w.masks if E is not None else 0,
        # the loss: the tail gathered; the last unit's flat buffer (the tail's, or tied the last layer's) held
        base + T.unsharded + (lay.gather if E is None else T.gather) + w.stored_acts + w.final + w.loss_fwd
        + w.held_masks,
    )
    # Backward, _fsdp_param_group.py pre_backward / post_backward / _backward_prefetch, _fsdp_state.py
    # _pre_backward / _root_post_backward_final_callback, _fsdp_collectives.py foreach_reduce:
    # - the root and the tail were not resharded: their pre-backward unshard is a no-op, and the root's
    #   prefetch (the unit before it in post_forward_order: the tail) too.  The tail's pre-backward hook sits on
    #   its output (the logits): once the logits' grad exists it prefetches the last layer (the flat buffer
    #   waits in FSDPParamGroup._all_gather_result until that layer's pre-backward copies out and frees it);
    # - each layer's pre-backward prefetches the next one in backward order; the first layer's prefetches the
    #   untied embedding, which under LoRA nothing waits for (its output needs no grad, so no pre-backward
    #   hook): that buffer stays until finalize_backward in the root's final callback;
    # - a unit's post-backward (RegisterPostBackwardFunction on the inputs of its first forward) frees its
    #   unsharded params, then copies its grads into a flat reduce-scatter input (N x padded shards,
    #   reduce_dtype) whose reference comm_ctx.reduce_scatter_states keeps until the next unit's post-backward
    #   (reduce_scatter_max_input_buffers = 1), and reduces into a flat output that becomes the unit's sharded
    #   grads (as_strided views; converted to the params' dtype if it differs).  Untied, the tail's fires after
    #   the final norm's backward (full: with the lm_head grad; LoRA: no grads, it only frees lm_head);
    #   tied, its first forward input is input_ids (no grad), so it runs in the final callback, the whole
    #   embedding grad unsharded until then; the embedding's likewise (input_ids).
    grad_rs = lay.reduce_in
    layer_done = lay.sharded_grads
    tail_late = u.tail_first
    held_tail = T.unsharded + T.grads if tail_late else T.sharded_grads
    head = w.stored_acts + w.final + w.held_masks
    candidates = [
        # the loss's backward: nothing prefetched yet
        base + T.unsharded + head + w.loss_bwd,
        # lm_head's backward: the last layer prefetched, the logits' grad in, the tail's grads out
        base + T.unsharded + lay.gather + head + w.logits_grad + T.grads,
    ]
    if not tail_late and T.grads:  # the tail's post-backward after the final norm's
        candidates.append(base + lay.gather + w.stored_acts + w.held_masks + w.embed_out + T.grads + _reduce(T))
    prefix = [0]
    for b in w.per_layer:
        prefix.append(prefix[-1] + b)
    for l in range(L):
        prefetch = lay.gather if l > 0 else (E.gather if E is not None else 0)
        rs = grad_rs if l < L - 1 else (0 if tail_late else T.reduce_in)
        done = held_tail + (L - 1 - l) * layer_done
        above = done + rs
        if w.grad_ckpt:
            held = (l + 1) * w.ckpt_input + w.per_layer[l] + w.embed_out
            mid = held + w.held_masks + above + max(w.tr_forward, w.tr_backward)
        else:
            mid = prefix[l + 1] + above + w.tr_backward
        below = l * w.ckpt_input if w.grad_ckpt else prefix[l]
        end = below + (w.held_masks if l else 0) + above + lay.grads + w.tr_norm_backward
        # the reduce: params resharded, the previous reduce input dropped, this unit's input and output
        reduce = below + (w.held_masks if l else 0) + done + lay.grads + _reduce(lay)
        candidates += [base + prefetch + U + mid, base + prefetch + U + end, base + prefetch + reduce]
    all_layers = L * layer_done
    if E is not None and E.grads:
        # the embedding's pre-backward copies out the buffer the first layer prefetched, its backward forms
        # the grad; its post-backward (final callback) drops the first layer's reduce input and reduces it
        candidates += [
            base + E.gather + E.unsharded + all_layers + held_tail + grad_rs + w.embed_out,
            # (the grad of the embedding's output is still alive while embedding_dense_backward runs)
            base + E.unsharded + E.grads + w.embed_out + all_layers + held_tail + grad_rs,
            base + E.grads + _reduce(E) + all_layers + held_tail,
        ]
    if tail_late:
        # the embedding's backward forms its partial grad (embedding_dense_backward) and autograd adds it to
        # lm_head's (AccumulateGrad: a third tensor, the sum), all in param_dtype (the unsharded weight's); the
        # tail's post-backward (final callback) reshards it, drops the first layer's reduce input, reduces
        candidates += [
            base + T.unsharded + T.grads + 2 * u.embed_grad + all_layers + grad_rs,
            base + T.grads + _reduce(T) + all_layers,
        ]
    return forward, max(candidates)
