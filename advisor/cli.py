"""Command line: `lora-advisor estimate`, `gpus`, `models`; `--json` everywhere.

Exit codes: 0 ok; 4 `verify` ran out of memory (the report has the measured numbers); 3 `plan` found nothing that fits (the JSON says the smallest need); 2 bad input (one line on stderr: the error and a hint; with --json also an error
document on stdout); 1 an unexpected internal error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from pydantic import ValidationError

from .errors import AdvisorError, UsageError

FLAG_FOR_FIELD = {
    "method": "--method", "precision": "--precision", "master_weights": "--master-weights", "rank": "--rank",
    "alpha": "--alpha", "targets": "--targets", "train_embeddings": "--train-embeddings", "quant_type": "--quant",
    "double_quant": "--no-double-quant", "seq_len": "--seq-len", "micro_batch": "--micro-batch",
    "grad_ckpt": "--grad-ckpt", "optimizer": "--optimizer", "attn": "--attn", "loss": "--loss", "gpus": "--gpus",
    "zero": "--zero", "fsdp": "--fsdp", "offload": "--offload",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line with a hint, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _ranks(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",") if part.strip()] or [_positive_int(text)]


def _targets(text: str) -> tuple[str, ...]:
    if text in ("all-linear", "attention", "q,v"):
        return (text,)
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("give a preset (all-linear, attention, q,v) or module names like q_proj,v_proj")
    return names


def add_model_and_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags every planning command shares (estimate now; plan, export, verify later)."""
    p.add_argument("--model", "-m", default=None, help="catalog name (llama-3.1-8b), config.json, model dir, or hub id")
    p.add_argument("--from", dest="from_file", default=None, help="read model and settings from an axolotl, LLaMA-Factory or TRL YAML")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=["full", "lora", "qlora", "lora8bit"], default="lora")
    g.add_argument("--rank", "-r", type=_ranks, default=[16], help="LoRA rank, or a list (4,8,16,32,64) for a rank sweep")
    g.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    g.add_argument("--targets", type=_targets, default=("all-linear",),
                   help="all-linear | attention | q,v | module names (q_proj,v_proj,...)")
    g.add_argument("--train-embeddings", action="store_true", help="also train embed_tokens and lm_head (modules_to_save)")
    g.add_argument("--quant", dest="quant_type", choices=["nf4", "fp4"], default="nf4", help="QLoRA 4-bit type")
    g.add_argument("--no-double-quant", dest="double_quant", action="store_false", help="QLoRA without double quantization")
    g.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    g.add_argument("--master-weights", action="store_true", help="full FT with fp32 master weights (mixed precision)")
    t = p.add_argument_group("step")
    t.add_argument("--seq-len", "-s", type=_positive_int, default=2048)
    t.add_argument("--micro-batch", "-b", type=_positive_int, default=1)
    t.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=False, help="gradient checkpointing")
    t.add_argument("--optimizer", choices=["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"], default="adamw")
    t.add_argument("--attn", choices=["auto", "sdpa", "flash", "eager"], default="auto")
    t.add_argument("--loss", choices=["standard", "chunked"], default="standard",
                   help="chunked = fused/chunked cross-entropy (Liger, CCE)")
    d = p.add_argument_group("GPUs")
    d.add_argument("--gpus", type=_positive_int, default=1, help="GPUs in the job (data parallel)")
    d.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=0, help="DeepSpeed ZeRO stage")
    d.add_argument("--fsdp", action="store_true", help="FSDP full shard")
    d.add_argument("--offload", choices=["none", "optimizer", "params"], default="none")
    d.add_argument("--gpu", default=None, help="plan for a catalog GPU: 4090, A100-80GB, h100, 4xA100-80GB")
    d.add_argument("--vram", default=None, help="one GPU's memory (24GiB, 80GB, 24000MiB) for a custom card")
    d.add_argument("--no-calibration", action="store_true", help="ignore (and do not store) calibration from real runs")


def train_config(args: argparse.Namespace, rank: int | None = None):
    from .memory.config import TrainConfig

    fields = {name: getattr(args, name) for name in FLAG_FOR_FIELD if name != "rank"}
    fields["rank"] = rank if rank is not None else args.rank[0]
    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if field in FLAG_FOR_FIELD:
            message = f"{FLAG_FOR_FIELD[field]}: {message}"
        raise UsageError(message, "see `lora-advisor estimate --help`") from None


def _hardware(args: argparse.Namespace):
    """--gpu / --vram override detection; without them, the GPUs this machine has (if any)."""
    from .hardware import hardware_for

    detection = None
    if not args.gpu and not args.vram:
        from .hardware.nvml import Nvml

        with Nvml() as nvml:
            detection = nvml.detect()
    gpus = args.gpus if args.gpus != 1 else None
    return hardware_for(args.gpu, args.vram, gpus, detection)


def _host_ram(args: argparse.Namespace) -> int | None:
    """The CPU RAM offload may use: --host-ram, else this machine's when the GPUs are this machine's
    (detected); a named --gpu / --vram may be another box, so its RAM is unknown."""
    if args.host_ram:
        from .units import parse_size

        return parse_size(args.host_ram)
    if args.gpu or args.vram:
        return None
    from .hardware import host_ram_bytes

    return host_ram_bytes()


def _calibration(args: argparse.Namespace, arch, cfg, hardware):
    """The newest stored point for this GPU, model family and method (unless --no-calibration)."""
    if args.no_calibration or hardware is None:
        return None
    from .verify.calibration import find_point

    point, problem = find_point(hardware.name, arch.model_type, cfg.method)
    if problem:
        print(f"note: {problem}", file=sys.stderr)
    return point


def _from_file(args: argparse.Namespace) -> None:
    """--from FILE: the model and the training fields come from an axolotl / LLaMA-Factory / TRL YAML."""
    from .export.readback import read_config

    back = read_config(Path(args.from_file))
    args.model = back.model
    for name, value in back.fields.items():
        if name == "rank":
            value = [value]
        setattr(args, name, value)
    if back.unknown:
        print(f"note: {args.from_file} ({back.format}): keys not used by the estimate: {', '.join(back.unknown)}",
              file=sys.stderr)


def _model_and_hardware(args: argparse.Namespace):
    """What estimate, verify and export share: --from FILE, the model, and the GPUs to plan for
    (--gpu NxNAME sets the job's GPU count when --gpus is not given)."""
    from .models import resolve_model

    if args.from_file:
        _from_file(args)
    if not args.model:
        raise UsageError("give --model (or --from FILE)", "e.g. --model llama-3.1-8b")
    arch = resolve_model(args.model)
    hardware = _hardware(args)
    if args.gpu and hardware is not None and hardware.count > 1 and args.gpus == 1:
        args.gpus = hardware.count
    return arch, hardware


def cmd_estimate(args: argparse.Namespace) -> int:
    from .memory import estimate
    from .report import EstimateReport, ModelInfo, RankRow, RankSweepReport

    arch, hardware = _model_and_hardware(args)
    if len(args.rank) > 1:
        if args.method == "full":
            raise UsageError("--rank with several values needs --method lora or qlora", "full fine-tuning has no rank")
        rows = []
        for rank in args.rank:
            cfg = train_config(args, rank)
            est = estimate(arch, cfg, hardware)
            adapter_bytes = est.component("adapters").bytes
            rows.append(RankRow(rank=rank, adapter_params=est.component("adapters").inputs["adapter_params"],
                                adapter_state_bytes=adapter_bytes + est.component("gradients").bytes
                                + est.component("optimizer_states").bytes,
                                peak_allocated_bytes=est.peak_allocated_bytes, peak_device_bytes=est.peak_device_bytes,
                                fits=est.fits))
        cfg = train_config(args)
        info = ModelInfo(name=arch.name, model_type=arch.model_type, params=est.total_params,
                         trainable_params=est.trainable_params)
        report = RankSweepReport(model=info, config=cfg, ranks=rows)
        if args.json:
            _print_json(report)
        else:
            from .render import rank_table

            print(rank_table(arch, cfg, rows))
        return 0
    cfg = train_config(args)
    est = estimate(arch, cfg, hardware, calibration=_calibration(args, arch, cfg, hardware))
    report = EstimateReport.build(arch, cfg, est)
    if args.json:
        _print_json(report)
    else:
        from .render import estimate_table

        print(estimate_table(arch, cfg, est))
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    """The longest sequence (at the given micro batch) and the largest micro batch (at the given
    sequence length) that fit the configuration on the GPU."""
    from .limits import fit_limits
    from .memory import peaks
    from .report import LimitEntry, LimitsReport, ModelInfo

    arch, hardware = _model_and_hardware(args)
    if hardware is None:
        raise UsageError("limits needs a GPU to fit into: none was detected",
                         "name one with --gpu 4090 (or --vram 24GiB)")
    if len(args.rank) > 1:
        raise UsageError("limits takes one --rank", "for several ranks: lora-advisor estimate --rank 8,16,32")
    cfg = train_config(args)
    calibration = _calibration(args, arch, cfg, hardware)
    seq, batch = fit_limits(arch, cfg, hardware, calibration)
    est = peaks(arch, cfg, hardware, calibration)
    notes = []
    if seq.value and seq.value > arch.max_position_embeddings:
        notes.append(f"sequences beyond the model's {arch.max_position_embeddings:,} positions fit in memory, "
                     "but quality degrades without RoPE scaling")
    if calibration is not None:
        notes.append(f"calibrated from a real run on {calibration.gpu_name} ({calibration.measured_at})")
    notes.append("fits = the predicted device peak is at most the usable memory; the planner keeps 10 % of it free")
    report = LimitsReport(model=ModelInfo(name=arch.name, model_type=arch.model_type, params=est.total_params,
                                          trainable_params=est.trainable_params),
                          config=cfg, gpu=hardware.name, capacity_bytes=hardware.usable_bytes,
                          longest_seq_len=LimitEntry.of(seq), largest_micro_batch=LimitEntry.of(batch), notes=notes)
    if args.json:
        _print_json(report)
    else:
        from .render import limits_text

        print(limits_text(arch, report))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .engine.rules import default_rules, load_rules_file, merge
    from .models import resolve_model
    from .planner import Goals, make_plan
    from .report import PlanReport

    if args.from_file:  # plan for what the file trains: its model, sequence length, method and batch
        from .export.readback import read_config

        back = read_config(Path(args.from_file))
        args.model, args.method = back.model, back.fields.get("method", "auto")
        args.seq_len = back.fields.get("seq_len", args.seq_len)
        args.effective_batch = back.fields.get("micro_batch", 1) * back.grad_accum * args.gpus
    if not args.model:
        raise UsageError("give --model (or --from FILE)", "e.g. --model llama-3.1-8b")
    arch = resolve_model(args.model)
    rules = default_rules()
    for path in args.rules or []:
        rules = merge(rules, load_rules_file(Path(path)))
    rules = sorted(rules, key=lambda r: r.spec.priority)
    hardware = _hardware(args)
    gpus = hardware.count if hardware is not None and args.gpus == 1 else args.gpus
    goals = Goals(seq_len=args.seq_len, effective_batch=args.effective_batch, method=args.method,
                  prefer=args.prefer, gpus=gpus)
    calibrations = None
    if hardware is not None and not args.no_calibration:
        from .verify.calibration import points_by_method

        calibrations, problem = points_by_method(hardware.name, arch.model_type)
        if problem:
            print(f"note: {problem}", file=sys.stderr)
    plan = make_plan(arch, hardware, goals, rules, calibrations=calibrations, host_ram_bytes=_host_ram(args))
    report = PlanReport.build(arch, hardware, goals, plan)
    if args.json:
        _print_json(report)
    else:
        from .render import plan_text

        print(plan_text(report))
    return 0 if plan.chosen is not None else 3


def cmd_verify(args: argparse.Namespace) -> int:
    """Run the configuration: a few real steps on the GPU (or CPU), or the fake-tensor dry run."""
    from .memory import estimate
    from .report import VerifyReport
    from .verify.runner import run_to_end

    arch, hardware = _model_and_hardware(args)
    cfg = train_config(args)
    mode = "dry" if args.dry_run else args.device
    if mode == "auto":
        from .hardware.nvml import Nvml

        with Nvml() as nvml:
            detection = nvml.detect()
        mode = "cuda" if detection.gpus else "dry"
        if mode == "dry":
            print(f"no CUDA GPU ({detection.reason}): running the dry run on fake tensors instead", file=sys.stderr)
    predicted = estimate(arch, cfg, hardware)

    def progress(event: dict) -> None:
        if args.json:
            return
        if event["event"] == "step":
            memory = f" · peak {event['peak_allocated_bytes'] / 2**30:.2f} GiB" if "peak_allocated_bytes" in event else ""
            print(f"step {event['step']}/{args.steps} · loss {event['loss']:.3f} · {event['tokens_per_s']:,.0f} tok/s{memory}",
                  file=sys.stderr)
        elif event["event"] == "start":
            print(f"verifying in a child process ({event['mode']}, pid {event['pid']}) ...", file=sys.stderr)

    events = run_to_end(arch, cfg, mode, args.steps, progress)
    report = VerifyReport.build(arch, cfg, mode, predicted, events)
    if mode == "cuda" and not args.no_calibration:
        from .verify.calibration import point_from_report, save_point

        point = point_from_report(report, arch, report.environment)
        if point is not None:
            report.calibration_saved = str(save_point(point))
    if args.json:
        _print_json(report)
    else:
        from .render import verify_text

        print(verify_text(report))
    if report.error:
        return 1
    return 4 if report.oom else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportContext, render_all
    from .export.writer import write_files
    from .memory import estimate
    from .models.catalog import hub_id_for

    arch, hardware = _model_and_hardware(args)
    cfg = train_config(args)
    est = estimate(arch, cfg, hardware)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    ctx = ExportContext(arch=arch, cfg=cfg, estimate=est, model_id=hub_id_for(arch.name),
                        effective_batch=args.effective_batch, gpu_name=hardware.name if hardware else "unknown GPU")
    files = render_all(ctx, formats)
    target = Path(args.output) if args.output else Path("lora-advisor-export")
    written = write_files(files, target, args.force)
    if args.json:
        print(json.dumps({"schema_version": 1, "written": [str(p) for p in written]}, indent=2))
    else:
        for path in written:
            print(f"wrote {path}")
    return 0


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="catalog name, config.json, model dir, or hub id")
    p.add_argument("--from", dest="from_file", default=None, help="plan for what an axolotl, LLaMA-Factory or TRL YAML trains")
    p.add_argument("--method", choices=["auto", "full", "lora", "qlora", "lora8bit"], default="auto")
    p.add_argument("--seq-len", "-s", type=_positive_int, default=2048)
    p.add_argument("--effective-batch", type=_positive_int, default=16, help="sequences per optimizer step (all GPUs)")
    p.add_argument("--prefer", choices=["speed", "quality"], default="speed")
    p.add_argument("--gpus", type=_positive_int, default=1)
    p.add_argument("--gpu", default=None, help="plan for a catalog GPU: 4090, A100-80GB, 4xA100-80GB")
    p.add_argument("--vram", default=None, help="one GPU's memory for a custom card (24GiB, 80GB)")
    p.add_argument("--rules", action="append", help="a YAML rule file that adds rules or overrides them by id")
    p.add_argument("--no-calibration", action="store_true", help="ignore calibration from real runs on this GPU")
    p.add_argument("--host-ram", default=None,
                   help="CPU RAM for offload (64GiB); default: this machine's when planning for its own GPUs")


def cmd_gpus(args: argparse.Namespace) -> int:
    """Detected GPUs.  No driver is not bad input: exit 0 with an empty list, the reason and a hint."""
    from .hardware.nvml import Nvml
    from .report import GpusReport

    with Nvml() as nvml:
        detection = nvml.detect()
    report = GpusReport.from_detection(detection)
    if args.json:
        _print_json(report)
    else:
        from .render import gpus_table

        print(gpus_table(report))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_params
    from .models.catalog import catalog_arch, catalog_entries

    rows = []
    for entry in catalog_entries():
        arch = catalog_arch(entry["name"])
        rows.append({"name": entry["name"], "hf_id": entry.get("hf_id"), "model_type": arch.model_type,
                     "params": count_params(arch).total, "layers": arch.num_layers, "hidden_size": arch.hidden_size,
                     "vocab_size": arch.vocab_size, "max_position_embeddings": arch.max_position_embeddings})
    if args.json:
        print(json.dumps({"schema_version": 1, "models": rows}, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['params'] / 1e9:7.2f} B  {r['model_type']:<8} {r['hf_id'] or ''}")
    return 0


def _print_json(model: Any) -> None:
    print(model.model_dump_json(indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lora-advisor", description="Which LoRA / QLoRA / full fine-tuning setup fits your GPUs, and why.")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    est = sub.add_parser("estimate", help="memory of one configuration: breakdown, phases, peaks")
    add_model_and_training_flags(est)
    est.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    est.set_defaults(func=cmd_estimate)
    plan = sub.add_parser("plan", help="propose the fastest config that fits, with the reason for every choice")
    add_plan_flags(plan)
    plan.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    plan.set_defaults(func=cmd_plan)
    limits = sub.add_parser("limits", help="the longest sequence and the largest micro batch that fit a config")
    add_model_and_training_flags(limits)
    limits.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    limits.set_defaults(func=cmd_limits)
    verify = sub.add_parser("verify", help="run a few training steps (or the dry run) and compare with the estimate")
    add_model_and_training_flags(verify)
    verify.add_argument("--steps", type=_positive_int, default=10)
    verify.add_argument("--dry-run", action="store_true", help="trace one step on fake tensors (no GPU needed)")
    verify.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: the GPU when there is one, else the dry run; cpu: a tiny real run for smoke tests")
    verify.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    verify.set_defaults(func=cmd_verify)
    export = sub.add_parser("export", help="write the config for PEFT+TRL, TRL, axolotl, LLaMA-Factory, accelerate, DeepSpeed")
    add_model_and_training_flags(export)
    export.add_argument("--format", "-f", required=True,
                        help="peft-trl, trl-yaml, axolotl, llamafactory, accelerate, deepspeed (comma list for several)")
    export.add_argument("--output", "-o", default=None, help="a file (one format) or a directory (default lora-advisor-export/)")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.add_argument("--effective-batch", type=_positive_int, default=16, help="sequences per optimizer step (all GPUs)")
    export.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    export.set_defaults(func=cmd_export)
    gpus = sub.add_parser("gpus", help="the NVIDIA GPUs on this machine (through NVML)")
    gpus.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    gpus.set_defaults(func=cmd_gpus)
    models = sub.add_parser("models", help="list the model catalog")
    models.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    models.set_defaults(func=cmd_models)
    return parser


def run_tui(argv: list[str]) -> int:
    """`lora-advisor` with no command: the Textual app, pre-filled from the planning flags."""
    parser = _Parser(prog="lora-advisor", description="Interactive session (the commands: lora-advisor --help-commands)")
    parser.add_argument("--model", "-m", default="llama-3.1-8b")
    parser.add_argument("--gpu", default="", help="plan for a catalog GPU instead of the detected one")
    parser.add_argument("--vram", default="", help="plan for a custom card of this size")
    parser.add_argument("--seq-len", "-s", type=_positive_int, default=2048)
    parser.add_argument("--effective-batch", type=_positive_int, default=16)
    parser.add_argument("--method", choices=["auto", "full", "lora", "qlora"], default="auto")
    parser.add_argument("--prefer", choices=["speed", "quality"], default="speed")
    args = parser.parse_args(argv)
    try:
        from .tui import make_app
        from .tui.app import Form
    except ImportError:
        raise UsageError("the interactive app needs textual", "pip install textual, or use a command: lora-advisor plan --help") from None
    form = Form(model=args.model, gpu=args.gpu or args.vram, seq_len=args.seq_len, effective_batch=args.effective_batch,
                method=args.method, prefer=args.prefer)
    make_app(form=form).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    try:
        commands = {"estimate", "plan", "limits", "verify", "export", "gpus", "models"}
        if "--json" in argv and not commands & set(argv) and not {"-h", "--help"} & set(argv):
            argv = ["plan", *argv]  # `lora-advisor --json --model ...` is the planner
        elif not commands & set(argv) and not {"-h", "--help"} & set(argv):
            return run_tui(argv)  # no command: the interactive app
        args = build_parser().parse_args(argv)
        if not getattr(args, "command", None):
            raise UsageError("name a command: plan, estimate, limits, verify, export, gpus or models",
                             "try `lora-advisor estimate --model llama-3.1-8b --method qlora`")
        return args.func(args)
    except AdvisorError as err:
        print(err.one_line(), file=sys.stderr)
        if want_json:
            from .report import ErrorReport

            _print_json(ErrorReport(error=err.message, hint=err.hint))
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
