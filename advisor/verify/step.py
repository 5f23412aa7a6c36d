"""One training step, as the HF Trainer runs it.  Shared by the real verification run and the dry run."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..memory.config import TrainConfig


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
                   autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The model's own loss (HF ForCausalLMLoss: fp32 logits).  Returning only the loss drops the
    output object, and with it the logits, before backward, as the HF Trainer does.  With
    ``autocast_dtype`` (mixed precision over fp32 master weights) the forward runs under autocast."""
    if autocast_dtype is None:
        return model(input_ids=input_ids, labels=labels).loss
    with torch.autocast(input_ids.device.type, dtype=autocast_dtype):
        return model(input_ids=input_ids, labels=labels).loss


PhaseHook = Callable[[str], None]


def forward_backward(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                     phase: PhaseHook = lambda name: None, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The HF Trainer's training_step: loss, backward, and only the detached loss leaves, so the
    autograd graph (and anything it still holds) is gone before the optimizer step."""
    phase("forward")
    loss = causal_lm_loss(model, input_ids, labels, autocast_dtype)
    phase("backward")
    loss.backward()
    return loss.detach()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
               labels: torch.Tensor, phase: PhaseHook = lambda name: None,
               autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Forward + loss, backward, optimizer step, zero_grad(set_to_none).  ``phase`` is told each start."""
    loss = forward_backward(model, input_ids, labels, phase, autocast_dtype)
    phase("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    phase("idle")
    return loss
