"""The facts rules see: typed, frozen, with units in the names.  Rules read them as ``gpu.vram_gib``,
``model.params_b``, ``goals.seq_len``, ``candidate.need_gib``; nothing else is reachable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GpuFacts:
    """One GPU of the job (all GPUs of a job are alike)."""

    known: bool  # a GPU was detected or named; False: planning without a card
    name: str
    count: int
    vram_gib: float  # total memory of one GPU
    free_vram_gib: float  # what is left after other processes
    bf16: bool  # compute capability >= 8.0
    compute_capability: float  # 8.9 for (8, 9)
    nvlink: bool
    tflops_bf16: float  # dense 16-bit tensor TFLOP/s (datasheet; 0 when unknown)


@dataclass(frozen=True)
class ModelFacts:
    name: str
    family: str  # transformers model_type: llama, qwen2, gemma2, ...
    params_b: float  # billions of parameters
    layers: int
    hidden: int
    vocab: int
    max_positions: int
    moe: bool
    tied_embeddings: bool


@dataclass(frozen=True)
class GoalFacts:
    seq_len: int
    effective_batch: int  # sequences per optimizer step, over all GPUs
    method: str  # auto, full, lora, qlora
    prefer: str  # speed or quality
    gpus: int


@dataclass(frozen=True)
class HostFacts:
    """The machine the job's GPUs sit in (what CPU offload draws on)."""

    known: bool  # planning for this machine (detected GPUs) or --host-ram given; False for a named --gpu
    ram_gib: float  # physical RAM (0 when unknown)


@dataclass(frozen=True)
class CandidateFacts:
    """One candidate configuration with its estimate (per GPU)."""

    method: str
    rank: int  # 0 for full fine-tuning
    targets: str
    grad_ckpt: bool
    optimizer: str
    micro_batch: int
    grad_accum: int
    sharding: str  # single, ddp, zero1, zero2, zero3, fsdp
    offload: str
    precision: str
    master_weights: bool  # full FT under autocast over fp32 weights
    loss: str  # standard or chunked (fused cross-entropy)
    need_gib: float  # peak device memory (what nvidia-smi would show)
    need_high_gib: float  # the high end of the estimate's range (the known spread of its inexact terms)
    usable_gib: float
    fits: bool  # need <= usable
    fit: str  # with the range: fits (high end under the card), tight (card inside the range), does_not_fit
    headroom_gib: float
    headroom_frac: float  # headroom / usable
    activation_share: float  # activations / need
    state_share: float  # optimizer states / need
    tokens_per_s: float  # estimated throughput of the whole job
    host_ram_gib: float  # CPU RAM the job's offload needs (0 without offload)
    host_ram_frac: float  # host_ram_gib / host.ram_gib (0 when the host is unknown)


FACT_CLASSES = {"gpu": GpuFacts, "host": HostFacts, "model": ModelFacts, "goals": GoalFacts, "candidate": CandidateFacts}


def fact_names(include_candidate: bool = True) -> list[str]:
    """Every fact path, e.g. 'gpu.vram_gib' (for suggestions and templates)."""
    names = []
    for prefix, cls in FACT_CLASSES.items():
        if prefix == "candidate" and not include_candidate:
            continue
        names += [f"{prefix}.{f.name}" for f in dataclasses.fields(cls)]
    return names


def flatten(things: dict[str, object]) -> dict[str, object]:
    """{'gpu.vram_gib': 24.0, ...} for the facts present."""
    flat: dict[str, object] = {}
    for prefix, value in things.items():
        if value is not None:
            for f in dataclasses.fields(value):
                flat[f"{prefix}.{f.name}"] = getattr(value, f.name)
    return flat


@lru_cache(maxsize=2)
def type_schema(include_candidate: bool):
    """rule-engine OBJECT schemas built from the dataclasses (attributes are checked when a rule loads)."""
    from .ruleengine import rule_engine

    DataType = rule_engine().DataType

    kinds = {bool: DataType.BOOLEAN, int: DataType.FLOAT, float: DataType.FLOAT, str: DataType.STRING}
    schema = {}
    for prefix, cls in FACT_CLASSES.items():
        if prefix == "candidate" and not include_candidate:
            continue
        hints = {"bool": bool, "int": int, "float": float, "str": str}
        attributes = {f.name: kinds[hints[f.type]] for f in dataclasses.fields(cls)}
        schema[prefix] = DataType.OBJECT(prefix, attributes=attributes)
    return schema
