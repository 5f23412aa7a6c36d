"""Plain-text rendering for the terminal (the --json path never imports this)."""

from __future__ import annotations

from .errors import printable

from .memory.config import TrainConfig
from .memory.result import MemoryEstimate
from .models.arch import ModelArch
from .planner import settled_for
from .units import GiB, format_bytes


def _describe(cfg: TrainConfig) -> str:
    parts = [cfg.method]
    if cfg.uses_adapters:
        parts.append(f"r{cfg.rank} {','.join(cfg.targets)}" + (f" dropout {cfg.lora_dropout:g}" if cfg.lora_dropout else ""))
    if cfg.method == "qlora":
        parts.append(cfg.quant_type + ("+dq" if cfg.double_quant and cfg.quant_type in ("nf4", "fp4") else ""))
        if cfg.kbit_upcast != "none":
            parts.append("fp32 norms" if cfg.kbit_upcast == "norms" else "fp32 norms+embeddings")
    parts += [cfg.precision, f"seq {cfg.seq_len} x micro batch {cfg.micro_batch}", cfg.optimizer]
    if cfg.grad_ckpt:
        parts.append("grad ckpt")
    if cfg.gpus > 1 or cfg.sharding != "single":
        parts.append(f"{cfg.gpus} GPUs {cfg.sharding}")
    if cfg.offload != "none":
        parts.append(f"offload {cfg.offload}")
    if cfg.loss == "shifted":
        parts.append("shifted loss (transformers < 4.49)")
    if cfg.loss == "chunked":
        parts.append("chunked CE")
    if cfg.stack != "auto":
        parts.append(f"on {cfg.stack}")
    return " · ".join(parts)


def range_text(est: MemoryEstimate) -> str:
    low, high = est.peak_device_range_bytes
    return f"{low / GiB:.2f}-{high / GiB:.2f} GiB"


def estimate_table(arch: ModelArch, cfg: TrainConfig, est: MemoryEstimate) -> str:
    lines = [f"{arch.name}: {est.total_params / 1e9:.2f} B params, {est.trainable_params:,} trainable",
             _describe(cfg), ""]
    peak = est.peak_device_bytes
    lines.append(f"{'component':<34}{'GiB':>9}{'share':>8}")
    for comp in est.components:
        if comp.bytes:
            lines.append(f"{comp.label:<34}{comp.bytes / GiB:>9.2f}{100 * comp.bytes / peak:>7.1f}%")
    lines.append("(each term at its own largest; they peak at different moments of the step)")
    lines.append("")
    ph = est.phases
    lines.append(f"phase peaks (tensors): forward {ph.forward / GiB:.2f} · backward {ph.backward / GiB:.2f} · "
                 f"optimizer {ph.optimizer / GiB:.2f} GiB  (peak in {est.peak_phase})")
    lines.append(f"peak allocated {format_bytes(est.peak_allocated_bytes)} · reserved {format_bytes(est.peak_reserved_bytes)}"
                 f" · device (nvidia-smi) {format_bytes(est.peak_device_bytes)}")
    lines.append(f"device range {range_text(est)} ({est.range_basis})")
    if est.host_ram_bytes:
        lines.append(f"host RAM for offload: {format_bytes(est.host_ram_bytes)}")
    if est.capacity_bytes is not None:
        verdict = {"fits": "fits", "tight": "TIGHT (the card lies inside the range)",
                   "does_not_fit": "does NOT fit"}.get(est.fit, "fits" if est.fits else "does NOT fit")
        lines.append(f"{verdict}: {format_bytes(est.peak_device_bytes)} expected, up to "
                     f"{format_bytes(est.peak_device_range_bytes[1])}, of {format_bytes(est.capacity_bytes)} "
                     f"(headroom {format_bytes(est.headroom_bytes)})")
    lines += [f"note: {note}" for note in est.notes]
    return "\n".join(lines)


def rank_table(arch: ModelArch, cfg: TrainConfig, rows) -> str:
    lines = [f"{arch.name}: rank sweep · {_describe(cfg)}", "",
             f"{'rank':>5}{'adapter params':>16}{'adapter+grad+opt':>18}{'peak alloc':>12}{'device':>10}"]
    for row in rows:
        fits = "" if row.fits is None else ("  fits" if row.fits else "  no fit")
        lines.append(f"{row.rank:>5}{row.adapter_params:>16,}{row.adapter_state_bytes / GiB:>14.2f} GiB"
                     f"{row.peak_allocated_bytes / GiB:>8.2f} GiB{row.peak_device_bytes / GiB:>6.2f} GiB{fits}")
    lines.append("rank moves the adapters; sequence length, micro batch and targets move the activations.")
    return "\n".join(lines)


def gpus_table(report) -> str:
    if not report.gpus:
        return f"no GPUs: {report.reason}\nhint: {report.hint}"
    driver = report.driver
    lines = [f"driver {driver.driver_version or '?'} · CUDA {driver.cuda_driver_version or '?'}" if driver else "",
             f"{'idx':>3}  {'name':<30}{'used':>11}{'total':>11}{'free':>11}  {'cc':<5}{'bf16':<6}{'MIG':<5}{'NVLink':<7}"]
    for g in report.gpus:
        def size(value):
            return format_bytes(value, 1) if value is not None else "?"

        cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
        flag = "" if g.cuda_visible else "  (hidden by CUDA_VISIBLE_DEVICES)"
        lines.append(f"{g.index:>3}  {g.name[:30]:<30}{size(g.used_bytes):>11}{size(g.total_bytes):>11}{size(g.free_bytes):>11}  "
                     f"{cc:<5}{_yes(g.bf16):<6}{_yes(g.mig_enabled):<5}{_yes(g.nvlink_active):<7}{flag}")
        for mig in g.mig_instances:
            lines.append(f"     MIG {mig.index}: {size(mig.used_bytes)} / {size(mig.total_bytes)}  {mig.uuid or ''}")
        for proc in g.processes:
            lines.append(f"     pid {proc.pid:<8} {(proc.name or '?')[:40]:<40} {size(proc.used_bytes)}")
    return "\n".join(lines)


def _yes(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def duration_text(seconds: float) -> str:
    """3 h 20 min, 2.4 days, 45 min, 30 s."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def speed_lines(speed) -> list[str]:
    """Throughput and, for a job of known size, its time, GPU-hours and cost, each as a low-high range."""
    if speed is None:
        return []
    low, high = speed.tokens_per_s_range
    lines = [f"speed: ~{speed.tokens_per_s:,.0f} tokens/s ({low:,.0f}-{high:,.0f}), "
             f"{speed.step_s:.1f} s per optimizer step ({speed.step_s_range[0]:.1f}-{speed.step_s_range[1]:.1f}), "
             f"MFU {100 * speed.mfu:.0f} %" + (" · calibrated from a real verify run" if speed.calibrated else "")]
    if speed.wall_s is not None:
        epochs = f"{speed.epochs:g} epoch{'s' if speed.epochs != 1 else ''}"
        lines.append(f"time: ~{duration_text(speed.wall_s)} ({duration_text(speed.wall_s_range[0])} - "
                     f"{duration_text(speed.wall_s_range[1])}) for {speed.dataset_tokens:,} tokens x {epochs}, "
                     f"{speed.steps:,} steps")
        lines.append(f"GPU-hours: ~{speed.gpu_hours:,.1f} ({speed.gpu_hours_range[0]:,.1f}-{speed.gpu_hours_range[1]:,.1f}) "
                     f"on {speed.gpus} GPU{'s' if speed.gpus != 1 else ''}")
        if speed.cost is not None:
            lines.append(f"cost: ~{speed.cost:,.2f} ({speed.cost_range[0]:,.2f}-{speed.cost_range[1]:,.2f}) "
                         f"at {speed.price_per_gpu_hour:g} per GPU-hour")
    else:
        lines.append("time: give --dataset-tokens (or --samples) and --epochs for the time to train and its cost")
    return lines


def plan_text(report) -> str:
    plan = report.plan
    gpu = report.gpu
    head = f"{report.model.name} on {gpu.get('count', 1)}x {gpu['name']} ({format_bytes(gpu['usable_bytes'])} usable)" \
        if gpu else f"{report.model.name} (no GPU known: give --gpu or --vram)"
    lines = [head, ""]
    if plan.chosen is None:
        lines.append(f"{plan.no_choice or 'nothing fits'}.")
        if plan.what_would_fit:
            lines.append("what would make a plan exist:")
        lines += [f"  - {item}" for item in plan.what_would_fit]
    else:
        cfg = plan.chosen.config
        lines.append("plan: " + _describe(cfg) + f" · grad accum {plan.chosen.grad_accum}")
        est = plan.estimate
        lines.append(f"memory: {format_bytes(est.peak_device_bytes)} device peak, range {range_text(est)} "
                     f"(allocated {format_bytes(est.peak_allocated_bytes)}, peak in {est.peak_phase})")
        lines += speed_lines(plan.chosen.speed)
        lines.append("")
        lines.append("why:")
        lines += [f"  ✓ {printable(reason)}" for reason in plan.chosen.reasons]
    # a rule pack's `because` is the user's text: escaped, one line each, never a terminal sequence
    lines += [f"  ✓ {printable(sentence)}" for sentence in settled_for(plan)]
    lines += [f"  ✗ {r.option}: {printable(r.reason)}" for r in plan.rejected]
    lines += [f"  ! {printable(w)}" for w in plan.warnings]
    if plan.alternatives:
        lines += ["", "alternatives (option N: `export --plan plan.json --option N` after `plan --json > plan.json`):"]
        for index, alt in enumerate(plan.alternatives, start=1):
            lines.append(f"  {index:>2}  {_describe(alt.config):<70} {format_bytes(alt.need_bytes):>11}  "
                         f"~{alt.tokens_per_s:,.0f} tok/s" + (f" · {duration_text(alt.speed.wall_s)}"
                                                              if alt.speed and alt.speed.wall_s else ""))
    lines.append(f"\n({plan.candidates_evaluated} candidates evaluated)")
    return "\n".join(lines)


def verify_text(report) -> str:
    lines = [f"{report.model.name} · {_describe(report.config)} · {report.mode}"]
    if report.error:
        lines.append(f"error: {report.error}" + (f" (hint: {report.hint})" if report.hint else ""))
    if report.oom:
        lines.append(f"does not fit: out of memory at step {report.oom.get('step')}"
                     + (f" with {format_bytes(report.oom['allocated_bytes'])} allocated" if report.oom.get("allocated_bytes") else ""))
        lines.append("next: `lora-advisor plan` with the same flags proposes a setup that fits")
    if report.checks:
        lines.append(f"{'':<12}{'predicted':>14}{'measured':>14}{'error':>9}")
        for check in report.checks:
            lines.append(f"{check.phase:<12}{format_bytes(check.predicted_bytes):>14}{format_bytes(check.measured_bytes):>14}"
                         f"{check.error_percent:>+8.2f}%" + ("  (not judged)" if not check.judged else ""))
        if report.mode == "dry" and any(check.phase == "reserved" for check in report.checks):
            lines.append("(dry run: allocated and reserved are the traced allocations replayed through PyTorch's "
                         "caching allocator)")
        for why in dict.fromkeys(c.not_judged_because for c in report.checks if not c.judged):
            lines.append(f"(not judged: {why})")
    if report.steps:
        last = report.steps[-1]
        lines.append(f"{len(report.steps)} steps · last loss {last['loss']:.3f} · {last['tokens_per_s']:,.0f} tokens/s")
    return "\n".join(lines)


def _limit_line(what: str, entry, unit: str) -> str:
    if entry.value is None:
        return f"{what}: nothing fits (1 {unit.rstrip('s')} already needs {entry.next_need_bytes / GiB:.2f} GiB)"
    line = f"{what}: {entry.value:,} {unit} ({entry.need_bytes / GiB:.2f} GiB)"
    if entry.capped:
        return line + ", the search's ceiling: more fits too"
    if entry.power_of_two != entry.value:
        line += f"; largest power of two {entry.power_of_two:,} ({entry.power_of_two_need_bytes / GiB:.2f} GiB)"
    return line


def limits_text(arch: ModelArch, report) -> str:
    cfg = report.config
    lines = [f"{arch.name} · {_describe(cfg)}", f"on {report.gpu} ({report.capacity_bytes / GiB:.2f} GiB usable)", "",
             _limit_line(f"longest sequence at micro batch {cfg.micro_batch}", report.longest_seq_len, "tokens"),
             _limit_line(f"largest micro batch at seq {cfg.seq_len}", report.largest_micro_batch, "sequences")]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
