"""One training step, as the HF Trainer runs it.  Shared by the real verification run and the dry run."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

from ..memory.config import TrainConfig
from ..memory.estimate import TILE_STATS, TOKEN_TILE, VOCAB_CHUNK


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer as planned.  ``foreach=True`` mimics the GPU default (CPU defaults to the loop)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9, foreach=True)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-5, foreach=True)
    import bitsandbytes as bnb

    if cfg.optimizer == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=1e-5)
    return bnb.optim.PagedAdamW8bit(params, lr=1e-5)


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   autocast_dtype: torch.dtype | None = None, extra: dict | None = None) -> torch.Tensor:
    """The model's own loss (HF ForCausalLMLoss: fp32 logits).  Returning only the loss drops the
    output object, and with it the logits, before backward, as the HF Trainer does.  With
    ``autocast_dtype`` (mixed precision over fp32 master weights) the forward runs under autocast.  ``extra``:
    the batch's other model inputs (a vision-language model's pixel_values and token_type_ids)."""
    extra = extra or {}
    if getattr(model, "tiled_loss", False):  # a chunked-loss plan (build.py): TRL's tiled LM head
        return tiled_causal_lm_loss(model, input_ids, labels, autocast_dtype, extra)
    context = torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with context:
        if getattr(model, "shifted_loss", False):  # transformers before 4.49 (TrainConfig.loss "shifted")
            # the model's forward computed this loss with its 16-bit logits still a local (held here the same way)
            logits = model(input_ids=input_ids, **extra).logits
            return shifted_causal_lm_loss(logits, labels)
        return model(input_ids=input_ids, labels=labels, **extra).loss


def shifted_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers 4.46-4.48's ForCausalLMLoss (loss/loss_utils.py; the models' forward inlined the same before):
    the logits upcast to fp32, then shifted into a contiguous copy, where 4.49 on pads the labels instead."""
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return nn.functional.cross_entropy(shift_logits.view(-1, shift_logits.shape[-1]), shift_labels.view(-1),
                                       ignore_index=-100)


# The chunked loss as the exported job runs it on a GPU: TRL's fused LM head (trl/trainer/utils.py
# add_fused_lm_head -> trl/kernels/chunked_logprob.py _ChunkedLogProbFunction, Triton path).  On CUDA its
# kernels read one [token tile x vocab chunk] buffer of logits (mm_buf, the compute dtype) and keep per-token
# running statistics in registers; TRL's CPU fallback computes the same with torch ops that allocate several
# fp32 tiles, which a CPU trace would wrongly count.  TiledNLL allocates what the GPU path allocates: the
# buffer, fp32 per-token statistics, and in backward the input gradient (and lm_head's, when it trains).
# The tile sizes and per-token vectors are TRL's (memory/estimate.py names their sources): TILE_STATS fp32
# vectors of the forward are running max, sum exp, x-sum-exp (entropy), max before the target (is_top1), the
# target logit and the log-prob output; three of them carry this computation, the rest are allocated as TRL does.


class TiledNLL(torch.autograd.Function):
    """Mean negative log-likelihood of ``labels`` under ``hidden @ weight.T``, tile by tile."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, vocab = hidden.shape[0], weight.shape[0]
        stats = [torch.zeros(n, dtype=torch.float32, device=hidden.device) for _ in range(TILE_STATS)]
        lse, target, total = stats[0].fill_(-torch.inf), stats[1], stats[2]  # running max, target logit, sum exp
        buf = torch.empty(min(n, TOKEN_TILE), min(vocab, VOCAB_CHUNK), dtype=hidden.dtype, device=hidden.device)
        for rows, cols, tile in _tiles(hidden, weight, buf):
            local, inside = _local_targets(labels[rows], cols)
            target[rows] = torch.where(inside, tile.gather(1, local[:, None]).squeeze(1).float(), target[rows])
            new = torch.maximum(lse[rows], tile.amax(-1).float())
            total[rows] = total[rows] * torch.exp(lse[rows] - new) + _sum_exp(tile, new)
            lse[rows] = new
        lse.add_(torch.log(total))
        del buf
        ctx.save_for_backward(hidden, weight, labels, lse)
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        n = hidden.shape[0]
        scale = (grad / n).float()
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                       if ctx.needs_input_grad[1] else None)
        buf = torch.empty(min(n, TOKEN_TILE), min(weight.shape[0], VOCAB_CHUNK), dtype=hidden.dtype,
                          device=hidden.device)
        for rows, cols, tile in _tiles(hidden, weight, buf):
            # dlogits = (softmax - onehot(target)) x scale, written over the buffer as the kernel does
            tile.sub_(lse[rows, None].to(tile.dtype)).exp_().mul_(scale.to(tile.dtype))
            local, inside = _local_targets(labels[rows], cols)
            tile.scatter_add_(1, local[:, None], -(inside.to(tile.dtype) * scale.to(tile.dtype))[:, None])
            grad_hidden[rows] += tile @ weight[cols]
            if grad_weight is not None:
                grad_weight[cols] += (tile.t() @ hidden[rows]).float()
        del buf
        return grad_hidden, (grad_weight.to(weight.dtype) if grad_weight is not None else None), None


def _tiles(hidden: torch.Tensor, weight: torch.Tensor, buf: torch.Tensor):
    """(token rows, vocab columns, the logits of that tile in ``buf``), the tile computed into the buffer."""
    n, vocab = hidden.shape[0], weight.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        rows = slice(t0, min(t0 + TOKEN_TILE, n))
        for v0 in range(0, vocab, VOCAB_CHUNK):
            cols = slice(v0, min(v0 + VOCAB_CHUNK, vocab))
            tile = buf[: rows.stop - rows.start, : cols.stop - cols.start]
            torch.matmul(hidden[rows], weight[cols].t(), out=tile)
            yield rows, cols, tile


def _local_targets(labels: torch.Tensor, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    inside = (labels >= cols.start) & (labels < cols.stop)
    return (labels - cols.start).clamp(0, cols.stop - cols.start - 1), inside


def _sum_exp(tile: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
    """sum(exp(tile - max)) per row, computed in place on the tile buffer (the kernel's registers)."""
    return tile.sub_(new_max[:, None].to(tile.dtype)).exp_().sum(-1, dtype=torch.float32)


def tiled_causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                         autocast_dtype: torch.dtype | None = None, extra: dict | None = None) -> torch.Tensor:
    """The model's causal-LM loss through TiledNLL: the backbone's hidden states, shifted, against lm_head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    context = torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with context:
        hidden = base.model(input_ids=input_ids, **(extra or {})).last_hidden_state[:, :-1]
        targets = labels[:, 1:].reshape(-1)
        # TRL scores the valid positions only (hidden_states[labels != -100]): a copy of the hidden states.  Every
        # position is valid here; index_select makes the same copy with a shape fake tensors can know.
        valid = torch.arange(targets.numel(), device=targets.device)
        head = base.get_output_embeddings()
        weight = head.weight if autocast_dtype is None else head.weight.to(autocast_dtype)
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, valid)
        return TiledNLL.apply(flat.to(weight.dtype), weight, targets)



PhaseHook = Callable[[str], None]


def forward_backward(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                     phase: PhaseHook = lambda name: None, autocast_dtype: torch.dtype | None = None,
                     extra: dict | None = None) -> torch.Tensor:
    """The HF Trainer's training_step: loss, backward, and only the detached loss leaves, so the
    autograd graph (and anything it still holds) is gone before the optimizer step."""
    phase("forward")
    loss = causal_lm_loss(model, input_ids, labels, autocast_dtype, extra)
    phase("backward")
    loss.backward()
    return loss.detach()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
               labels: torch.Tensor, phase: PhaseHook = lambda name: None,
               autocast_dtype: torch.dtype | None = None, extra: dict | None = None) -> torch.Tensor:
    """Forward + loss, backward, optimizer step, zero_grad(set_to_none).  ``phase`` is told each start."""
    loss = forward_backward(model, input_ids, labels, phase, autocast_dtype, extra)
    phase("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    phase("idle")
    return loss
