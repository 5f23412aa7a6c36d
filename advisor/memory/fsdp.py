"""FSDP2 (torch.distributed.fsdp.fully_shard) on one GPU of N: what each rank holds, buffer by buffer.

Checked against the sharded oracle (verify/sharded.py: one rank of a real fully_shard job on fake tensors
under the fake process group).  The wrapping is accelerate's TRANSFORMER_BASED_WRAP for FSDP2: one unit per
decoder layer, then the root (embeddings, final norm, lm_head), every unit with reshard_after_forward=True.
Sources are torch 2.13's torch/distributed/fsdp/_fully_shard/ files (named per term below).

Per parameter, not per flat buffer (``_fsdp_param.py`` FSDPParam._init_sharded_param): dim 0 is padded to a
multiple of N and every rank allocates its own ceil(dim0 / N) rows, so a rank holds
``ceil(dim0 / N) * rest`` elements of every tensor, not ``numel / N``.  Rank 0 holds the largest share (the
optimizer states follow the unpadded local rows, which are the full ceil rows on rank 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..models.arch import ModelArch
from ..models.params import layer_linears
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


@dataclass(frozen=True)
class FsdpTerms:
    n: int
    layers: int
    root: FsdpUnit
    layer: FsdpUnit
    mixed: bool  # MixedPrecisionPolicy(param_dtype=16-bit): unsharded params are already 16-bit

    @property
    def params(self) -> int:
        return self.root.sharded + self.layers * self.layer.sharded

    @property
    def grads(self) -> int:
        return self.root.sharded_grads + self.layers * self.layer.sharded_grads

    @property
    def trainable_shard(self) -> int:
        return self.root.trainable_shard + self.layers * self.layer.trainable_shard


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
    """The root and one decoder-layer unit of FSDP2 over ``cfg.gpus`` ranks (cached on the fields they
    depend on: the planner asks for thousands of candidates that differ only in batch and sequence)."""
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
    vocab = arch.vocab_size
    embeds = 1 if arch.tie_word_embeddings else 2
    root = [t(vocab, vocab * h, full) for _ in range(embeds)] + [t(h, h, full)]
    if cfg.train_embeddings and not full:  # PEFT modules_to_save: trained copies next to the frozen originals
        root += [t(vocab, vocab * h, True) for _ in range(embeds)]
    pbytes = wbytes if mixed else None
    return FsdpTerms(n, arch.num_layers, _unit(root, n, pbytes, pbytes), _unit(layer, n, pbytes, pbytes), mixed)


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
    loss_saved: int  # what the loss keeps for backward (the log-softmax output)
    in_layer: int  # the forward's peak inside a layer (activations + transients + masks)
    tr_forward: int
    tr_backward: int
    tr_norm_backward: int
    head_grads: int  # lm_head (+ final norm) grads, unsharded
    embed_transient: int  # extra while the embedding grad is formed


def fsdp_phases(u: FsdpTerms, w: StepWalk) -> tuple[int, int]:
    """Forward and backward peaks of one rank (the optimizer step is the single-GPU one on shards).

    Forward, torch _fsdp_param_group.py: a unit's pre-forward all-gathers into one flat buffer
    (``foreach_all_gather``), copies out into per-param unsharded tensors (``foreach_all_gather_copy_out``,
    storage re-allocated by ``alloc_storage``), and FSDPParamGroup.wait_for_unshard keeps the flat buffer in
    ``comm_ctx.all_gather_state`` until the next unit's wait_for_unshard has copied out (implicit prefetch
    overlap): the previous buffer is dropped from the context before that copy-out, but the local
    ``prev_all_gather_state`` still references it until the function returns, so a copy-out holds
    three buffers: the previous unit's, its own and its unsharded params.  The root gathers first (embeddings,
    norm, lm_head) and stays unsharded through the whole forward (its post-forward is the last); a layer's
    unsharded params are freed at its post-forward (reshard_after_forward=True, ``free_storage``).  The
    last layer's flat buffer stays in ``all_gather_state`` until the root's post-forward, through the loss.
    """
    L, R, lay = u.layers, u.root, u.layer
    U = lay.unsharded
    acts = w.shared + w.steady + R.unsharded
    below_last = (L - 1) * w.ckpt_input if w.grad_ckpt else sum(w.per_layer[:-1])
    forward = max(
        # the first layer's copy-out: the root's flat buffer, the layer's buffer and unsharded params
        acts + R.gather + lay.gather + U + w.embed_out + w.masks,
        # a later layer's copy-out: the previous layer's buffer too
        acts + 2 * lay.gather + U + below_last + w.masks if L > 1 else 0,
        # inside a layer: its unsharded params and its flat buffer
        acts + lay.gather + U + w.in_layer,
        # the loss, after the layers: the last layer's flat buffer still held
        acts + lay.gather + w.stored_acts + w.final + w.loss_fwd + w.held_masks,
    )
    # Backward, _fsdp_param_group.py pre_backward / post_backward, _fsdp_collectives.py foreach_reduce:
    # - the root reshards after forward too, so its pre-backward (a hook on the loss) all-gathers it again
    #   with every activation still saved; in backward a flat buffer is freed right after its copy-out;
    # - FSDPParamGroup._backward_prefetch all-gathers the next layer (in backward order) while a layer runs;
    # - grads stay unsharded (full size, param_dtype) until their unit's post-backward: the root's, lm_head
    #   included, until the very end of backward;
    # - post_backward frees the unit's unsharded params, then copies its grads into a flat reduce-scatter
    #   input (N x padded shards, reduce_dtype) whose reference comm_ctx.reduce_scatter_states keeps until the
    #   next unit's post_backward (reduce_scatter_max_input_buffers = 1), and reduces into a flat output that
    #   becomes the unit's sharded grads (as_strided views; converted to the params' dtype if it differs).
    grad_rs = lay.reduce_in
    layer_done = lay.sharded_grads
    base = w.steady + R.unsharded + w.shared
    # the root's pre-backward re-gathers it, then prefetches the last layer, whose flat buffer waits (in
    # FSDPParamGroup._all_gather_result) through the loss's backward until that layer's pre-backward
    candidates = [
        base + R.gather + w.stored_acts + w.final + w.loss_saved + w.held_masks,
        base + lay.gather + w.stored_acts + w.final + w.loss_bwd + w.held_masks,
    ]
    prefix = [0]
    for b in w.per_layer:
        prefix.append(prefix[-1] + b)
    for l in range(L):
        prefetch = lay.gather if l > 0 else 0
        above = w.head_grads + (L - 1 - l) * layer_done + (grad_rs if l < L - 1 else 0)
        if w.grad_ckpt:
            held = (l + 1) * w.ckpt_input + w.per_layer[l] + w.embed_out
            mid = held + w.held_masks + above + max(w.tr_forward, w.tr_backward)
        else:
            mid = prefix[l + 1] + above + w.tr_backward
        below = l * w.ckpt_input if w.grad_ckpt else prefix[l]
        end = below + (w.held_masks if l else 0) + above + lay.grads + w.tr_norm_backward
        # the reduce: params resharded, the previous reduce input dropped, this unit's input and output
        reduce = (below + (w.held_masks if l else 0) + w.head_grads + (L - 1 - l) * layer_done + lay.grads
                  + lay.reduce_in + lay.reduce_out + (layer_done if lay.sharded_grads != lay.reduce_out else 0))
        candidates += [base + prefetch + U + mid, base + prefetch + U + end, base + prefetch + reduce]
    # the root's backward ends with the embedding grad (every root grad unsharded, plus the embedding's
    # transient: tied, the two partial grads being summed); then the root's post_backward reshards its params,
    # drops the first layer's reduce input and reduce-scatters the root's grads
    all_layers = L * layer_done
    candidates.append(base + R.grads + w.embed_transient + all_layers + grad_rs)
    candidates.append(w.steady + w.shared + R.grads + all_layers + R.reduce_in + R.reduce_out)
    return forward, max(candidates)
