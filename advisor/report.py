"""The JSON documents the CLI prints (the ``--json`` contract).  Their schemas are published in
advisor/schema/ and a test keeps the files equal to these models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .hardware.info import DriverInfo, GpuInfo
from .memory.config import TrainConfig
from .memory.result import SCHEMA_VERSION, Component, MemoryEstimate, PhasePeaks
from .throughput import Speed

# defer_build: a model's validator and serializer are built when it is first used, not at import; the
# --json plan path imports this module but uses none of these (each costs 1-4 ms to build at import).


class ModelInfo(BaseModel):
    name: str
    model_type: str
    params: int = Field(description="Parameters of the base model.")
    trainable_params: int = Field(description="Parameters that receive gradients in this configuration.")


class EstimateReport(BaseModel):
    """`lora-advisor estimate --json`: the memory of one configuration, per GPU."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    config: TrainConfig
    peak_allocated_bytes: int = Field(description="Live tensors + cuBLAS workspaces (torch.cuda.max_memory_allocated).")
    peak_reserved_bytes: int = Field(description="Caching allocator's pool at the peak (torch.cuda.max_memory_reserved).")
    peak_device_bytes: int = Field(description="What nvidia-smi shows for the process (reserved + CUDA context + outside torch).")
    peak_device_range_bytes: tuple[int, int] = Field(description="Low and high device peak (the known spread of the inexact terms).")
    range_basis: str = Field("", description="The terms and spreads that make the range.")
    peak_allocated_range_bytes: tuple[int, int] = Field((0, 0), description="Low and high peak allocated (the "
                                                        "tensors' spread alone).")
    peak_phase: str
    phases: PhasePeaks = Field(description="Tensor bytes at the peak of each phase of a step.")
    components: list[Component]
    host_ram_bytes: int
    tokens_per_micro_batch: int
    capacity_bytes: int | None = None
    fits: bool | None = Field(None, description="The expected device peak is at most the capacity.")
    fit: str | None = Field(None, description="'fits' (the range's high end is under the card), 'tight' (the card lies "
                            "inside the range) or 'does_not_fit'; null without a capacity.")
    headroom_bytes: int | None = None
    notes: list[str] = Field(default_factory=list)
    calibration: dict | None = Field(None, description="The calibration point applied (from a real run), if any.")
    unpacked_cache_bytes: int | None = Field(None, description="lengths variable only: what each batch longer than "
                                             "all before it leaves cached on a card with room (not in the peak: the "
                                             "allocator frees it when memory runs short).")
    speed: Speed | None = Field(None, description="Tokens/s and step time of exactly this config; with a job's size "
                                "(--dataset-tokens or --samples, --epochs, --price-per-gpu-hour) its time, GPU-hours and cost.")

    @classmethod
    def build(cls, arch, cfg: TrainConfig, est: MemoryEstimate, speed: Speed | None = None) -> "EstimateReport":
        return cls(
            speed=speed,
            model=ModelInfo(name=arch.name, model_type=arch.model_type, params=est.total_params,
                            trainable_params=est.trainable_params),
            config=cfg,
            **est.model_dump(include={"peak_allocated_bytes", "peak_reserved_bytes", "peak_device_bytes", "peak_phase",
                                      "peak_device_range_bytes", "range_basis", "peak_allocated_range_bytes",
                                      "phases", "components", "host_ram_bytes", "tokens_per_micro_batch",
                                      "capacity_bytes", "fits", "fit", "headroom_bytes", "notes", "calibration",
                                      "unpacked_cache_bytes"}),
        )


class RankRow(BaseModel):
    model_config = ConfigDict(defer_build=True)

    rank: int
    adapter_params: int
    adapter_state_bytes: int = Field(description="Adapters + their gradients + optimizer states.")
    peak_allocated_bytes: int
    peak_device_bytes: int
    fits: bool | None = None


class RankSweepReport(BaseModel):
    """`lora-advisor estimate --rank 4,8,16 --json`: how rank moves memory (it barely does)."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    config: TrainConfig
    ranks: list[RankRow]


class GpuEntry(GpuInfo):
    bf16: bool | None = Field(None, description="bf16 compute (compute capability >= 8.0).")
    flash_attention_2: bool | None = Field(None, description="FlashAttention-2 support (sm_80+).")
    cuda_visible: bool = Field(True, description="CUDA will see this GPU under CUDA_VISIBLE_DEVICES.")
    catalog_name: str | None = Field(None, description="The matching GPU catalog entry, if any.")


class GpusReport(BaseModel):
    """`lora-advisor gpus --json`.  An empty `gpus` comes with `reason` and `hint` (exit code 0)."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    gpus: list[GpuEntry]
    driver: DriverInfo | None = None
    cuda_visible_devices: list[int] | None = Field(None, description="NVML indices in CUDA order; null when unset.")
    reason: str | None = None
    hint: str | None = None

    @classmethod
    def from_detection(cls, detection) -> "GpusReport":
        from .hardware.catalog import find_gpu

        visible = detection.cuda_visible
        entries = []
        for gpu in detection.gpus:
            spec = find_gpu(gpu.name)
            entries.append(GpuEntry(**gpu.model_dump(), bf16=gpu.supports_bf16, flash_attention_2=gpu.supports_flash_attention_2,
                                    cuda_visible=visible is None or gpu.index in visible,
                                    catalog_name=spec.name if spec else None))
        return cls(gpus=entries, driver=detection.driver, cuda_visible_devices=visible,
                   reason=detection.reason, hint=detection.hint)


class PlanReport(BaseModel):
    """`lora-advisor plan --json` (and `lora-advisor --json`): the proposed config and why."""

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    gpu: dict = Field(description="What the plan is for: name, count, memory_bytes, usable_bytes (null when unknown).")
    goals: dict
    request: dict | None = Field(None, description="The question as asked (model as typed, GPU, goals, rules, host "
                                 "RAM): what `export --plan` / `verify --plan` re-resolve the model from.")
    plan: "Plan"

    @classmethod
    def build(cls, arch, hardware, goals, plan, request: dict | None = None) -> "PlanReport":
        from .models.params import count_params

        trainable = plan.estimate.trainable_params if plan.estimate else 0
        gpu = None if hardware is None else {"name": hardware.name, "count": hardware.count,
                                             "memory_bytes": hardware.memory_bytes, "usable_bytes": hardware.usable_bytes}
        return cls(model=ModelInfo(name=arch.name, model_type=arch.model_type, params=count_params(arch).total,
                                   trainable_params=trainable), gpu=gpu or {}, goals=goals.model_dump(),
                   request=request, plan=plan)


class PhaseCheck(BaseModel):
    model_config = ConfigDict(defer_build=True)

    phase: str
    predicted_bytes: int
    measured_bytes: int
    error_percent: float
    judged: bool = Field(True, description="Part of the verdict.  False where the number measures something the "
                         "estimate does not predict (`not_judged_because` says what).")
    not_judged_because: str | None = None


UNPACKED_CACHE = "the cache each new longest batch of unpacked data leaves on a card with room"


def not_judged_because(mode: str, cfg: TrainConfig, phase: str) -> str | None:
    """Why a check is shown but not judged (None: it is judged).  A dry run's reserved level is the allocator
    replay, which checks the estimate's fragmentation term rather than the oracle's tensors; with unpacked data
    (lengths variable) a real run's reserved and device levels hold the cache each new longest batch leaves,
    which the allocator frees when memory runs short (memory/overheads.py unpacked_cache).  A dry run of a DeepSpeed
    plan traces the bare step, which holds none of DeepSpeed's own tensors: nothing of it is judged."""
    unpacked = cfg.lengths == "variable"
    if mode == "dry" and cfg.zero:
        return ("the dry run traces the bare step, without DeepSpeed's fp32 partitions and buffers (their model states "
                "are checked against DeepSpeed's own estimator; the exported job on a GPU checks the rest)")
    if mode == "dry":
        if phase != "reserved":
            return None
        return "the allocator replay, with " + UNPACKED_CACHE if unpacked else \
            "the allocator replay, against the estimate's fragmentation term"
    return UNPACKED_CACHE if unpacked and phase in ("reserved", "device") else None


class VerifyReport(BaseModel):
    """`lora-advisor verify --json`: measured against predicted."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    config: TrainConfig
    mode: str = Field(description="dry (fake tensors), cpu or cuda.")
    checks: list[PhaseCheck] = Field(default_factory=list, description="Per phase (dry) or per level (cuda).")
    steps: list[dict] = Field(default_factory=list, description="The worker's step events.")
    peak_device_sample_bytes: int | None = Field(None, description="Largest NVML used-memory sample (all processes).")
    oom: dict | None = Field(None, description="Set when the run ran out of memory: the step and memory at the failure.")
    error: str | None = None
    hint: str | None = None
    environment: dict = Field(default_factory=dict, description="GPU, driver, CUDA, torch and library versions (real runs).")
    calibration_saved: str | None = Field(None, description="Where the calibration point of this run was stored.")

    @classmethod
    def build(cls, arch, cfg, mode, predicted, events) -> "VerifyReport":
        info = ModelInfo(name=arch.name, model_type=arch.model_type, params=predicted.total_params,
                         trainable_params=predicted.trainable_params)
        report = cls(model=info, config=cfg, mode=mode)
        for event in events:
            kind = event["event"]
            if kind == "step":
                report.steps.append(event)
            elif kind == "sample":
                used = [v for v in event["used_bytes"].values() if v is not None]
                if used:
                    report.peak_device_sample_bytes = max(report.peak_device_sample_bytes or 0, max(used))
            elif kind == "oom":
                report.oom = event
            elif kind == "error":
                report.error, report.hint = event.get("message"), event.get("hint")
            elif kind == "cancelled":
                report.error, report.hint = "cancelled", None
            elif kind == "result" and mode != "dry":
                report.environment = event.get("environment", {})
            elif kind == "result" and mode == "dry":
                for phase, measured in event["phase_peaks"].items():
                    report.checks.append(_check(phase, getattr(predicted.phases, phase), measured))
                # the traced allocations played through the caching allocator (advisor/memory/allocator.py)
                levels = event.get("replayed_levels") or {}
                for level, predicted_bytes in (("allocated", predicted.peak_allocated_bytes),
                                               ("reserved", predicted.peak_reserved_bytes)):
                    if levels.get(level):
                        report.checks.append(_check(level, predicted_bytes, levels[level]))
        # real runs: step 1 creates the optimizer states, so compare from step 2 on
        later = report.steps[1:] or report.steps
        if mode == "cuda" and later:
            report.checks.append(_check("allocated", predicted.peak_allocated_bytes,
                                        max(s["peak_allocated_bytes"] for s in later)))
            report.checks.append(_check("reserved", predicted.peak_reserved_bytes,
                                        max(s["peak_reserved_bytes"] for s in later)))
            if report.peak_device_sample_bytes:
                report.checks.append(_check("device", predicted.peak_device_bytes, report.peak_device_sample_bytes))
        for check in report.checks:
            why = not_judged_because(mode, cfg, check.phase)
            if why:
                check.judged, check.not_judged_because = False, why
        return report


def _check(phase: str, predicted: int, measured: int) -> PhaseCheck:
    return PhaseCheck(phase=phase, predicted_bytes=predicted, measured_bytes=measured,
                      error_percent=100.0 * (predicted - measured) / measured if measured else 0.0)


class LimitEntry(BaseModel):
    model_config = ConfigDict(defer_build=True)

    value: int | None = Field(description="The largest value that fits; null when not even 1 does.")
    power_of_two: int | None = Field(description="The largest power of two that fits.")
    power_of_two_need_bytes: int | None = Field(description="Device peak at `power_of_two`.")
    need_bytes: int | None = Field(description="Device peak at `value`.")
    next_need_bytes: int | None = Field(description="Device peak at value + 1 (at 1 when nothing fits); null when capped.")
    capped: bool = Field(description="The search stopped at its ceiling: every value up to `value` fits.")

    @classmethod
    def of(cls, limit) -> "LimitEntry":
        return cls(value=limit.value, power_of_two=limit.power_of_two, power_of_two_need_bytes=limit.power_of_two_need_bytes,
                   need_bytes=limit.need_bytes, next_need_bytes=limit.next_need_bytes, capped=limit.capped)


class LimitsReport(BaseModel):
    """`lora-advisor limits --json`: the longest sequence and the largest micro batch that fit one config."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    config: TrainConfig
    gpu: str
    capacity_bytes: int = Field(description="One GPU's usable memory; fits means device peak <= this (no headroom kept).")
    longest_seq_len: LimitEntry = Field(description="At the config's micro batch.")
    largest_micro_batch: LimitEntry = Field(description="At the config's sequence length.")
    notes: list[str] = Field(default_factory=list)


class ErrorReport(BaseModel):
    """What `--json` prints on stdout when the input is bad (exit code 2)."""

    model_config = ConfigDict(defer_build=True)

    schema_version: int = SCHEMA_VERSION
    error: str
    hint: str
    field: str | None = Field(None, description="The flag the error is about, when it is about one.")


from .planner import Plan  # noqa: E402  (after the report models it refers to)

PlanReport.model_rebuild()

SCHEMAS = {"limits": LimitsReport, "verify": VerifyReport, "plan": PlanReport, "estimate": EstimateReport, "rank-sweep": RankSweepReport, "gpus": GpusReport, "error": ErrorReport}
