"""Calibration from real runs: what a GPU run measured, stored per setup, applied to later estimates.

The tensor-level model is checked against the oracle; what only a GPU shows (allocator fragmentation,
the CUDA context, kernel workspaces, bitsandbytes' CUDA temporaries) is what calibration learns.  Each
real `verify` run stores one point in the user data directory (platformdirs); later estimates for the
same GPU, model family and method apply the newest point and say so.  A corrupt store is reported and
ignored, never fatal.  Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import write_text_atomic
from ..memory.overheads import nccl_bytes, nccl_communicators

STORE_NAME = "calibration.json"
MAX_STORE_BYTES = 16 << 20  # ~40,000 points; a larger file is not ours: reported and ignored
MAX_POINTS = 500  # the store keeps the newest points; older ones are dropped when a point is saved


class CalibrationPoint(BaseModel):
    model_config = ConfigDict(defer_build=True)  # imported by every plan; built only when a store exists

    gpu_name: str
    driver_version: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None
    stack: dict[str, str] = Field(default_factory=dict, description="transformers / peft / bitsandbytes versions.")
    model_family: str
    method: str
    allocated_ratio: float = Field(gt=0, le=10, description="measured / predicted peak allocated bytes.")
    reserved_over_allocated: float = Field(ge=1.0, le=10, description="measured peak reserved / peak allocated.")
    context_bytes: int | None = Field(None, ge=0, le=1 << 40,
                                      description="device used (NVML) - reserved: context + outside torch.")
    tokens_per_s_ratio: float | None = Field(None, ge=0.01, le=100, description="measured / estimated tokens/s "
                                             "(median of the steps after the first; one micro batch per step).")
    measured_at: str


def store_path() -> Path | None:
    """The store's file; None when there is nowhere to keep it (no home directory)."""
    override = os.environ.get("LORA_ADVISOR_DATA_DIR")
    if override:
        return Path(override) / STORE_NAME
    from ..engine.cache import user_dir

    directory = user_dir("data")
    return None if directory is None else directory / STORE_NAME


def load_points(path: Path | None = None) -> tuple[list[CalibrationPoint], str | None]:
    """(points, problem): a missing store is empty; a corrupt one (unreadable, too large, too deeply nested, not
    the store's shape) is empty plus a one-line problem."""
    from ..bounded import load_json, read_text
    from ..errors import AdvisorError

    path = path or store_path()
    if path is None or not path.exists():
        return [], None
    try:
        data = load_json(read_text(path, MAX_STORE_BYTES, what="calibration store"), str(path))
        return [CalibrationPoint.model_validate(item) for item in data["points"]], None
    except AdvisorError as exc:
        return [], f"calibration store {path} is unreadable ({exc.message.removeprefix(str(path)).strip(': ')}); ignored"
    except (OSError, ValueError, KeyError, TypeError, ValidationError, RecursionError) as exc:
        return [], f"calibration store {path} is unreadable ({type(exc).__name__}); ignored"


def save_point(point: CalibrationPoint, path: Path | None = None) -> Path | None:
    """Add a point (keeping the newest MAX_POINTS); None when there is nowhere to store it."""
    path = path or store_path()
    if path is None:
        return None
    points, problem = load_points(path)
    points = sorted([*points, point], key=lambda p: p.measured_at)[-MAX_POINTS:]
    payload = json.dumps({"schema_version": 1, "points": [p.model_dump() for p in points]}, indent=2)
    write_text_atomic(path, payload, prefix=".calibration-")
    return path


def canonical_gpu_name(name: str) -> str:
    """The catalog name when the GPU is catalogued: NVML's "NVIDIA GeForce RTX 4090" and --gpu 4090 agree."""
    from ..hardware.catalog import find_gpu

    spec = find_gpu(name)
    return spec.name if spec else name


def find_point(gpu_name: str, model_family: str, method: str, path: Path | None = None) -> tuple[CalibrationPoint | None, str | None]:
    newest, problem = points_by_method(gpu_name, model_family, path)
    return newest.get(method), problem


def points_by_method(gpu_name: str, model_family: str, path: Path | None = None) -> tuple[dict, str | None]:
    """{method: newest point} for this GPU and model family (what a plan over every method applies)."""
    points, problem = load_points(path)
    gpu = canonical_gpu_name(gpu_name)
    newest: dict[str, CalibrationPoint] = {}
    for point in sorted(points, key=lambda p: p.measured_at):
        if (canonical_gpu_name(point.gpu_name), point.model_family) == (gpu, model_family):
            newest[point.method] = point
    return newest, problem


def tokens_per_s_ratio(report, arch, gpu_name: str | None) -> float | None:
    """Measured / estimated tokens/s of a real run: the median step after the first (which builds the optimizer
    states and warms the kernels) against the throughput model's one micro batch + optimizer step on this GPU.
    None when the run measured no speed, or a ratio outside 0.01-100 (not a measurement of this setup)."""
    import statistics
    from types import SimpleNamespace

    from ..throughput import gpu_perf, throughput

    rates = [float(s["tokens_per_s"]) for s in report.steps[1:] if isinstance(s.get("tokens_per_s"), (int, float))]
    if not rates or not gpu_name:
        return None
    cfg = report.config
    params = SimpleNamespace(trainable_params=report.model.trainable_params, total_params=report.model.params)
    estimated = throughput(arch, cfg, params, cfg.micro_batch * cfg.gpus, gpu_perf(gpu_name)).tokens_per_s / cfg.gpus
    ratio = statistics.median(rates) / estimated
    return ratio if 0.01 <= ratio <= 100 else None


def point_from_report(report, arch, environment: dict) -> CalibrationPoint | None:
    """A point from a real CUDA verify report (None when it measured nothing usable)."""
    checks = {c.phase: c for c in report.checks}
    if "allocated" not in checks or "reserved" not in checks or not checks["reserved"].judged:
        return None  # a reserved level the verdict does not judge (unpacked data's cache) is no allocator ratio
    cfg = report.config
    if cfg.zero:
        # A point is applied by GPU, model family and method, whatever the stack.  DeepSpeed's reserved level
        # holds its flat partitions beside the first step's cache (overheads.zero_first_step_cache): a ratio
        # that would carry over to plans without DeepSpeed.  Its estimate models that cache instead.
        return None
    allocated = checks["allocated"]
    reserved = checks["reserved"]
    context = None
    if report.peak_device_sample_bytes:
        # the CUDA context alone: NCCL's communicators (FSDP starts them on one GPU too) are the estimate's own
        # term, added to every plan that has them and to none that has not
        nccl = nccl_bytes(cfg.gpus, nccl_communicators(cfg.gpus, cfg.zero, cfg.fsdp))
        context = max(report.peak_device_sample_bytes - reserved.measured_bytes - nccl, 0)
    speed = tokens_per_s_ratio(report, arch, environment.get("gpu_name"))
    return CalibrationPoint(
        tokens_per_s_ratio=speed,
        gpu_name=canonical_gpu_name(environment.get("gpu_name") or "unknown"), driver_version=environment.get("driver_version"),
        cuda_version=environment.get("cuda_version"), torch_version=environment.get("torch_version"),
        stack=environment.get("stack", {}), model_family=arch.model_type, method=report.config.method,
        allocated_ratio=allocated.measured_bytes / allocated.predicted_bytes,
        reserved_over_allocated=max(1.0, reserved.measured_bytes / max(allocated.measured_bytes, 1)),
        context_bytes=context, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
