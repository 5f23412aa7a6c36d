"""Candidate search + rules -> Plan.

The planner enumerates configurations (method x rank x targets x checkpointing x optimizer x micro batch
x sharding/offload), estimates each with the memory model's fast path, lets the rules fix fields, forbid
candidates and adjust scores, and ranks what is left by estimated throughput.  Every rule that fired is
in the trace with its sentence; every method that lost says why.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError

from .engine.facts import CandidateFacts, GoalFacts, GpuFacts, HostFacts, ModelFacts
from .engine.rules import Rule
from .hardware import Hardware
from .hardware.catalog import MAX_GPUS
from .limits import fit_limits
from .memory import TrainConfig, estimate
from .memory.config import Lengths
from .memory.overheads import unpacked_note
from .memory.estimate import Peaks, peaks
from .memory.result import MemoryEstimate
from .models.arch import ModelArch
from .models.params import count_params
from .throughput import Job, Speed, gpu_perf, speed, throughput
from .units import GiB
from .words import config_words

METHODS = ("full", "lora", "qlora")
RANKS = (8, 16, 32, 64)
TARGETS = ("all-linear", "attention", "q,v")
LOSSES = ("standard", "chunked")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)
SHARDINGS = ("single", "ddp", "zero2", "zero3", "fsdp")


class Goals(BaseModel):
    seq_len: int = Field(2048, gt=0)
    effective_batch: int = Field(16, gt=0, description="Sequences per optimizer step over all GPUs.")
    method: str = Field("auto", pattern="^(auto|full|lora|qlora|lora8bit)$")
    prefer: str = Field("speed", pattern="^(speed|quality)$", description="speed ranks by time to train (for a "
                        "fixed job that is tokens/s); quality favours 16-bit bases and higher ranks")
    gpus: int = Field(1, gt=0)
    dataset_tokens: int | None = Field(None, gt=0, description="Tokens in one epoch of the data (for time and cost).")
    samples: int | None = Field(None, gt=0, description="Sequences in one epoch (tokens = samples x seq_len).")
    epochs: float = Field(1.0, gt=0, le=1000)
    price_per_gpu_hour: float | None = Field(None, ge=0, le=1e4, description="Price of one GPU-hour (any currency).")
    images_per_sample: int = Field(0, ge=0, le=1024, description="Images per sequence (vision-language models).")
    image_size: int | None = Field(None, gt=0, le=1 << 15, description="Image side in pixels (images present).")
    image_tokens: int | None = Field(None, gt=0, le=1 << 24, description="Image tokens per sequence, given directly.")
    lengths: Lengths = Field("fixed", description="fixed: every batch at seq_len (packed); variable: unpacked data "
                             "padded per batch, seq_len its cutoff (memory/config.py).")

    @property
    def image_fields(self) -> dict:
        """The TrainConfig fields that describe the images of every sequence (none for text)."""
        return {"images_per_sample": self.images_per_sample, "image_size": self.image_size,
                "image_tokens": self.image_tokens}

    @property
    def data_fields(self) -> dict:
        """The TrainConfig fields that describe the data every candidate trains on: its batches' lengths and
        images."""
        return {"lengths": self.lengths, **self.image_fields}

    @property
    def job(self) -> Job:
        return Job.of(self)


class TraceEntry(BaseModel):
    rule: str
    kind: str  # set, warn, forbid, prefer
    sentence: str
    source: str
    fields: list[str] = Field(default_factory=list, description="For set: the config fields the rule fixed.")


# config fields that only mean something for adapters: a rule that set only these says nothing about full FT
ADAPTER_FIELDS = {"rank", "targets", "alpha_per_rank"}


def settled_for(plan: "Plan") -> list[str]:
    """The sentences of the set rules that bear on the chosen config (all of them when nothing was chosen)."""
    full = plan.chosen is not None and plan.chosen.config.method == "full"
    return [t.sentence for t in plan.trace
            if t.kind == "set" and not (full and t.fields and set(t.fields) <= ADAPTER_FIELDS)]


class Option(BaseModel):
    """A candidate that survived the rules."""

    config: TrainConfig
    grad_accum: int
    need_bytes: int
    tokens_per_s: float
    score: float
    reasons: list[str] = Field(default_factory=list)
    speed: Speed | None = Field(None, description="Tokens/s, step time and, for a job of known size, time, "
                                "GPU-hours and cost, each with a range (chosen option and alternatives).")


class Rejection(BaseModel):
    option: str
    reason: str
    rule: str
    config: TrainConfig | None = Field(None, description="The rejected candidate (the closest miss of its kind).")
    need_bytes: int | None = None


class ChosenLimits(BaseModel):
    """How far the chosen setup stretches on the card (device peak at most the usable memory)."""

    longest_seq_len: int | None = Field(description="Longest sequence that fits at the chosen micro batch.")
    largest_micro_batch: int | None = Field(description="Largest micro batch that fits at the goal's sequence length.")


class Plan(BaseModel):
    chosen: Option | None
    estimate: MemoryEstimate | None
    alternatives: list[Option]
    trace: list[TraceEntry]
    rejected: list[Rejection] = Field(description="For each method (and ckpt/optimizer variant) that lost: why.")
    warnings: list[str]
    candidates_evaluated: int = Field(description="Candidates decided: estimated, or bounded by a smaller micro batch that did not fit.")
    candidates_estimated: int = Field(0, description="Candidates the memory model estimated.")
    smallest_need_bytes: int | None = Field(None, description="When nothing fits: the least any candidate needs.")
    what_would_fit: list[str] = Field(default_factory=list)
    chosen_limits: ChosenLimits | None = Field(None, description="The chosen config's limits on this card (`lora-advisor limits`).")
    no_choice: str | None = Field(None, description="When nothing was chosen: why, in one line (memory, or the rules).")


@dataclass
class _Space:
    """What the plan-scope rules left open."""

    allowed: dict[str, list] = field(default_factory=dict)
    setters: dict[str, str] = field(default_factory=dict)  # field -> the id of the rule that set it last
    # method -> why no configuration of it exists under what the rules set (a user rule pack can set
    # `precision: fp32`, which no QLoRA candidate can use): reported as that rule's rejection
    invalid: dict[str, str] = field(default_factory=dict)

    def values(self, name: str, default: tuple) -> list:
        return list(self.allowed.get(name, default))


def gpu_facts(hw: Hardware | None) -> GpuFacts:
    if hw is None:
        return GpuFacts(False, "unknown", 1, 0.0, 0.0, True, 8.0, False, 0.0)
    from .hardware.catalog import find_gpu

    spec = find_gpu(hw.name)
    cc = hw.compute_capability or (spec.compute_capability if spec else (8, 0))
    return GpuFacts(True, hw.name, hw.count, hw.memory_bytes / GiB, hw.usable_bytes / GiB, cc >= (8, 0),
                    cc[0] + cc[1] / 10, bool(spec and spec.nvlink), float((spec and spec.tflops_bf16) or (spec and spec.tflops_fp16) or 0))


def model_facts(arch: ModelArch) -> ModelFacts:
    return ModelFacts(arch.name, arch.model_type, count_params(arch).total / 1e9, arch.num_layers, arch.hidden_size,
                      arch.vocab_size, arch.max_position_embeddings, arch.moe is not None, arch.tie_word_embeddings)


def _sharding_fields(name: str) -> dict:
    return {"single": {}, "ddp": {}, "zero2": {"zero": 2}, "zero3": {"zero": 3}, "fsdp": {"fsdp": True}}[name]


def enumerate_candidates(goals: Goals, space: _Space, last_rung: bool = False) -> list[TrainConfig]:
    """The candidate configurations the plan-scope rules left open.  ``last_rung``: only the ZeRO-3 / FSDP
    candidates that offload parameters too (ZeRO-Infinity style), which the planner tries when nothing
    else passed: weights cross PCIe twice per micro step, the slowest way to train."""
    methods = [goals.method] if goals.method != "auto" else space.values("method", METHODS)
    fixed = {k: v[0] for k, v in space.allowed.items() if k in ("precision", "attn") and v}
    out = []
    for method in methods:
        ranks = space.values("rank", RANKS) if method != "full" else [16]
        targets = space.values("targets", TARGETS) if method != "full" else ["all-linear"]
        for rank, target, ckpt, optimizer, micro, sharding, loss in itertools.product(
                ranks, targets, space.values("grad_ckpt", (False, True)), space.values("optimizer", OPTIMIZERS), MICRO_BATCHES,
                space.values("sharding", SHARDINGS), LOSSES):
            if micro * goals.gpus > goals.effective_batch:
                continue
            # FSDP offloads parameters, gradients and optimizer states together (CPUOffload(offload_params)), never
            # the states alone: its offload is the last rung's; ZeRO-3 can offload the optimizer states only
            offloads = ("none", "optimizer") if sharding == "zero3" else ("none",)
            if sharding == "zero3" and goals.gpus == 1:
                offloads = ("optimizer",)  # ZeRO-3 on one GPU is only worth it for the offload
            if last_rung:
                offloads = ("params",) if sharding in ("zero3", "fsdp") else ()
            offloads = [o for o in offloads if o in space.values("offload", ("none", "optimizer", "params"))]
            # full fine-tuning: pure 16-bit, or mixed precision over fp32 master weights (the HF default)
            masters = (False, True) if method == "full" and fixed.get("precision") != "fp32" else (False,)
            for offload, master in itertools.product(offloads, masters):
                try:
                    out.append(TrainConfig(method=method, rank=rank, targets=(target,), grad_ckpt=ckpt,
                                           optimizer=optimizer, micro_batch=micro, seq_len=goals.seq_len,
                                           gpus=goals.gpus, offload=offload, loss=loss, master_weights=master,
                                           **_sharding_fields(sharding), **goals.data_fields, **fixed))
                except ValidationError as exc:  # a combination the rules' settings make impossible
                    space.invalid.setdefault(method, exc.errors()[0]["msg"].removeprefix("Value error, "))
    return out


def _no_choice(smallest: int | None, usable: int | None) -> str:
    """Why no candidate was chosen: memory only when even the smallest does not fit the card; otherwise the
    rules turned down candidates that fit the card (its headroom, the host's RAM, or a rule of the user's)."""
    if smallest is None:
        return "no configuration is left: the rules' settings allow none (see the rejections)"
    if usable is None or smallest > usable:
        return f"nothing fits: the smallest candidate needs {smallest / GiB:.1f} GiB" + (
            f" of {usable / GiB:.1f} usable" if usable is not None else "")
    return (f"no candidate passes the rules: the smallest needs {smallest / GiB:.1f} GiB of {usable / GiB:.1f} usable, "
            "and the rules turned it down (see the rejections)")


def _invalid_rejections(space: _Space, candidates: list[TrainConfig]) -> list[Rejection]:
    """A method the rules' settings left without a single valid configuration, as that rule's rejection."""
    valid = {cfg.method for cfg in candidates}
    out = []
    for method, why in space.invalid.items():
        if method in valid:
            continue
        # the rule that set the field the validator's sentence names ("--precision fp32 with qlora: ..."); a
        # sentence naming none of them is the planner's own (it never blames a rule it cannot point at)
        fields = [name for name in ("precision", "attn") if name in space.setters and name in why]
        if fields:
            out.append(Rejection(option=method, rule=space.setters[fields[0]],
                                 reason=f"no {method} configuration is valid with what the rules set "
                                        f"({', '.join(f'{name} {space.allowed[name][0]}' for name in fields)}): {why}"))
        else:
            out.append(Rejection(option=method, rule="planner", reason=f"no {method} configuration is valid: {why}"))
    return out


def _describe(cfg: TrainConfig) -> str:
    """A candidate in people's words (what rejections and suggestions name)."""
    return config_words(cfg)


def make_plan(arch: ModelArch, hw: Hardware | None, goals: Goals, rules: list[Rule], top: int = 5,
              suggest: bool = True, calibrations: dict | None = None, host_ram_bytes: int | None = None) -> Plan:
    """The fastest configuration that fits and passes the rules.  When nothing does and ``suggest`` is
    set, ``what_would_fit`` lists changes (a bigger card, more cards, a shorter sequence) that were each
    checked by planning for them.  ``calibrations`` ({method: CalibrationPoint} measured on this GPU and
    model family, see verify/calibration.py) replace the overhead constants as in `estimate`.
    ``host_ram_bytes``: the CPU RAM of the machine the job runs on, when known (rules see `host.*`)."""
    calibrations = calibrations or {}
    gpu, model, goal = gpu_facts(hw), model_facts(arch), GoalFacts(goals.seq_len, goals.effective_batch, goals.method,
                                                                    goals.prefer, goals.gpus)
    host = HostFacts(host_ram_bytes is not None, (host_ram_bytes or 0) / GiB)
    base = {"gpu": gpu, "host": host, "model": model, "goals": goal}
    trace: list[TraceEntry] = []
    warnings: list[str] = []
    space = _Space()
    plan_rules = [r for r in rules if r.spec.scope == "plan"]
    cand_rules = [r for r in rules if r.spec.scope == "candidate"]
    if calibrations:
        warnings.append(f"memory calibrated from real runs on this GPU for {', '.join(sorted(calibrations))} "
                        "(allocator and context terms as measured; --no-calibration turns it off)")
        timed = sorted(m for m, p in calibrations.items() if _speed_ratio(p))
        if timed:
            warnings.append(f"tokens/s calibrated from real runs on this GPU for {', '.join(timed)} "
                            "(measured / estimated speed of the verify run applied to the estimate)")
    for rule in plan_rules:
        if not rule.matches(base):
            continue
        sentence = rule.sentence(base)
        if rule.spec.set is not None:
            for key, value in rule.spec.set.items():
                space.allowed[key] = list(value) if isinstance(value, list) else [value]
                space.setters[key] = rule.id
            trace.append(TraceEntry(rule=rule.id, kind="set", sentence=sentence, source=rule.source,
                                    fields=sorted(rule.spec.set)))
        elif rule.spec.warn:
            warnings.append(sentence)
            trace.append(TraceEntry(rule=rule.id, kind="warn", sentence=sentence, source=rule.source))

    usable = hw.usable_bytes if hw else None
    perf = gpu_perf(hw.name if hw is not None else None)

    forbid_rules = [r for r in cand_rules if r.spec.forbid]
    prefer_rules = [r for r in cand_rules if r.spec.prefer is not None]
    survivors: list[tuple] = []  # (option, config, facts, matched prefer rules)
    rejected_best: dict[tuple, tuple] = {}  # per kind of setup: the closest rejected candidate and its rule
    smallest: int | None = None
    candidates = enumerate_candidates(goals, space)
    # Memory never shrinks with a larger micro batch (a tested property of the model), so once a micro
    # batch does not fit, the larger ones of the same setup are decided without estimating them.
    too_big: set[tuple] = set()
    estimated = 0
    speeds: dict[int, object] = {}  # id(option) -> its Throughput, reported for what is shown

    def consider(cfg: TrainConfig) -> None:
        """Estimate one candidate and let the rules decide it: a survivor, or the closest miss of its kind."""
        nonlocal smallest, estimated
        setup = _setup(cfg)
        if usable is not None and setup in too_big:
            return
        est = peaks(arch, cfg, hw, calibrations.get(cfg.method))
        estimated += 1
        need = est.peak_device_bytes
        if usable is not None and need > usable:
            too_big.add(setup)
        smallest = need if smallest is None else min(smallest, need)
        tp = throughput(arch, cfg, est, goals.effective_batch, perf, _speed_ratio(calibrations.get(cfg.method)))
        accum = cfg.accumulation(goals.effective_batch)
        cap = usable if usable is not None else need
        facts = CandidateFacts(
            method=cfg.method, rank=cfg.rank if cfg.uses_adapters else 0, targets=cfg.targets[0],
            grad_ckpt=cfg.grad_ckpt, optimizer=cfg.optimizer, micro_batch=cfg.micro_batch, grad_accum=accum,
            sharding=cfg.sharding, offload=cfg.offload, precision=cfg.precision, master_weights=cfg.master_weights,
            loss=cfg.loss, need_gib=need / GiB, need_high_gib=est.peak_device_high_bytes / GiB, usable_gib=cap / GiB,
            fits=need <= cap, fit="fits" if est.peak_device_high_bytes <= cap else "tight" if need <= cap else "does_not_fit",
            headroom_gib=(cap - need) / GiB,
            headroom_frac=(cap - need) / cap if cap else 0.0,
            activation_share=_share(est, "activations", need), state_share=_share(est, "optimizer_states", need),
            tokens_per_s=tp.tokens_per_s, host_ram_gib=est.host_ram_bytes / GiB,
            host_ram_frac=est.host_ram_bytes / host_ram_bytes if host_ram_bytes else 0.0)
        things = {**base, "candidate": facts}
        verdict = next((r for r in forbid_rules if r.matches(things)), None)
        if verdict is not None:
            key = (cfg.method, cfg.master_weights, cfg.grad_ckpt, cfg.offload)
            rank = (need, verdict.spec.priority)  # the closest miss of its kind
            if key not in rejected_best or rank < rejected_best[key][0]:
                rejected_best[key] = (rank, verdict, things, cfg)
            return
        option = Option(config=cfg, grad_accum=accum, need_bytes=need, tokens_per_s=tp.tokens_per_s,
                        score=tp.tokens_per_s)
        speeds[id(option)] = tp
        survivors.append((option, cfg, things, []))

    for cfg in candidates:
        consider(cfg)
    if not survivors and usable is not None:  # the ladder's last rung: offload the parameters too
        last = enumerate_candidates(goals, space, last_rung=True)
        if last:
            trace.append(TraceEntry(rule="planner.last-rung", kind="set", source="advisor/planner.py",
                                    sentence="nothing passed on the GPU alone: trying ZeRO-3 / FSDP with the parameters "
                                             "offloaded to CPU RAM as well"))
            for cfg in last:
                consider(cfg)
            candidates += last
    survivors = _score(survivors, prefer_rules, keep=4 * top)
    survivors.sort(key=lambda item: (-item[0].score, item[0].need_bytes))
    # why each (method, precision, checkpointing, offload) choice lost, for those where nothing survived
    alive = {(o.config.method, o.config.master_weights, o.config.grad_ckpt, o.config.offload) for o, *_ in survivors}
    rejected = [Rejection(option=_describe(cfg), reason=rule.sentence(things), rule=rule.id, config=cfg, need_bytes=need)
                for key, ((need, _), rule, things, cfg) in sorted(rejected_best.items(), key=lambda item: item[1][0])
                if key not in alive]
    rejected += _invalid_rejections(space, candidates)
    for rejection in rejected:
        trace.append(TraceEntry(rule=rejection.rule, kind="forbid", sentence=f"{rejection.option}: {rejection.reason}",
                                source=next((r.source for r in rules if r.id == rejection.rule), "advisor/planner.py")))
    if not survivors:
        return Plan(chosen=None, estimate=None, alternatives=[], trace=trace, rejected=rejected, warnings=warnings,
                    candidates_evaluated=len(candidates), candidates_estimated=estimated, smallest_need_bytes=smallest,
                    no_choice=_no_choice(smallest, usable),
                    what_would_fit=_what_would_fit(arch, hw, goals, rules, smallest, calibrations, host_ram_bytes)
                    if suggest else [])
    # sentences are rendered only for what is shown: the chosen plan and its alternatives
    chosen, chosen_cfg, chosen_things, chosen_rules = survivors[0]
    calibration = calibrations.get(chosen_cfg.method)
    limits = fit_limits(arch, chosen_cfg, hw, calibration) if hw is not None else None
    # a bonus the chosen config earned is a reason for it; a penalty it carries anyway (offload, a fused-loss
    # kernel to install, a 4-bit base under "quality") is a caveat the user should read as a warning
    chosen.reasons = (_chosen_reasons(chosen, chosen_cfg, goals, hw, limits)
                      + [r.sentence(chosen_things) for r in chosen_rules if r.spec.prefer >= 0])
    warnings += [r.sentence(chosen_things) for r in chosen_rules if r.spec.prefer < 0]
    for rule in chosen_rules:
        trace.append(TraceEntry(rule=rule.id, kind="prefer", sentence=rule.sentence(chosen_things), source=rule.source))
    distinct, seen = [], {_variant(chosen_cfg)}
    for option, cfg, things, matched in survivors[1:]:
        if _variant(cfg) not in seen:
            seen.add(_variant(cfg))
            option.reasons = [r.sentence(things) for r in matched]
            distinct.append(option)
        if len(distinct) >= top:
            break
    for option in (chosen, *distinct):
        point = calibrations.get(option.config.method)
        option.speed = speed(speeds[id(option)], option.config.gpus, option.config.seq_len, goals.job,
                             point if _speed_ratio(point) else None)
    chosen_estimate = estimate(arch, chosen_cfg, hw, calibration=calibration)
    if chosen_cfg.offload == "params":
        warnings.append("parameter offload is the least checked part of the memory model: a published FSDP "
                        "CPU-offload run (benchmarks/public_measurements.py) used ~30 % more GPU memory than "
                        "estimated; run `lora-advisor verify` before a long job")
    if chosen_estimate.unpacked_cache_bytes:  # what nvidia-smi will read on top, so nobody mistakes it for a leak
        warnings.append(unpacked_note(chosen_estimate.unpacked_cache_bytes))
    if chosen_estimate.host_ram_bytes:
        chosen.reasons.insert(1, f"offload: needs ~{chosen_estimate.host_ram_bytes / GiB:.0f} GiB of CPU RAM "
                                 f"for the {'parameters and ' if chosen_cfg.offload == 'params' else ''}optimizer states")
    return Plan(chosen=chosen, estimate=chosen_estimate, alternatives=distinct,
                trace=trace, rejected=rejected, warnings=warnings, candidates_evaluated=len(candidates),
                candidates_estimated=estimated,
                chosen_limits=None if limits is None else ChosenLimits(longest_seq_len=limits[0].value,
                                                                        largest_micro_batch=limits[1].value))


def _speed_ratio(point) -> float | None:
    """Measured / estimated tokens/s of a calibration point (verify/calibration.py), when it measured speed."""
    return getattr(point, "tokens_per_s_ratio", None)


def _score(survivors: list[tuple], prefer_rules: list[Rule], keep: int) -> list[tuple]:
    """Apply the prefer rules, best first.  Branch and bound: candidates are visited by throughput, and
    once even the largest possible bonus cannot lift one into the best ``keep``, the rest are skipped
    (they keep their plain throughput score and rank below)."""
    max_bonus = 1.0
    for rule in prefer_rules:
        max_bonus *= 1 + max(rule.spec.prefer, 0.0)
    survivors.sort(key=lambda item: -item[0].tokens_per_s)
    scored: list[tuple] = []
    best: list[float] = []  # min-heap of the best `keep` scores so far
    for index, item in enumerate(survivors):
        option, cfg, things, matched = item
        if len(best) >= keep and option.tokens_per_s * max_bonus < best[0]:
            scored += survivors[index:]
            break
        matched = [rule for rule in prefer_rules if rule.matches(things)]
        for rule in matched:
            option.score *= 1 + rule.spec.prefer
        scored.append((option, cfg, things, matched))
        if len(best) < keep:
            heapq.heappush(best, option.score)
        elif option.score > best[0]:
            heapq.heapreplace(best, option.score)
    return scored


def _setup(cfg: TrainConfig) -> tuple:
    """Everything but the micro batch."""
    return (cfg.method, cfg.rank, cfg.targets, cfg.grad_ckpt, cfg.optimizer, cfg.zero, cfg.fsdp, cfg.offload, cfg.loss,
            cfg.master_weights)


def _variant(cfg: TrainConfig) -> tuple:
    """Alternatives differ in a way a person cares about, not only in the micro batch."""
    return (cfg.method, cfg.rank if cfg.uses_adapters else 0, cfg.targets, cfg.grad_ckpt, cfg.sharding, cfg.offload)


def _share(est: Peaks, name: str, need: int) -> float:
    part = est.activation_bytes if name == "activations" else est.optimizer_state_bytes
    return part / need if need else 0.0


def _chosen_reasons(option: Option, cfg: TrainConfig, goals: Goals, hw: Hardware | None, limits) -> list[str]:
    reasons = []
    if hw is not None:
        reasons.append(f"fits: {option.need_bytes / GiB:.1f} GiB of {hw.usable_bytes / GiB:.1f} GiB usable "
                       f"({(hw.usable_bytes - option.need_bytes) / GiB:.1f} GiB headroom)")
    reasons.append(f"micro batch {cfg.micro_batch} x {option.grad_accum} accumulation x {cfg.gpus} GPU(s) "
                   f"= {cfg.micro_batch * option.grad_accum * cfg.gpus} sequences per step (goal {goals.effective_batch})")
    reasons.append(f"fastest that fits: ~{option.tokens_per_s:,.0f} tokens/s estimated")
    if limits is not None:
        seq, batch = limits
        if seq.value and batch.value:
            reasons.append(f"at the card's limit this setup holds sequences up to {seq.value:,} tokens (micro batch "
                           f"{cfg.micro_batch}) or micro batch {batch.value} at {cfg.seq_len:,} tokens")
    return reasons


def _what_would_fit(arch: ModelArch, hw: Hardware | None, goals: Goals, rules: list[Rule],
                    smallest: int | None, calibrations: dict, host_ram_bytes: int | None) -> list[str]:
    """Changes that make a plan exist, each one checked by planning for it, so a suggestion passes the
    same rules (headroom included) as any plan: the smallest catalog card that works, the fewest of
    these cards that work, the longest of the halved sequence lengths that works."""
    if smallest is None or hw is None:
        return []
    from .hardware.catalog import gpu_catalog

    def works(hardware: Hardware, goals_: Goals) -> Option | None:
        same_card = hardware.name == hw.name  # calibration was measured on this card only
        plan = make_plan(arch, hardware, goals_, rules, suggest=False, host_ram_bytes=host_ram_bytes,
                         calibrations=calibrations if same_card else None)
        if plan.chosen is not None and plan.estimate is not None and plan.estimate.host_ram_bytes:
            ram[id(plan.chosen)] = plan.estimate.host_ram_bytes
        return plan.chosen

    ram: dict[int, int] = {}  # an offloading suggestion says the CPU RAM it needs

    def needs(option: Option, where: str) -> str:
        host = f" and ~{ram[id(option)] / GiB:.0f} GiB of CPU RAM" if id(option) in ram else ""
        return f"{_describe(option.config)}, {option.need_bytes / GiB:.1f} GiB{where}{host}"

    out = []
    sizes: dict[int, object] = {}  # one catalog card per memory size, the fastest of that size
    for spec in sorted(gpu_catalog(), key=lambda s: (s.memory_bytes, -(s.tflops_bf16 or 0))):
        if spec.memory_bytes > max(smallest, hw.usable_bytes):
            sizes.setdefault(spec.memory_bytes, spec)
    for spec in list(sizes.values())[:4]:
        card = Hardware(name=spec.name, memory_bytes=spec.memory_bytes, count=hw.count,
                        compute_capability=spec.compute_capability)
        if option := works(card, goals):
            out.append(f"{hw.count} x {spec.name} ({spec.memory_bytes / GiB:.0f} GiB): {needs(option, ' per GPU')}")
            break
    else:
        if smallest > hw.usable_bytes:  # memory stopped it: bigger than the catalog knows (rules may stop it too)
            out.append(f"a GPU with more than {smallest / GiB:.1f} GiB (what the smallest candidate needs) plus "
                       "headroom")
    for count in sorted({hw.count * 2, hw.count * 4, 8}):
        if hw.count < count <= MAX_GPUS and (option := works(hw.model_copy(update={"count": count}),
                                                 goals.model_copy(update={"gpus": count}))):
            out.append(f"{count} x {hw.name}: {needs(option, ' per GPU')}")
            break
    seq = goals.seq_len // 2
    while seq >= max(64, goals.seq_len // 16):  # four halvings at most: each is a whole plan
        if option := works(hw, goals.model_copy(update={"seq_len": seq})):
            out.append(f"seq len {seq:,} instead of {goals.seq_len:,}: {needs(option, '')}")
            break
        seq //= 2
    return out
