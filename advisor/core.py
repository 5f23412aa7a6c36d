"""The headless core both front ends call: a typed request in, one immutable result out.

The CLI and the app answer the same questions (plan, estimate, limits, rank sweep, export, verify).  The
assembling of a question (the model, the GPUs with their catalog facts, calibrations from real runs, the
host RAM offload may use, the rules) and the choice of one option happen here, once.  A front end parses
its input into a `PlanRequest` (or a `ConfigRequest` for a configuration described by hand), calls
`plan` / `configure` / `saved_option`, and renders what comes back; every later action (export, verify,
limits, rank sweep) takes a `Selected` option of that result, so what a user exports or verifies is the
exact configuration the plan chose, with its estimate.

Errors carry what went wrong as data (``AdvisorError.field`` / ``.value``): the CLI names the flag, the
app the input field.  Nothing here imports textual, rich or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, get_args

from pydantic import ValidationError

from .errors import AdvisorError, NoFitError, UsageError
from .hardware import Hardware
from .memory.config import PREQUANTIZED, Method, TrainConfig
from .models.arch import ModelArch
from .units import GiB

# ---- the choices a question may take: one definition for the CLI's flags and the app's fields ----------
METHOD_CHOICES: tuple[str, ...] = ("auto", *get_args(Method))
PREFER_CHOICES: tuple[str, ...] = ("speed", "quality")
EXPORT_FORMATS: tuple[str, ...] = ("peft-trl", "trl-yaml", "axolotl", "llamafactory", "accelerate", "deepspeed")
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
MAX_GPUS = 1024  # TrainConfig's bound: a plan and an estimate refuse the same counts
# Stated maxima of the other numbers a question takes (TrainConfig holds the same bounds): beyond any real job, and
# low enough that no arithmetic overflows and no search runs for minutes.
MAX_SEQ_LEN = 1 << 24  # 16,777,216 tokens: above every model's context
MAX_MICRO_BATCH = 1 << 16
MAX_EFFECTIVE_BATCH = 1 << 24
MAX_RANK = 4096
MAX_ALPHA = 1e6
MAX_STEPS = 100_000

Detector = Callable[[], object]  # returns a hardware.nvml.Detection


def detect_gpus():
    """This machine's GPUs through NVML, probed in a child process with a deadline (a hung or crashing driver
    cannot hang or kill the caller; see hardware/nvml.py)."""
    from .hardware.nvml import detect

    return detect()


# ---- requests -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs to plan for.  ``gpu``: a catalog card with an optional count (``4090``, ``4xA100-80GB``,
    ``A100 80GB``) or, when it names no card, a size for a custom one (``24GiB``, ``80GB``, ``24``);
    ``vram`` overrides one card's memory; ``gpus`` the job's GPU count.  All empty: the detected GPUs."""

    gpu: str = ""
    vram: str = ""
    gpus: int | None = None


@dataclass(frozen=True)
class PlanRequest:
    """A question for the planner: the model and the goals; the planner chooses the configuration."""

    model: str
    hardware: GpuRequest = GpuRequest()
    seq_len: int = 2048
    effective_batch: int = 16
    method: str = "auto"
    prefer: str = "speed"
    rules: tuple[str, ...] = ()  # rule files that add rules or override them by id
    host_ram: int | None = None  # bytes of CPU RAM offload may use; None: this machine's for its own GPUs
    calibration: bool = True  # apply what real runs measured on this GPU
    dataset_tokens: int | None = None  # the job's size (time and cost): tokens per epoch, or
    samples: int | None = None  # sequences per epoch (x seq_len)
    epochs: float = 1.0
    price_per_gpu_hour: float | None = None
    images_per_sample: int = 0  # a vision-language model's images per sequence (their tokens inside seq_len)
    image_size: int | None = None
    image_tokens: int | None = None
    lengths: str = "fixed"  # fixed (packed or padded to seq_len) or variable (unpacked: padded per batch)


@dataclass(frozen=True)
class ConfigRequest:
    """A configuration described by hand (estimate, limits, export or verify with explicit settings)."""

    model: str
    config: Mapping[str, object]  # TrainConfig fields
    hardware: GpuRequest = GpuRequest()
    effective_batch: int = 16
    calibration: bool = True
    dataset_tokens: int | None = None
    samples: int | None = None
    epochs: float = 1.0
    price_per_gpu_hour: float | None = None
    host_ram: int | None = None  # bytes of CPU RAM an offload may use, when the user said


# ---- results --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selected:
    """One configuration, ready to export, verify, sweep or stretch: the plan's choice, one of its
    alternatives, or a configuration described by hand, with its estimate on the GPUs it is for."""

    model_spec: str  # what the user typed for the model (a catalog name, a path, a hub id)
    arch: ModelArch
    hardware: Hardware | None
    cfg: TrainConfig
    estimate: object  # memory.result.MemoryEstimate
    effective_batch: int
    calibration: object | None = None  # the CalibrationPoint applied, if any
    option: int | None = None  # 0 = the plan's choice, N = its N-th alternative; None = by hand
    label: str = ""
    notes: tuple[str, ...] = ()  # what a front end should tell (an unreadable calibration store, ...)
    host_ram_bytes: int | None = None  # the CPU RAM the job's machine has, when known (--host-ram)

    @property
    def offload_fits(self) -> bool | None:
        """Whether what the job offloads fits the machine's CPU RAM: None when unknown or nothing is offloaded."""
        need = self.estimate.host_ram_bytes
        return None if self.host_ram_bytes is None or not need else need <= self.host_ram_bytes

    @property
    def capacity_bytes(self) -> int | None:
        return self.hardware.usable_bytes if self.hardware is not None else None

    @property
    def need_bytes(self) -> int:
        return self.estimate.peak_device_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.need_bytes <= self.capacity_bytes

    @property
    def grad_accum(self) -> int:
        return self.cfg.accumulation(self.effective_batch)


@dataclass(frozen=True)
class PlanResult:
    """Everything one question resolved to, and the answer.  Immutable: a front end renders it and
    passes it (or one of its options) back; it never patches it."""

    request: PlanRequest
    arch: ModelArch
    hardware: Hardware | None
    gpu_spec: object | None  # hardware.catalog.GpuSpec: the catalog facts of the card, when it is a known one
    hardware_source: str  # "detected", "catalog", "custom" or "none"
    calibrations: Mapping[str, object]
    host_ram_bytes: int | None
    goals: object  # planner.Goals
    plan: object  # planner.Plan
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.plan.chosen is not None

    @property
    def option_count(self) -> int:
        return 0 if self.plan.chosen is None else 1 + len(self.plan.alternatives)

    def option(self, index: int = 0):
        """The planner's Option: 0 the choice, N the N-th alternative."""
        if self.plan.chosen is None:
            raise NoFitError(self.plan.no_choice or "nothing fits",
                             "there is no option to take; see what would fit", field="option", value=index)
        options = [self.plan.chosen, *self.plan.alternatives]
        if not 0 <= index < len(options):
            raise UsageError(f"option {index} does not exist: the plan has options 0 (its choice) to {len(options) - 1}",
                             "0 is the chosen config, 1.. its alternatives in the order shown", field="option", value=index)
        return options[index]

    def select(self, index: int = 0) -> Selected:
        """An option of this plan with its own full estimate (the choice's is the plan's)."""
        option = self.option(index)
        calibration = self.calibrations.get(option.config.method)
        est = self.plan.estimate if index == 0 else _estimate(self.arch, option.config, self.hardware, calibration)
        return Selected(model_spec=self.request.model, arch=self.arch, hardware=self.hardware, cfg=option.config,
                        estimate=est, effective_batch=self.request.effective_batch, calibration=calibration,
                        option=index, label=option_label(option.config))

    def rejected(self, index: int) -> Selected:
        """A configuration that lost (the closest miss of its kind), with its estimate: to show why."""
        rejection = self.plan.rejected[index]
        calibration = self.calibrations.get(rejection.config.method)
        return Selected(model_spec=self.request.model, arch=self.arch, hardware=self.hardware, cfg=rejection.config,
                        estimate=_estimate(self.arch, rejection.config, self.hardware, calibration),
                        effective_batch=self.request.effective_batch, calibration=calibration, option=None,
                        label=option_label(rejection.config))

    def settled(self) -> list[str]:
        """The set-rule sentences that bear on the chosen config."""
        from .planner import settled_for

        return settled_for(self.plan)

    def report(self):
        """The `plan --json` document."""
        from .report import PlanReport

        return PlanReport.build(self.arch, self.hardware, self.goals, self.plan, request=_request_dict(self.request))


# ---- resolving the parts of a question -------------------------------------------------------------------
def resolve_model(spec: str) -> ModelArch:
    from .models import resolve_model as resolve

    try:
        return resolve(spec)
    except AdvisorError as err:
        err.field = err.field or "model"
        err.value = spec
        raise


def resolve_hardware(req: GpuRequest, detect: Detector | None = detect_gpus) -> tuple[Hardware | None, object | None, str]:
    """(hardware, catalog spec, source).  A named card or size wins over detection; without either, the
    GPUs this machine has (``detect`` is only called then), or None when there are none."""
    from .hardware import hardware_for
    from .hardware.catalog import UnknownGpuError, find_gpu, resolve_gpu
    from .units import parse_size

    gpu, vram, gpus = req.gpu.strip(), req.vram.strip(), req.gpus
    if gpus is not None and not 1 <= gpus <= MAX_GPUS:
        raise UsageError(f"{gpus} GPUs: a job has 1 to {MAX_GPUS}", "give a GPU count from 1 to 1024",
                         field="gpus", value=gpus)
    try:
        if gpu:
            try:
                resolve_gpu(gpu)
            except UnknownGpuError as unknown:
                try:  # not a card: a size for a custom one ("24GiB", "80GB", "24")
                    parse_size(gpu)
                except AdvisorError:
                    raise unknown from None
                gpu, vram = "", vram or gpu
            hardware = hardware_for(gpu or None, vram or None, gpus, None)
            source = "catalog" if gpu else "custom"
        elif vram:
            hardware, source = hardware_for(None, vram, gpus, None), "custom"
        else:
            detection = detect() if detect is not None else None
            hardware = hardware_for(None, None, gpus, detection)
            source = "detected" if hardware is not None else "none"
    except AdvisorError as err:
        err.field = err.field or ("vram" if vram and not gpu else "gpu")
        err.value = err.value if err.value is not None else (gpu or vram)
        raise
    if hardware is not None and hardware.count > MAX_GPUS:
        raise UsageError(f"{hardware.count} GPUs: a job has 1 to {MAX_GPUS}", "give a GPU count from 1 to 1024",
                         field="gpu", value=req.gpu)
    return hardware, (find_gpu(hardware.name) if hardware is not None else None), source


def _rules(paths: tuple[str, ...]):
    from .engine.rules import cached_default_rules, load_rules_file, merge

    rules = list(cached_default_rules())
    for path in paths:
        try:
            rules = merge(rules, load_rules_file(Path(path)))
        except AdvisorError as err:
            err.field, err.value = err.field or "rules", path
            raise
    return sorted(rules, key=lambda r: r.spec.priority)


def _calibrations(arch: ModelArch, hardware: Hardware | None, use: bool) -> tuple[Mapping[str, object], tuple[str, ...]]:
    if not use or hardware is None:
        return MappingProxyType({}), ()
    from .verify.calibration import points_by_method

    points, problem = points_by_method(hardware.name, arch.model_type)
    return MappingProxyType(dict(points)), ((problem,) if problem else ())


def _host_ram(req: PlanRequest, source: str, host_ram: Callable[[], int | None] | None) -> int | None:
    """The CPU RAM offload may use: the request's, else this machine's when the GPUs are this machine's
    (detected); a named card may sit in another box, so its RAM is unknown."""
    if req.host_ram is not None:
        return req.host_ram
    if source != "detected":
        return None
    if host_ram is None:
        from .hardware import host_ram_bytes as host_ram
    return host_ram()


def _goals(req: PlanRequest, hardware: Hardware | None):
    from .planner import Goals

    for name, value, high in (("seq_len", req.seq_len, MAX_SEQ_LEN),
                              ("effective_batch", req.effective_batch, MAX_EFFECTIVE_BATCH)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
            raise UsageError(f"{str(value)[:40]!r} is not a whole number from 1 to {high:,}",
                             "give a positive whole number within the stated maximum", field=name, value=value)
    if req.method not in METHOD_CHOICES:
        raise UsageError(f"unknown method {req.method!r}", "one of " + ", ".join(METHOD_CHOICES), field="method",
                         value=req.method)
    if req.prefer not in PREFER_CHOICES:
        raise UsageError(f"unknown preference {req.prefer!r}", "speed or quality", field="prefer", value=req.prefer)
    gpus = hardware.count if hardware is not None else (req.hardware.gpus or 1)
    _check_job(req.dataset_tokens, req.samples, req.epochs, req.price_per_gpu_hour)
    return Goals(seq_len=req.seq_len, effective_batch=req.effective_batch, method=req.method, prefer=req.prefer, gpus=gpus,
                 dataset_tokens=req.dataset_tokens, samples=req.samples, epochs=req.epochs,
                 price_per_gpu_hour=req.price_per_gpu_hour, images_per_sample=req.images_per_sample,
                 image_size=req.image_size, image_tokens=req.image_tokens, lengths=req.lengths)


MAX_DATASET_TOKENS = 10**15
MAX_EPOCHS = 1000
MAX_PRICE = 10_000.0


def _check_job(tokens, samples, epochs, price) -> None:
    """The job's size and price, each within its stated bound (errors name the field)."""
    if tokens is not None and samples is not None:
        raise UsageError("give the data set's size once: tokens or samples", "drop one of the two",
                         field="dataset_tokens", value=tokens)
    for name, value, high in (("dataset_tokens", tokens, MAX_DATASET_TOKENS), ("samples", samples, MAX_DATASET_TOKENS)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high):
            raise UsageError(f"{str(value)[:40]!r} is not a count from 1 to {high:.0e}", "give a positive count such as 50M",
                             field=name, value=value)
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not 0 < epochs <= MAX_EPOCHS:
        raise UsageError(f"{str(epochs)[:40]!r} epochs: give a number above 0 and at most {MAX_EPOCHS}",
                         "for example 2 or 0.5", field="epochs", value=epochs)
    if price is not None and (not isinstance(price, (int, float)) or isinstance(price, bool)
                              or not 0 <= price <= MAX_PRICE):
        raise UsageError(f"{str(price)[:40]!r} per GPU-hour: give a number from 0 to {MAX_PRICE:,.0f}",
                         "for example 0.7", field="price_per_gpu_hour", value=price)


def job_of(req) -> "object":
    """The throughput model's Job for a request that carries a job's size (PlanRequest, ConfigRequest)."""
    from .throughput import Job

    return Job.of(req)


def speed_of(sel: "Selected", job=None):
    """Tokens/s, step time and (for a job of known size) time, GPU-hours and cost of exactly this config."""
    from .memory.estimate import peaks
    from .throughput import gpu_perf, speed, throughput

    est = peaks(sel.arch, sel.cfg, sel.hardware, sel.calibration)
    ratio = getattr(sel.calibration, "tokens_per_s_ratio", None)
    tp = throughput(sel.arch, sel.cfg, est, sel.effective_batch, gpu_perf(sel.hardware.name if sel.hardware else None),
                    ratio)
    return speed(tp, sel.cfg.gpus, sel.cfg.seq_len, job, sel.calibration if ratio else None)


# ---- the questions ---------------------------------------------------------------------------------------
def plan(req: PlanRequest, detect: Detector | None = detect_gpus,
         host_ram: Callable[[], int | None] | None = None) -> PlanResult:
    """The fastest configuration that fits and passes the rules, with its alternatives and reasons."""
    from .planner import make_plan

    arch = resolve_model(req.model)
    hardware, spec, source = resolve_hardware(req.hardware, detect)
    goals = _goals(req, hardware)
    _check_images(arch, goals)
    rules = _rules(req.rules)
    calibrations, notes = _calibrations(arch, hardware, req.calibration)
    ram = _host_ram(req, source, host_ram)
    result = make_plan(arch, hardware, goals, rules, calibrations=dict(calibrations), host_ram_bytes=ram)
    return PlanResult(request=req, arch=arch, hardware=hardware, gpu_spec=spec, hardware_source=source,
                      calibrations=calibrations, host_ram_bytes=ram, goals=goals, plan=result, notes=notes)


def _check_images(arch, goals) -> None:
    """Images for a text-only model, or more image tokens than the sequence holds: refused before planning."""
    if goals.images_per_sample or goals.image_size or goals.image_tokens:
        from .memory.vision import image_inputs

        image_inputs(arch, train_config({"seq_len": goals.seq_len, **goals.image_fields}))


def train_config(fields: Mapping[str, object]) -> TrainConfig:
    """A TrainConfig from its fields; a field that is wrong is named (``field``) in the error."""
    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else None
        message = err["msg"].removeprefix("Value error, ")
        raise UsageError(message, "check the configuration's settings", field=name,
                         value=fields.get(name) if name else None) from None


def configure(req: ConfigRequest, detect: Detector | None = detect_gpus) -> Selected:
    """A configuration described by hand, estimated on its GPUs (with calibration as for a plan)."""
    _check_job(req.dataset_tokens, req.samples, req.epochs, req.price_per_gpu_hour)
    arch = resolve_model(req.model)
    hardware, _, _ = resolve_hardware(req.hardware, detect)
    fields = dict(req.config)
    if hardware is not None and hardware.count > 1 and fields.get("gpus", 1) == 1:
        fields["gpus"] = hardware.count  # --gpu 4xA100-80GB sets the job's GPU count
    cfg = train_config(fields)
    if cfg.has_images:
        from .memory.vision import image_inputs

        image_inputs(arch, cfg)  # images for a text-only model, or more image tokens than the sequence: refused
    calibrations, notes = _calibrations(arch, hardware, req.calibration)
    calibration = calibrations.get(cfg.method)
    sel = Selected(model_spec=req.model, arch=arch, hardware=hardware, cfg=cfg,
                   estimate=_estimate(arch, cfg, hardware, calibration), effective_batch=req.effective_batch,
                   calibration=calibration, option=None, label=option_label(cfg), notes=notes,
                   host_ram_bytes=req.host_ram)
    if sel.offload_fits is False:
        sel = replace(sel, notes=(*sel.notes, offload_note(sel)))
    return sel


def offload_note(sel: Selected) -> str:
    return (f"does not fit this machine's CPU RAM: the offload needs {sel.estimate.host_ram_bytes / GiB:.1f} GiB, "
            f"the machine has {sel.host_ram_bytes / GiB:.1f} GiB")


def _estimate(arch, cfg, hardware, calibration):
    from .memory import estimate

    return estimate(arch, cfg, hardware, calibration=calibration)


# ---- a saved `plan --json` --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedPlan:
    path: Path
    document: object  # report.PlanReport

    @property
    def option_count(self) -> int:
        plan = self.document.plan
        return 0 if plan.chosen is None else 1 + len(plan.alternatives)


def load_plan(path: Path) -> SavedPlan:
    """A document written by `plan --json`, validated against its schema."""
    from .report import PlanReport

    from .bounded import load_json, read_text

    where = str(path)
    hint = "give the file `plan --json` wrote"
    # bounded: a regular UTF-8 file of at most 16 MiB (a plan is ~25 KiB), depth 64, finite numbers
    text = read_text(path, 16 << 20, what="plan document", hint=hint, error=UsageError, field="plan_file")
    data = load_json(text, where, what="plan document", hint=hint, error=UsageError, field="plan_file")
    if not isinstance(data, dict) or "plan" not in data or "model" not in data:
        raise UsageError(f"{where} is not a plan document (no `plan` and `model`)",
                         "write one with `lora-advisor plan --json ... > plan.json`", field="plan_file", value=where)
    from .bounded import shown
    from .memory.result import SCHEMA_VERSION

    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise UsageError(f"{where} is a plan document of schema version {shown(version)}; this lora-advisor reads "
                         f"version {SCHEMA_VERSION}", "re-run `lora-advisor plan --json` with this version",
                         field="plan_file", value=where)
    # what a saved plan names is written into the exported files' headers: one printable line each
    gpu_name = (data.get("gpu") or {}).get("name") if isinstance(data.get("gpu"), dict) else None
    model_name = (data.get("model") or {}).get("name") if isinstance(data.get("model"), dict) else None
    for what, text in (("gpu.name", gpu_name), ("model.name", model_name)):
        if isinstance(text, str) and not text.isprintable():
            raise UsageError(f"{where}: {what} holds control characters", "re-run `lora-advisor plan --json`",
                             field="plan_file", value=where)
    try:
        return SavedPlan(path, PlanReport.model_validate(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"{where}: {loc}: {err['msg']}", "the file does not match the plan schema; re-run `plan --json`",
                         field="plan_file", value=where) from None


def saved_option(saved: SavedPlan, index: int = 0, calibration: bool = True) -> Selected:
    """Option ``index`` of a saved plan (0 its choice, N its N-th alternative), re-estimated on the GPUs
    the plan was for, with the model it was made for."""
    doc = saved.document
    plan_ = doc.plan
    if plan_.chosen is None:
        raise NoFitError(f"{saved.path}: the plan found nothing that fits", "there is no option to take",
                         field="option", value=index)
    options = [plan_.chosen, *plan_.alternatives]
    if not 0 <= index < len(options):
        raise UsageError(f"option {index} does not exist: {saved.path} has options 0 (its choice) to {len(options) - 1}",
                         "0 is the chosen config, 1.. its alternatives in the order shown", field="option", value=index)
    spec = (doc.request or {}).get("model") or doc.model.name
    arch = resolve_model(spec)
    hardware = None
    if doc.gpu:
        gpu = doc.gpu
        hardware = Hardware(name=gpu["name"], memory_bytes=gpu["memory_bytes"], count=gpu["count"],
                            in_use_bytes=max(gpu["memory_bytes"] - gpu["usable_bytes"], 0),
                            compute_capability=_compute_capability(gpu["name"]))
    cfg = options[index].config
    calibrations, _ = _calibrations(arch, hardware, calibration)
    point = calibrations.get(cfg.method)
    return Selected(model_spec=spec, arch=arch, hardware=hardware, cfg=cfg, estimate=_estimate(arch, cfg, hardware, point),
                    effective_batch=int(doc.goals.get("effective_batch", 16)), calibration=point, option=index,
                    label=option_label(cfg))


def _compute_capability(name: str):
    from .hardware.catalog import find_gpu

    spec = find_gpu(name)
    return spec.compute_capability if spec else None


def _request_dict(req: PlanRequest) -> dict:
    return {"model": req.model, "gpu": req.hardware.gpu, "vram": req.hardware.vram, "gpus": req.hardware.gpus,
            "seq_len": req.seq_len, "effective_batch": req.effective_batch, "method": req.method,
            "prefer": req.prefer, "rules": list(req.rules), "host_ram_bytes": req.host_ram,
            "calibration": req.calibration}


# ---- what one option leads to ----------------------------------------------------------------------------
def option_label(cfg: TrainConfig) -> str:
    """A short name for a configuration, the same in the CLI's list and the app's."""
    method = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA", "lora8bit": "LoRA 8-bit"}[cfg.method]
    rank = f" r{cfg.rank}" if cfg.uses_adapters else ""
    parts = [f"{method}{rank}", "ckpt" if cfg.grad_ckpt else "no ckpt", f"bs {cfg.micro_batch}"]
    if cfg.method == "full" and cfg.master_weights:
        parts.append("fp32 master")
    if cfg.sharding not in ("single",):
        parts.append(cfg.sharding)
    if cfg.offload != "none":
        parts.append(f"offload {cfg.offload}")
    if cfg.optimizer != "adamw":  # what else tells two options of the same method and rank apart
        parts.append({"adamw_8bit": "8-bit Adam", "paged_adamw_8bit": "paged 8-bit Adam"}.get(cfg.optimizer, cfg.optimizer))
    if cfg.loss != "standard":
        parts.append({"chunked": "chunked CE", "shifted": "shifted CE"}[cfg.loss])
    return " · ".join(parts)


@dataclass(frozen=True)
class RankRow:
    rank: int
    trainable_params: int
    adapter_state_bytes: int  # adapters + their gradients + optimizer states
    peak_allocated_bytes: int
    peak_device_bytes: int
    fits: bool | None


def rank_sweep(sel: Selected, ranks: tuple[int, ...] = DEFAULT_RANKS) -> list[RankRow]:
    """How the rank moves memory for this option (it barely does: sequence length and targets do)."""
    if not sel.cfg.uses_adapters:
        raise UsageError("full fine-tuning has no rank", "a rank sweep needs a LoRA or QLoRA configuration",
                         field="method", value=sel.cfg.method)
    rows = []
    for rank in ranks:
        est = _estimate(sel.arch, sel.cfg.model_copy(update={"rank": rank}), sel.hardware, sel.calibration)
        state = sum(est.component(n).bytes for n in ("adapters", "gradients", "optimizer_states"))
        rows.append(RankRow(rank, est.trainable_params, state, est.peak_allocated_bytes, est.peak_device_bytes, est.fits))
    return rows


def limits(sel: Selected):
    """(longest sequence, largest micro batch) that fit this option on its GPU."""
    from .limits import fit_limits

    if sel.hardware is None:
        raise UsageError("limits need a GPU to fit into: none was detected or named",
                         "name a GPU or a memory size", field="gpu", value="")
    return fit_limits(sel.arch, sel.cfg, sel.hardware, sel.calibration)


@dataclass(frozen=True)
class ExportOutcome:
    written: tuple[Path, ...]
    skipped: Mapping[str, str]  # format -> why it does not apply to this config
    formats: tuple[str, ...]  # the formats written
    selected: Selected
    notes: tuple[str, ...] = ()  # where a file trains differently from what the plan said, and why


def export_context(sel: Selected):
    from .export import ExportContext
    from .models.catalog import hub_id_for

    model_id = hub_id_for(sel.arch.name)
    if model_id == sel.arch.name:  # not a catalog model: what the user gave (a hub id, or the model's folder)
        spec = Path(sel.model_spec).expanduser()
        model_id = str(spec.parent) if spec.suffix == ".json" else sel.model_spec
    return ExportContext(arch=sel.arch, cfg=sel.cfg, estimate=sel.estimate, model_id=model_id,
                         effective_batch=sel.effective_batch,
                         gpu_name=sel.hardware.name if sel.hardware else "unknown GPU",
                         capacity_bytes=sel.capacity_bytes, option=sel.option)


def parse_formats(text: str) -> tuple[str, ...]:
    """``all`` or a comma list of format names; an empty or unknown name is refused."""
    names = tuple(part.strip() for part in text.split(","))
    if text.strip() == "all":
        return ("all",)
    if not text.strip() or any(not n for n in names):
        raise UsageError(f"no export format in {text!r}", "name formats: all, " + ", ".join(EXPORT_FORMATS),
                         field="format", value=text)
    for name in names:
        if name not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {name!r}", "formats: all, " + ", ".join(EXPORT_FORMATS),
                             field="format", value=name)
    return tuple(dict.fromkeys(names))


def render_export(sel: Selected, formats: tuple[str, ...], allow_no_fit: bool = False
                  ) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """The files of the formats that apply to this option: (files, skipped {format: why}, formats written).
    ``("all",)`` writes every format that applies; an explicit format that does not apply is refused before
    anything is rendered, naming the formats that do."""
    from .export import ExportError, render_all
    from .export.launch import companions

    _refuse_older_stack(sel.cfg, "export without it: its estimate is the one the exported job runs")
    if sel.cfg.stack == "torchtune":
        # torchtune trains pure 16-bit with its own modules; every format here runs transformers' model under the HF
        # Trainer (PEFT's fp32 adapters, autocast), a different run with a different peak
        raise UsageError("lora-advisor writes no torchtune recipe: every export format runs the HF stack, whose "
                         "estimate differs from torchtune's", "export without --stack torchtune (or write the "
                         "torchtune recipe config by hand from this estimate)", field="stack", value="torchtune")
    if sel.cfg.method == "lora8bit" and (sel.cfg.fsdp or sel.cfg.zero == 3):
        # sharding a quantized base needs its storage in a float dtype (bnb_4bit_quant_storage), which only 4-bit
        # has: LLaMA-Factory refuses it ("Only 4-bit quantized model can use fsdp+qlora", model_utils/quantization.py)
        # and LLM.int8's Int8Params break under FSDP's flat parameters (accelerate#1415)
        raise UsageError(f"LoRA on an 8-bit base cannot be sharded ({'FSDP' if sel.cfg.fsdp else 'ZeRO-3'}): only a "
                         "4-bit base stores its weights in a dtype FSDP and ZeRO-3 can shard",
                         "use --method qlora, or ZeRO-2 / one GPU per replica", field="method", value="lora8bit")
    if sel.fits is False and not allow_no_fit:
        raise NoFitError(f"{sel.label} needs {sel.need_bytes / GiB:.2f} GiB per GPU but {sel.hardware.name} has "
                         f"{sel.capacity_bytes / GiB:.2f} GiB usable: nothing exported",
                         "choose an option that fits (plan), or export anyway with allow-no-fit", field="allow_no_fit")
    if sel.offload_fits is False and not allow_no_fit:
        raise NoFitError(f"{sel.label} offloads {sel.estimate.host_ram_bytes / GiB:.1f} GiB to CPU RAM but the machine "
                         f"has {sel.host_ram_bytes / GiB:.1f} GiB: nothing exported",
                         "offload less (ZeRO-3 without offload, more GPUs), or export anyway with allow-no-fit",
                         field="allow_no_fit")
    ctx = export_context(sel)
    # every format once: what the wanted ones write, and for a refusal, which formats would apply
    by_format: dict[str, dict[str, str]] = {}
    why_not: dict[str, str] = {}
    for name in EXPORT_FORMATS:
        try:
            trains = _as_format_trains(sel, ctx, name)
            by_format[name] = render_all(trains, [name])
            if trains is not ctx:  # its companions (accelerate.yaml, ds_config.json) are the plan's, as in every format
                by_format[name].update(companions(ctx, name))
        except ExportError as err:
            why_not[name] = err.message + (f" ({err.hint})" if err.hint else "")
    wanted = EXPORT_FORMATS if formats == ("all",) else formats
    skipped = {name: why_not[name] for name in wanted if name in why_not}
    if formats != ("all",) and skipped:
        name, why = next(iter(skipped.items()))
        raise UsageError(f"{name} does not apply to {sel.label}: {why}",
                         "formats that apply: " + (", ".join(by_format) or "none") + " (or all)",
                         field="format", value=name)
    written = tuple(n for n in wanted if n not in skipped)
    files: dict[str, str] = {}
    for name in written:
        for filename, text in by_format[name].items():
            if filename in files and files[filename] != text:  # two formats must never write one file two ways
                raise AdvisorError(f"internal: {name} and another format both write {filename} differently", "report this")
            files[filename] = text
    if not files:
        by_reason: dict[str, list[str]] = {}
        for name, why in skipped.items():
            by_reason.setdefault(why, []).append(name)
        raise UsageError(f"no format applies to {sel.label}",
                         "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items()),
                         field="format", value=",".join(formats))
    return files, skipped, written


def _refuse_older_stack(cfg, hint: str) -> None:
    """Settings that describe an older or hand-written stack than the exported files run: the frameworks they are for
    keep the norms 16-bit (current TRL, axolotl's cast back, LLaMA-Factory) and compute the loss as transformers 4.49
    on does, so a file would train a different run than the one estimated."""
    if cfg.kbit_upcast != "none":
        raise UsageError(f"fp32 norms ({cfg.kbit_upcast}: --kbit-upcast, or a LLaMA-Factory file's upcast_layernorm) "
                         "describe a script that calls PEFT's prepare_model_for_kbit_training, TRL 0.7.5-0.25 or that "
                         "setting; the exported files keep the norms 16-bit, so none of them trains that run", hint,
                         field="kbit_upcast", value=cfg.kbit_upcast)
    if cfg.loss == "shifted":
        raise UsageError("--loss shifted describes transformers before 4.49; the exported job runs a current one, "
                         "whose loss makes no shifted copy of the logits", hint, field="loss", value=cfg.loss)


# The stack each format runs on (memory/config.py Stack): TRL's SFTTrainer always computes the loss with its
# fused LM head in tiles, so a trl-yaml file is the chunked-loss config whatever the plan's loss was.
FORMAT_TRAINS = {"trl-yaml": {"stack": "trl"}, "axolotl": {"stack": "axolotl"},
                 "llamafactory": {"stack": "llamafactory"}}


def _as_format_trains(sel: Selected, ctx, name: str):
    """The export context of the configuration this format really trains, with that configuration's estimate."""
    update = {k: v for k, v in FORMAT_TRAINS.get(name, {}).items() if getattr(sel.cfg, k) != v}
    if not update:
        return ctx
    from dataclasses import replace as replace_fields

    cfg = train_config({**sel.cfg.model_dump(), **update})  # validated: the stack decides its loss
    # the stack alone can change memory (TRL's 16-bit QLoRA adapters: TrainConfig.adapters_stored_16bit)
    return replace_fields(ctx, cfg=cfg, estimate=_estimate(sel.arch, cfg, sel.hardware, sel.calibration))


def export(sel: Selected, formats: tuple[str, ...], target: Path, force: bool = False,
           allow_no_fit: bool = False) -> ExportOutcome:
    """Write the option's configuration for the frameworks: all files or none."""
    from .export.writer import write_files

    files, skipped, written_formats = render_export(sel, formats, allow_no_fit)
    try:
        written = write_files(files, target, force)
    except AdvisorError as err:
        err.field = err.field or "output"
        raise
    notes = ()
    if "llamafactory" in written_formats:
        from .export.yaml_formats import neat_packing_note

        notes = tuple(n for n in (neat_packing_note(export_context(sel)),) if n)
    return ExportOutcome(tuple(written), MappingProxyType(skipped), written_formats, sel, notes)


__all__ = ["ConfigRequest", "ExportOutcome", "GpuRequest", "PlanRequest", "PlanResult", "RankRow", "SavedPlan",
           "Selected", "configure", "export", "limits", "load_plan", "option_label", "parse_formats", "plan",
           "rank_sweep", "render_export", "resolve_hardware", "saved_option", "train_config"]


# ---- verification: the option's training step, run or traced -------------------------------------------
VERIFY_MODES = ("auto", "cuda", "cpu", "dry")


def verify_mode(mode: str, detect: Detector | None = detect_gpus) -> tuple[str, str | None]:
    """(mode, note): ``auto`` is the GPU when CUDA has one, else the fake-tensor dry run."""
    if mode != "auto":
        return mode, None
    detection = detect() if detect is not None else None
    if detection is not None and detection.gpus:
        return "cuda", None
    reason = getattr(detection, "reason", None) or "no GPU detected"
    return "dry", f"no CUDA GPU ({reason}): running the dry run on fake tensors instead"


VERIFY_RUNNERS = ("job", "step")


def start_verify(sel: Selected, mode: str, steps: int, workdir: Path | None = None, runner: str = "job"):
    """A child process for the option, with ``events()`` and ``cancel()``.  On CUDA, runner ``job`` is the
    exported `train.py` itself (through `accelerate launch` for several GPUs) on random weights and synthetic
    tokens: what will be run; runner ``step`` is the bare training step the oracle traces (random weights for
    every method, 4-bit included: no download), which isolates the stack's own memory from the step's.  On
    the CPU a tiny real run; ``dry`` traces one step on fake tensors."""
    if runner not in VERIFY_RUNNERS:
        raise UsageError(f"unknown runner {runner!r}", "job (the exported train.py) or step (the bare step)",
                         field="runner", value=runner)
    if mode == "cuda" and runner == "job":
        _refuse_older_stack(sel.cfg, "verify with --runner step (the bare step, as configured)")
    if sel.cfg.method == "qlora" and sel.cfg.quant_type in PREQUANTIZED:
        # the run builds its 4-bit base with bitsandbytes; a GPTQ/AWQ base is a checkpoint with its own kernels
        raise UsageError(f"the verification run cannot build a {sel.cfg.quant_type.upper()} base (it quantizes with "
                         "bitsandbytes; GPTQ/AWQ need their checkpoint and kernels)",
                         "verify the bitsandbytes QLoRA of the same setup (quant nf4) instead",
                         field="quant_type", value=sel.cfg.quant_type)
    if mode == "dry":
        from .verify.dryrun import refuse_untraceable

        refuse_untraceable(sel.cfg)
    if mode == "cuda" and runner == "step" and (sel.cfg.zero or sel.cfg.fsdp or sel.cfg.gpus > 1):
        # the bare step is one process without a stack: what DeepSpeed or FSDP add would read as the estimate's error
        raise UsageError("the bare step runs no DeepSpeed, FSDP or second GPU",
                         "verify this plan with --runner job (the exported train.py under accelerate launch)",
                         field="runner", value=runner)
    if mode == "cuda" and runner == "job":
        import tempfile

        from .export.writer import write_files
        from .verify.launch import ExportedRun

        directory = workdir or Path(tempfile.mkdtemp(prefix="lora-advisor-verify-"))
        files, _, _ = render_export(sel, ("peft-trl",), allow_no_fit=True)
        write_files(files, directory, force=True)
        # random weights need no download; a 4-/8-bit base is quantised while loading a checkpoint, so those
        # plans load the real one
        return ExportedRun(directory, sel.cfg.gpus, steps, random_init=sel.cfg.method not in ("qlora", "lora8bit"))
    from .verify.runner import VerifyRun

    workspace = None
    if mode == "dry" and sel.cfg.gpus == 1:
        # one GPU's allocations are traced in order, so they also replay through the caching allocator
        from .memory.overheads import cublas_workspace_bytes

        workspace = cublas_workspace_bytes(sel.hardware.compute_capability if sel.hardware else None)
    return VerifyRun(sel.arch, sel.cfg, mode, steps, workspace_bytes=workspace)


def verify_report(sel: Selected, mode: str, events: list[dict], save_calibration: bool = True):
    """Measured against predicted; a real CUDA run also stores a calibration point for this GPU."""
    from .report import VerifyReport

    report = VerifyReport.build(sel.arch, sel.cfg, mode, sel.estimate, events)
    if mode == "cuda" and save_calibration:
        from .verify.calibration import point_from_report, save_point

        point = point_from_report(report, sel.arch, report.environment)
        saved = save_point(point) if point is not None else None
        if saved is not None:  # None: no home directory to keep the store in
            report.calibration_saved = str(saved)
    return report
