"""Command line: `lora-advisor plan`, `estimate`, `limits`, `export`, `verify`, `gpus`, `models`; `--json` everywhere.

The CLI parses flags into the core's requests (advisor/core.py), calls the core, and renders what comes
back; it assembles nothing itself.

Exit codes: 0 ok; 2 bad input (one line on stderr: the error and a hint; with --json also an error document
on stdout); 3 nothing fits (`plan`), or the configuration to export does not fit its GPU (`export`, unless
--allow-no-fit); 4 `verify` ran out of memory (the report has the measured numbers); 1 an unexpected
internal error (a bug: please report it), or a verification run that failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence, get_args

from . import core
from .errors import AdvisorError, UsageError, printable
from .memory import config as train_fields

# The flag for each request / config field: how this front end words an error's field.
FLAG_FOR_FIELD = {
    "model": "--model", "gpu": "--gpu", "vram": "--vram", "gpus": "--gpus", "seq_len": "--seq-len",
    "effective_batch": "--effective-batch", "prefer": "--prefer", "rules": "--rules", "host_ram": "--host-ram",
    "method": "--method", "precision": "--precision", "master_weights": "--master-weights", "rank": "--rank",
    "alpha": "--alpha", "lora_dropout": "--lora-dropout", "targets": "--targets",
    "train_embeddings": "--train-embeddings", "quant_type": "--quant",
    "double_quant": "--no-double-quant", "kbit_upcast": "--kbit-upcast", "micro_batch": "--micro-batch",
    "grad_ckpt": "--grad-ckpt",
    "optimizer": "--optimizer", "attn": "--attn", "loss": "--loss", "zero": "--zero", "fsdp": "--fsdp",
    "offload": "--offload", "stack": "--stack", "option": "--option", "plan_file": "--plan", "format": "--format", "output": "--output",
    "allow_no_fit": "--allow-no-fit", "from_file": "--from", "runner": "--runner", "ds_config": "--ds-config",
    "dataset_tokens": "--dataset-tokens", "samples": "--samples", "epochs": "--epochs",
    "price_per_gpu_hour": "--price-per-gpu-hour",
    "lengths": "--lengths", "images_per_sample": "--images-per-sample", "image_size": "--image-size", "image_tokens": "--image-tokens",
}
# TrainConfig fields a user sets by hand (with their defaults); giving any one of them to `export` or `verify`
# describes the configuration by hand instead of planning it.
CONFIG_FIELDS = ("precision", "master_weights", "rank", "alpha", "lora_dropout", "targets", "train_embeddings",
                 "quant_type", "double_quant", "kbit_upcast", "micro_batch", "grad_ckpt", "optimizer", "attn", "loss",
                 "zero", "fsdp", "offload", "stack")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line with a hint, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


def _shown(text: str) -> str:
    from .bounded import shown

    return shown(text)


def _positive_int(text: str, high: int | None = None) -> int:
    digits = text.strip().lstrip("+")
    if digits.startswith("-") and digits[1:].isascii() and digits[1:].isdigit():
        raise argparse.ArgumentTypeError(f"{_shown(text)} must be at least 1")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number"
                                         + (f" from 1 to {high:,}" if high else ""))
    value = int(digits)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"{value:,} is more than {high:,}, the most this takes")
    return value


def _at_most(high: int):
    """A whole number from 1 to ``high`` (the core's stated maximum for the field)."""
    def parse(text: str) -> int:
        return _positive_int(text, high)

    parse.__name__ = "whole number"
    return parse


MAX_RANKS = 32  # a rank sweep estimates each one


def _finite(text: str, within, what: str) -> float:
    """A finite number the flag accepts (``within(value)``), else "TEXT is not WHAT"."""
    import math

    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not within(value):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not {what}")
    return value


def _dropout(text: str) -> float:
    return _finite(text, lambda v: 0 <= v < 1, "a dropout probability (a number from 0 to below 1)")


def _alpha(text: str) -> float:
    return _finite(text, lambda v: 0 < v <= core.MAX_ALPHA, f"a LoRA alpha (a number above 0, at most {core.MAX_ALPHA:g})")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: name a GPU (4090, 4xA100-80GB) or a size (24GiB), or leave the flag out")
    if len(text) > 200 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a GPU name or a size")
    return text


def _option_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an option number (0 = the plan's choice)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: options are numbered from 0 (the plan's choice)")
    return value


def _ranks(text: str) -> list[int]:
    parts = [part for part in text.split(",") if part.strip()]
    if len(parts) > MAX_RANKS:
        raise argparse.ArgumentTypeError(f"{len(parts)} ranks: a sweep takes at most {MAX_RANKS}")
    return [_positive_int(part, core.MAX_RANK) for part in parts] or [_positive_int(text, core.MAX_RANK)]


def _targets(text: str) -> tuple[str, ...]:
    if text in ("all-linear", "attention", "q,v"):
        return (text,)
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("give a preset (all-linear, attention, q,v) or module names like q_proj,v_proj")
    return names


def _size(text: str) -> int:
    from .units import parse_size

    try:
        return parse_size(text)
    except AdvisorError as err:
        raise argparse.ArgumentTypeError(f"{err.message} ({err.hint})") from None


_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def _count(text: str) -> int:
    """A count with an optional decimal suffix: 50000000, 50M, 1.2B, 300k (K/M/B/T = 10^3/6/9/12)."""
    import re
    from decimal import Decimal

    match = re.fullmatch(r"\s*(\d{1,16})(?:\.(\d{1,9}))?\s*([kKmMbBgGtT]?)\s*", text or "")
    if not match:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a count (write it like 50000000, 50M or 1.2B)")
    whole, frac, suffix = match.groups()
    value = Decimal(f"{whole}.{frac or 0}") * _COUNT_SUFFIX[suffix.lower()]
    if value != int(value) or not 1 <= value <= core.MAX_DATASET_TOKENS:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole count from 1 to 10^15")
    return int(value)


def _positive_float(high: float, zero: bool = False):
    def parse(text: str) -> float:
        import math

        try:
            value = float(text) if len(text) <= 32 else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (0 <= value if zero else 0 < value) and value <= high):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number {'from 0' if zero else 'above 0'} "
                                             f"to {high:,g}")
        return value
    return parse


def add_job_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the job (time to train, GPU-hours and cost)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--dataset-tokens", type=_count, default=None, metavar="N",
                      help="tokens in one epoch of the data (50M, 1.2B)")
    size.add_argument("--samples", type=_count, default=None, metavar="N",
                      help="sequences in one epoch (tokens = samples x --seq-len)")
    g.add_argument("--epochs", type=_positive_float(core.MAX_EPOCHS), default=1.0, help="passes over the data (default 1)")
    g.add_argument("--price-per-gpu-hour", type=_positive_float(core.MAX_PRICE, zero=True), default=None, metavar="P",
                   help="price of one GPU-hour, for the cost (no built-in price list)")


def _job_fields(args: argparse.Namespace) -> dict:
    return {"dataset_tokens": getattr(args, "dataset_tokens", None), "samples": getattr(args, "samples", None),
            "epochs": getattr(args, "epochs", 1.0), "price_per_gpu_hour": getattr(args, "price_per_gpu_hour", None)}


# ---- the flag sets: one definition each --------------------------------------------------------------------
def add_hardware_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPUs")
    g.add_argument("--gpu", type=_not_blank, default=None, help="plan for a catalog GPU (4090, A100-80GB, 4xA100-80GB) or a size (24GiB)")
    g.add_argument("--vram", type=_not_blank, default=None, help="one GPU's memory (24GiB, 80GB, 24000MiB) for a custom card")
    g.add_argument("--gpus", type=_at_most(core.MAX_GPUS), default=None, help="GPUs in the job (data parallel)")
    g.add_argument("--no-calibration", action="store_true", help="ignore (and do not store) calibration from real runs")


def add_goal_flags(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    """The question the planner answers: the model and the goals (plan, the app, and export / verify)."""
    if with_model:
        p.add_argument("--model", "-m", default=None, help="catalog name (llama-3.1-8b), config.json, model dir, or hub id")
        p.add_argument("--from", dest="from_file", default=None,
                       help="read the model and settings from an axolotl, LLaMA-Factory or TRL YAML")
    g = p.add_argument_group("goals")
    g.add_argument("--method", choices=core.METHOD_CHOICES, default=None, help="auto (default) lets the planner choose")
    g.add_argument("--seq-len", "-s", type=_at_most(core.MAX_SEQ_LEN), default=2048)
    g.add_argument("--effective-batch", type=_at_most(core.MAX_EFFECTIVE_BATCH), default=16, help="sequences per optimizer step (all GPUs)")
    g.add_argument("--prefer", choices=core.PREFER_CHOICES, default="speed")
    g.add_argument("--rules", action="append", default=[], help="a YAML rule file that adds rules or overrides them by id")
    g.add_argument("--host-ram", type=_size, default=None,
                   help="CPU RAM for offload (64GiB); default: this machine's when planning for its own GPUs")
    g.add_argument("--lengths", choices=get_args(train_fields.Lengths), default="fixed",
                   help="fixed: every batch at --seq-len (packed data, or padded to it); variable: unpacked data "
                        "padded per batch to its longest sequence (the frameworks' default; --seq-len is the "
                        "cutoff): the same peak and fit; on a card with room the allocator's cache grows, which the "
                        "estimate reports beside the peak")
    g.add_argument("--image-size", type=_at_most(1 << 15), default=None,
                   help="vision-language models: each sequence has images of this side (pixels); 1 per sample "
                        "unless --images-per-sample; their tokens count inside --seq-len")
    g.add_argument("--images-per-sample", type=_at_most(1024), default=0, help="images in each sequence")
    g.add_argument("--image-tokens", type=_at_most(1 << 24), default=None,
                   help="image tokens per sequence, given directly (inside --seq-len)")


def add_config_flags(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """A configuration by hand.  With ``defaults=False`` (export, verify) a flag not given is absent, so
    giving any one of them is what switches from the plan to the hand-made configuration."""
    d = (lambda name: _CONFIG_DEFAULTS[name]) if defaults else (lambda name: argparse.SUPPRESS)
    g = p.add_argument_group("configuration by hand (export / verify: any of these skips the planner)")
    g.add_argument("--rank", "-r", type=_ranks, default=d("rank"), help="LoRA rank, or a list (4,8,16,32,64) for a rank sweep")
    g.add_argument("--alpha", type=_alpha, default=d("alpha"), help="LoRA alpha (default 2 x rank)")
    g.add_argument("--lora-dropout", type=_dropout, default=d("lora_dropout"),
                   help="LoRA dropout p (default 0): above 0 each adapted module keeps its own dropped-out input")
    g.add_argument("--targets", type=_targets, default=d("targets"),
                   help="all-linear | attention | q,v | module names (q_proj,v_proj,...)")
    g.add_argument("--train-embeddings", action="store_true", default=d("train_embeddings"),
                   help="also train embed_tokens and lm_head (modules_to_save)")
    g.add_argument("--quant", dest="quant_type", choices=get_args(train_fields.QuantType), default=d("quant_type"),
                   help="QLoRA 4-bit type")
    g.add_argument("--no-double-quant", dest="double_quant", action="store_false", default=d("double_quant"),
                   help="QLoRA without double quantization")
    g.add_argument("--kbit-upcast", dest="kbit_upcast", choices=get_args(train_fields.KbitUpcast),
                   default=d("kbit_upcast"),
                   help="QLoRA: what k-bit preparation leaves in fp32. all = a script calling PEFT's "
                        "prepare_model_for_kbit_training (embeddings, norms, lm_head); norms = TRL 0.7.5-0.25 under "
                        "bf16; none (default) = current TRL, axolotl, LLaMA-Factory. fp32 norms make the residual "
                        "stream fp32")
    g.add_argument("--precision", choices=get_args(train_fields.Precision), default=d("precision"))
    g.add_argument("--master-weights", action="store_true", default=d("master_weights"),
                   help="full FT with fp32 master weights (mixed precision)")
    g.add_argument("--micro-batch", "-b", type=_at_most(core.MAX_MICRO_BATCH), default=d("micro_batch"))
    g.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=d("grad_ckpt"), help="gradient checkpointing")
    g.add_argument("--optimizer", choices=get_args(train_fields.Optimizer), default=d("optimizer"))
    g.add_argument("--attn", choices=get_args(train_fields.Attention), default=d("attn"))
    g.add_argument("--loss", choices=get_args(train_fields.LossKind), default=d("loss"),
                   help="standard = transformers' loss from 4.49 on; shifted = before 4.49 (one more fp32 copy of "
                        "the logits at the loss); chunked = a fused / tiled cross-entropy (TRL's, Liger's)")
    g.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=d("zero"), help="DeepSpeed ZeRO stage")
    g.add_argument("--ds-config", dest="ds_config", default=None if defaults else argparse.SUPPRESS,
                   help="a DeepSpeed JSON: its ZeRO stage, offload and gradient bucket sizes (reduce_bucket_size, "
                        "overlap_comm)")
    g.add_argument("--fsdp", action="store_true", default=d("fsdp"), help="FSDP full shard")
    g.add_argument("--offload", choices=get_args(train_fields.Offload), default=d("offload"))
    g.add_argument("--stack", choices=get_args(train_fields.Stack), default=d("stack"),
                   help="the training stack (auto: transformers' Trainer; trl computes a chunked loss whatever --loss "
                        "says; torchtune trains pure 16-bit; --from FILE sets it from the file's framework)")


def add_plan_file_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", dest="plan_file", default=None, help="a saved `plan --json` document to take the config from")
    p.add_argument("--option", type=_option_index, default=0,
                   help="which option of the plan: 0 its choice (default), N its N-th alternative")


def _flag_default(name: str):
    """TrainConfig's own default for a config flag (--rank takes a list: one rank, or a sweep)."""
    value = train_fields.TrainConfig.model_fields[name].default
    return [value] if name == "rank" else value


_CONFIG_DEFAULTS = {name: _flag_default(name) for name in CONFIG_FIELDS}


# ---- from flags to the core's requests ------------------------------------------------------------------------
def _gpu_request(args: argparse.Namespace) -> core.GpuRequest:
    return core.GpuRequest(gpu=args.gpu or "", vram=args.vram or "", gpus=args.gpus)


def _read_from(args: argparse.Namespace):
    from .export.readback import read_config

    back = read_config(Path(args.from_file))
    args.not_modelled = back.not_modelled  # estimate --json carries them in its notes too
    if back.not_modelled:
        _say(f"warning: {args.from_file} ({back.format}): settings that change memory and are not modelled: "
             f"{', '.join(back.not_modelled)}; the numbers are for the run without them")
    if back.unknown:
        _say(f"note: {args.from_file} ({back.format}): keys not used by the estimate: {', '.join(back.unknown)}")
    sharded = back.fields.get("zero") or back.fields.get("fsdp")
    if sharded and "gpus" not in back.fields and args.gpus is None:
        # a framework YAML leaves the GPU count to its launcher; ZeRO / FSDP split the states over it
        _say(f"warning: {args.from_file} ({back.format}) does not say how many GPUs it runs on (its launcher does, "
             "and no accelerate.yaml is next to it): estimated for 1 GPU; pass --gpus N for the per-GPU share")
    return back


def _file_batch(back, args: argparse.Namespace) -> int:
    """The effective batch a --from file trains with: micro batch x accumulation x GPUs (--gpus, else the file's)."""
    return back.fields.get("micro_batch", 1) * back.grad_accum * (args.gpus or back.fields.get("gpus", 1))


def _data_fields(args: argparse.Namespace) -> dict:
    """--lengths / --image-size / --images-per-sample / --image-tokens as TrainConfig fields."""
    return {"lengths": getattr(args, "lengths", "fixed"), "image_size": getattr(args, "image_size", None),
            "images_per_sample": getattr(args, "images_per_sample", 0), "image_tokens": getattr(args, "image_tokens", None)}


def _need_model(model: str | None) -> str:
    if not model:
        raise UsageError("give a model (or a config file to read it from)", "e.g. --model llama-3.1-8b", field="model")
    return model


def given_flags(argv: Sequence[str]) -> set[str]:
    """The destinations of the flags the user typed (a default is nobody's choice): the same parse with every
    default suppressed.  A flag given beside --from overrides the file; beside --plan it is refused."""
    parser = build_parser()

    def suppress(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    suppress(sub)
            elif action.option_strings:
                action.default = argparse.SUPPRESS

    suppress(parser)
    return set(vars(parser.parse_args(list(argv))))


def _given(args: argparse.Namespace) -> set[str]:
    """What the user typed (main() records it; a namespace built elsewhere, as the app's, typed nothing)."""
    return getattr(args, "given", set())


def _over_file(args: argparse.Namespace, read: dict, flags: dict) -> dict:
    """What a --from file set, under the flags the user gave beside it; says which flags changed the file."""
    given = _given(args)
    changed = [f"{FLAG_FOR_FIELD.get(name, name)} {_words(flags[name])} (the file: {_words(value)})"
               for name, value in read.items() if name in given and name in flags and flags[name] != value]
    if changed:
        _say(f"note: {args.from_file}: the flags given override it: {'; '.join(changed)}")
    return {**read, **{name: flags[name] for name in read if name in given and name in flags}}


def _words(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def plan_request(args: argparse.Namespace) -> core.PlanRequest:
    model, method = args.model, args.method or "auto"
    seq_len, batch, data = args.seq_len, args.effective_batch, _data_fields(args)
    if args.from_file:  # plan for what the file trains: its model, sequence length, lengths, method and batch
        back = _read_from(args)
        read = {"model": back.model, "method": back.fields.get("method", "auto"),
                "seq_len": back.fields.get("seq_len", seq_len), "lengths": back.fields.get("lengths", data["lengths"]),
                "effective_batch": _file_batch(back, args)}
        chosen = _over_file(args, read, {"model": model, "method": method, "seq_len": seq_len,
                                         "lengths": data["lengths"], "effective_batch": batch})
        model, method, seq_len, batch = chosen["model"], chosen["method"], chosen["seq_len"], chosen["effective_batch"]
        data["lengths"] = chosen["lengths"]
    return core.PlanRequest(model=_need_model(model), hardware=_gpu_request(args), seq_len=seq_len,
                            effective_batch=batch, method=method, prefer=args.prefer, rules=tuple(args.rules or ()),
                            host_ram=args.host_ram, calibration=not args.no_calibration, **_job_fields(args),
                            **data)


def config_request(args: argparse.Namespace) -> core.ConfigRequest:
    """A configuration by hand: the flags the user gave, over a --ds-config JSON, over what --from read, over
    the defaults (--gpus wins over all)."""
    given = _given(args)
    flags = {name: getattr(args, name, _CONFIG_DEFAULTS[name]) for name in CONFIG_FIELDS}
    flags["method"] = args.method if args.method not in (None, "auto") else "lora"
    flags["seq_len"] = args.seq_len
    flags.update(_data_fields(args))
    fields = dict(flags)
    model, batch = args.model, args.effective_batch
    if args.from_file:
        back = _read_from(args)
        read = {"model": back.model, "effective_batch": _file_batch(back, args),
                **{k: ([v] if k == "rank" else v) for k, v in back.fields.items()}}
        chosen = _over_file(args, read, {**flags, "model": model, "effective_batch": batch})
        model, batch = chosen.pop("model"), chosen.pop("effective_batch")
        fields.update(chosen)
    if getattr(args, "ds_config", None):  # the DeepSpeed JSON the job runs with, under the flags given
        from .export.readback import deepspeed_fields

        fields.update({k: v for k, v in deepspeed_fields(
            Path(args.ds_config), field="ds_config",
            hint="give the DeepSpeed JSON your training job passes to --deepspeed").items() if k not in given})
    fields["rank"] = fields["rank"][0]
    if args.gpus is not None:
        fields["gpus"] = args.gpus
    return core.ConfigRequest(model=_need_model(model), config=fields, hardware=_gpu_request(args),
                              effective_batch=batch, calibration=not args.no_calibration,
                              host_ram=getattr(args, "host_ram", None), **_job_fields(args))


def _by_hand(args: argparse.Namespace) -> bool:
    return bool(args.from_file) or any(hasattr(args, name) for name in (*CONFIG_FIELDS, "ds_config"))


def _one_rank(args: argparse.Namespace, command: str) -> None:
    """A rank list is a sweep, which only estimate makes; the other commands act on one configuration."""
    ranks = getattr(args, "rank", None)  # absent when not given (the flag defaults are suppressed)
    if ranks is not None and len(ranks) > 1:
        raise UsageError(f"{command} takes one rank", "for several ranks: lora-advisor estimate --rank 8,16,32",
                         field="rank", value=ranks)


# what a saved plan fixes besides the model and the config: its goals and its GPUs
PLANNED_FIELDS = {"seq_len", "effective_batch", "prefer", "rules", "host_ram", "lengths", "image_size",
                  "images_per_sample", "image_tokens", "gpu", "vram", "gpus"}


def selected_option(args: argparse.Namespace) -> tuple[core.Selected, core.PlanResult | None]:
    """What export and verify act on: a saved plan's option, a configuration by hand, or the plan's option."""
    _one_rank(args, args.command)
    if args.plan_file:
        if _by_hand(args) or args.model:
            raise UsageError("--plan takes the model and the config from the saved plan",
                             "drop --model and the config flags, or drop --plan", field="plan_file")
        # the goals and the GPUs are the saved plan's too: a flag for them would be silently dropped
        if dropped := sorted(FLAG_FOR_FIELD.get(name, name) for name in _given(args) & PLANNED_FIELDS):
            raise UsageError(f"--plan takes the goals and the GPUs from the saved plan, not {', '.join(dropped)}",
                             f"drop {', '.join(dropped)}, or plan again with them: lora-advisor plan --json ... > "
                             "plan.json", field="plan_file")
        return core.saved_option(core.load_plan(Path(args.plan_file)), args.option, not args.no_calibration), None
    if _by_hand(args):
        if args.option:
            raise UsageError("--option picks an option of a plan, not of a configuration given by hand",
                             "drop --option, or drop the config flags", field="option", value=args.option)
        return _configured(args), None
    result = core.plan(plan_request(args))
    _notes(result.notes)
    if result.plan.chosen is None:
        from .errors import NoFitError

        raise NoFitError(result.plan.no_choice or "nothing fits",
                         "run `lora-advisor plan` with the same flags to see why, and what would fit")
    return result.select(args.option), result


# what a --from file can set: an error about one of them that the user did not type is the file's
FILE_FIELDS = {*CONFIG_FIELDS, "method", "seq_len", "model", "lengths", "gpus"}


def _configured(args: argparse.Namespace, req: core.ConfigRequest | None = None) -> core.Selected:
    # a configuration given by hand is not planned: the planner's own flags would be dropped
    if unused := sorted(FLAG_FOR_FIELD[name] for name in _given(args) & {"rules", "prefer"}):
        raise UsageError(f"{', '.join(unused)} steer the planner, and this configuration is given by hand",
                         f"drop {', '.join(unused)}, or use `lora-advisor plan` with them", field=None)
    req = req or config_request(args)
    try:
        sel = core.configure(req)
    except AdvisorError as err:
        given = _given(args)
        typed = [FLAG_FOR_FIELD[name] for name in given if name in FLAG_FOR_FIELD]
        about_typed = err.field is None and any(flag in err.message for flag in typed)
        if getattr(args, "from_file", None) and err.field in FILE_FIELDS - given | {None} and not about_typed:
            flag = FLAG_FOR_FIELD.get(err.field or "", "the flags")
            raise UsageError(f"{args.from_file}: {err.message}", "the file sets this (its keys, or its framework's "
                             f"defaults where it is silent): change it there, or override it with {flag}",
                             field="from_file", value=args.from_file) from None
        raise
    _notes(sel.notes)
    if getattr(args, "master_weights", False) and "master_weights" in _given(args) and sel.cfg.zero:
        _say("note: --master-weights under ZeRO: DeepSpeed keeps the fp32 master copy in its optimizer partition "
             "(counted there) and the module in 16 bit, whatever the flag says")
    if getattr(args, "from_file", None) and sel.arch.vision is not None and not sel.cfg.has_images:
        # no framework file says how many images a sample has, or their size: the user does
        _say(f"warning: {args.from_file}: {sel.arch.name} reads images, and the file does not say how many per "
             "sample or their size: estimated for text alone; pass --image-size PX (and --images-per-sample N) "
             "or --image-tokens N for the images your data has")
    return sel


def _notes(notes) -> None:
    for note in notes:
        _say(f"note: {note}")


def _say(text: str) -> None:
    """A diagnostic on stderr; what it quotes from the user (a path, a file's keys) is shown escaped."""
    print(printable(text), file=sys.stderr)


# ---- commands ----------------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    result = core.plan(plan_request(args))
    _notes(result.notes)
    report = result.report()
    outcome = None
    if args.export and result.plan.chosen is not None:
        outcome = core.export(result.select(args.option), core.parse_formats(args.export),
                              Path(args.output or "lora-advisor-export"), args.force, args.allow_no_fit)
    if args.json:
        if outcome is None:
            _print_json(report)
        else:
            document = json.loads(report.model_dump_json())
            document["export"] = _export_document(outcome)
            print(json.dumps(document, indent=2))
    else:
        from .render import plan_text

        print(plan_text(report))
        if outcome is not None:
            _print_export(outcome)
    return 0 if result.plan.chosen is not None else 3


def cmd_estimate(args: argparse.Namespace) -> int:
    from .report import EstimateReport, ModelInfo, RankRow, RankSweepReport

    if len(args.rank) > 1:
        sel = _configured(args)
        rows = core.rank_sweep(sel, tuple(args.rank))
        report = RankSweepReport(model=ModelInfo(name=sel.arch.name, model_type=sel.arch.model_type,
                                                 params=sel.estimate.total_params,
                                                 trainable_params=sel.estimate.trainable_params),
                                 config=sel.cfg,
                                 ranks=[RankRow(rank=r.rank, adapter_params=r.trainable_params,
                                                adapter_state_bytes=r.adapter_state_bytes,
                                                peak_allocated_bytes=r.peak_allocated_bytes,
                                                peak_device_bytes=r.peak_device_bytes, fits=r.fits) for r in rows])
        if args.json:
            _print_json(report)
        else:
            from .render import rank_table

            print(rank_table(sel.arch, sel.cfg, report.ranks))
        return 0
    req = config_request(args)  # once: --from reads its file
    sel = _configured(args, req)
    speed = core.speed_of(sel, core.job_of(req))
    if args.json:
        est = sel.estimate
        if getattr(args, "not_modelled", None):
            est = est.model_copy(update={"notes": [*est.notes, "the file turns on settings that change memory and are "
                                                   "not modelled: " + ", ".join(args.not_modelled)]})
        if sel.offload_fits is False:
            est = est.model_copy(update={"notes": [*est.notes, core.offload_note(sel)]})
        _print_json(EstimateReport.build(sel.arch, sel.cfg, est, speed))
    else:
        from .render import estimate_table, speed_lines

        print(estimate_table(sel.arch, sel.cfg, sel.estimate))
        print("\n".join(speed_lines(speed)))
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    """The longest sequence (at the given micro batch) and the largest micro batch (at the given sequence
    length) that fit the configuration on the GPU."""
    from .report import LimitEntry, LimitsReport, ModelInfo

    _one_rank(args, "limits")
    sel = _configured(args)
    seq, batch = core.limits(sel)
    arch, est = sel.arch, sel.estimate
    notes = []
    if seq.value and seq.value > arch.max_position_embeddings:
        notes.append(f"sequences beyond the model's {arch.max_position_embeddings:,} positions fit in memory, "
                     "but quality degrades without RoPE scaling")
    if sel.calibration is not None:
        notes.append(f"calibrated from a real run on {sel.calibration.gpu_name} ({sel.calibration.measured_at})")
    notes.append("fits = the expected device peak is at most the usable memory; the planner also keeps the high end "
                 "of the estimate's range under it")
    report = LimitsReport(model=ModelInfo(name=arch.name, model_type=arch.model_type, params=est.total_params,
                                          trainable_params=est.trainable_params),
                          config=sel.cfg, gpu=sel.hardware.name, capacity_bytes=sel.capacity_bytes,
                          longest_seq_len=LimitEntry.of(seq), largest_micro_batch=LimitEntry.of(batch), notes=notes)
    if args.json:
        _print_json(report)
    else:
        from .render import limits_text

        print(limits_text(arch, report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    formats = core.parse_formats(args.format)  # refused before any planning or writing
    sel, _ = selected_option(args)
    outcome = core.export(sel, formats, Path(args.output or "lora-advisor-export"), args.force, args.allow_no_fit)
    if args.json:
        print(json.dumps({"schema_version": 1, **_export_document(outcome)}, indent=2))
    else:
        _print_export(outcome)
    return 0


def _export_document(outcome: core.ExportOutcome) -> dict:
    sel = outcome.selected
    return {"written": [str(p) for p in outcome.written], "formats": list(outcome.formats),
            "skipped": dict(outcome.skipped), "option": sel.option, "label": sel.label,
            "config": json.loads(sel.cfg.model_dump_json()),
            "peak_device_bytes": sel.need_bytes, "peak_allocated_bytes": sel.estimate.peak_allocated_bytes,
            "capacity_bytes": sel.capacity_bytes, "fits": sel.fits, "notes": list(outcome.notes)}


def _print_export(outcome: core.ExportOutcome) -> None:
    sel = outcome.selected
    which = "a configuration given by hand" if sel.option is None else (
        "the plan's choice" if sel.option == 0 else f"option {sel.option} of the plan")
    capacity = f" of {sel.capacity_bytes / 2**30:.2f} GiB" if sel.capacity_bytes is not None else ""
    print(f"exported {which}: {sel.label} · {sel.need_bytes / 2**30:.2f} GiB per GPU{capacity}")
    for path in outcome.written:
        print(printable(f"wrote {path}"))
    for name, why in outcome.skipped.items():
        print(f"skipped {name}: {why}")
    for note in outcome.notes:
        print(f"note: {note}")
    cfg = sel.cfg
    steps = cfg.accumulation(sel.effective_batch)
    trained = cfg.micro_batch * cfg.gpus * steps
    if trained != sel.effective_batch:  # the accumulation is whole: the files train the nearest batch at or above
        print(f"note: {cfg.micro_batch} x {cfg.gpus} GPU{'s' if cfg.gpus > 1 else ''} x {steps} accumulation "
              f"step{'s' if steps > 1 else ''} = {trained} sequences per optimizer step, not the effective batch's "
              f"{sel.effective_batch} (it is not a multiple of micro batch x GPUs)")


def cmd_verify(args: argparse.Namespace) -> int:
    """Run the configuration: the exported train.py for a few steps on the GPU, or the fake-tensor dry run."""
    sel, _ = selected_option(args)
    mode, note = core.verify_mode("dry" if args.dry_run else args.device)
    if note:
        print(note, file=sys.stderr)

    def progress(event: dict) -> None:
        if args.json:
            return
        if event["event"] == "step":
            memory = f" · peak {event['peak_allocated_bytes'] / 2**30:.2f} GiB" if "peak_allocated_bytes" in event else ""
            print(f"step {event['step']}/{args.steps} · loss {event['loss']:.3f} · {event['tokens_per_s']:,.0f} tok/s{memory}",
                  file=sys.stderr)
        elif event["event"] == "start":
            print(f"verifying {sel.label} in a child process ({event.get('mode', mode)}, pid {event.get('pid')}) ...",
                  file=sys.stderr)

    from .verify.runner import drain

    events = drain(core.start_verify(sel, mode, args.steps, runner=args.runner), progress)
    report = core.verify_report(sel, mode, events, save_calibration=not args.no_calibration)
    if args.json:
        _print_json(report)
    else:
        from .render import verify_text

        print(verify_text(report))
    if report.error:
        return 1
    return 4 if report.oom else 0


def cmd_gpus(args: argparse.Namespace) -> int:
    """Detected GPUs.  No driver is not bad input: exit 0 with an empty list, the reason and a hint."""
    from .report import GpusReport

    report = GpusReport.from_detection(core.detect_gpus())
    if args.json:
        _print_json(report)
    else:
        from .render import gpus_table

        print(gpus_table(report))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The catalog, with what each entry is: estimated by the torch-free model, or a model type it does not
    read (``estimate`` then derives it from transformers' shapes, or refuses its layout, see models/derive.py).
    Listing never starts transformers."""
    from .models import count_params
    from .models.catalog import catalog_arch, catalog_entries, entry_model_type
    from .models.hf_config import supported_model_types

    known = set(supported_model_types())
    rows = []
    for entry in catalog_entries():
        model_type = entry_model_type(entry)
        row: dict[str, Any] = {"name": entry["name"], "hf_id": entry.get("hf_id"), "model_type": model_type,
                               "estimated": "torch-free" if model_type in known else "derived-or-refused"}
        if model_type in known:
            arch = catalog_arch(entry["name"])
            row.update(params=count_params(arch).total, layers=arch.num_layers, hidden_size=arch.hidden_size,
                       vocab_size=arch.vocab_size, max_position_embeddings=arch.max_position_embeddings,
                       vision=getattr(arch, "vision", None) is not None)
        rows.append(row)
    if args.json:
        print(json.dumps({"schema_version": 1, "models": rows}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        size = f"{r['params'] / 1e9:7.2f} B" if "params" in r else "      - B"
        what = "" if r["estimated"] == "torch-free" else "  (not in the torch-free model: estimate derives or refuses it)"
        print(f"{r['name']:<{width}}  {size}  {r['model_type']:<16} {r['hf_id'] or ''}{what}")
    return 0


def _print_json(model: Any) -> None:
    print(model.model_dump_json(indent=2))


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", default=None, help="a directory (default lora-advisor-export/), or a file for one format")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--allow-no-fit", action="store_true", help="export even when the config does not fit its GPU "
                   "(each file's header says so)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lora-advisor", description="Which LoRA / QLoRA / full fine-tuning setup fits your GPUs, and why.")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
        p.set_defaults(func=func)
        return p

    plan = command("plan", "propose the fastest config that fits, with the reason for every choice", cmd_plan)
    add_goal_flags(plan)
    add_hardware_flags(plan)
    add_job_flags(plan)
    plan.add_argument("--export", default=None, metavar="FORMATS",
                      help="also export the chosen config: all, or a comma list of " + ", ".join(core.EXPORT_FORMATS))
    plan.add_argument("--option", type=_option_index, default=0, help="with --export: which option (0 = the choice)")
    _add_output_flags(plan)

    for name, help_text, func in (("estimate", "memory of one configuration: breakdown, phases, peaks", cmd_estimate),
                                  ("limits", "the longest sequence and the largest micro batch that fit a config",
                                   cmd_limits)):
        p = command(name, help_text, func)
        add_goal_flags(p)
        add_config_flags(p)
        add_hardware_flags(p)
        if name == "estimate":
            add_job_flags(p)

    export = command("export", "write the plan's config (or one given by hand) for PEFT+TRL, TRL, axolotl, "
                     "LLaMA-Factory, accelerate, DeepSpeed", cmd_export)
    export.add_argument("--format", "-f", required=True,
                        help="all, or a comma list of " + ", ".join(core.EXPORT_FORMATS))
    add_goal_flags(export)
    add_config_flags(export, defaults=False)
    add_hardware_flags(export)
    add_plan_file_flags(export)
    _add_output_flags(export)

    verify = command("verify", "run the plan's config for a few steps (or trace one on fake tensors) and compare "
                     "with the estimate", cmd_verify)
    add_goal_flags(verify)
    add_config_flags(verify, defaults=False)
    add_hardware_flags(verify)
    add_plan_file_flags(verify)
    verify.add_argument("--steps", type=_at_most(core.MAX_STEPS), default=10)
    verify.add_argument("--dry-run", action="store_true", help="trace one step on fake tensors (no GPU needed)")
    verify.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: the GPU when there is one, else the dry run; cpu: a tiny real run for smoke tests")
    verify.add_argument("--runner", choices=core.VERIFY_RUNNERS, default="job",
                        help="on CUDA: job = the exported train.py (the real stack), step = the bare training step "
                             "(random weights for every method, 4-bit too; no download)")

    command("gpus", "the NVIDIA GPUs on this machine (through NVML)", cmd_gpus)
    command("models", "list the model catalog", cmd_models)
    return parser


def run_tui(argv: list[str]) -> int:
    """`lora-advisor` with no command: the Textual app, pre-filled from the planning flags."""
    parser = _Parser(prog="lora-advisor", description="Interactive session (the commands: lora-advisor --help-commands)")
    parser.add_argument("--model", "-m", default="llama-3.1-8b")
    add_goal_flags(parser, with_model=False)
    add_hardware_flags(parser)
    add_job_flags(parser)
    args = parser.parse_args(argv)
    args.from_file = None
    request = plan_request(args)
    # Textual would take over a pipe or a file and wait for keys that never come
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the interactive app needs a terminal, and stdin or stdout is not one",
                         "run a command instead, e.g. `lora-advisor plan --model llama-3.1-8b --json` "
                         "(`lora-advisor --help` lists them)")
    try:
        from .tui import make_app
    except ImportError:
        raise UsageError("the interactive app needs textual", "pip install textual, or use a command: lora-advisor plan --help") from None
    app = make_app(request=request)
    app.run()
    return app.return_code or 0  # an app that died of an exception exits non-zero


def describe_error(err: AdvisorError) -> str:
    """One line: the flag the error is about (when the message does not name it already), the error, a hint."""
    message, hint = err.message, err.hint
    if err.field == "allow_no_fit":  # not a wrong flag: the way past the refusal is one
        hint = "choose an option that fits (see `lora-advisor plan`), or pass --allow-no-fit"
    elif (flag := FLAG_FOR_FIELD.get(err.field or "")) and flag not in message:
        message = f"{flag}: {message}"
    return f"error: {message}" + (f" (hint: {hint})" if hint else "")


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
        args.given = given_flags(argv)
        if not getattr(args, "command", None):
            raise UsageError("name a command: plan, estimate, limits, verify, export, gpus or models",
                             "try `lora-advisor estimate --model llama-3.1-8b --method qlora`")
        return args.func(args)
    except AdvisorError as err:
        print(describe_error(err), file=sys.stderr)
        if want_json:
            from .report import ErrorReport

            _print_json(ErrorReport(error=err.message, hint=err.hint, field=FLAG_FOR_FIELD.get(err.field or "")))
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
