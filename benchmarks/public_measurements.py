"""The estimate against published real GPU memory measurements (../shared/data/public-*.csv).

    python benchmarks/public_measurements.py [--csv PATH] [--throughput-csv PATH]

Two sources: public-measurements.csv (rows `pm:N`, N its row index) and the rows of public-throughput.csv
that publish a memory number (rows `tp:ROW_ID`).

No GPU is lent to most sessions, so these rows are the only real-run ground truth at hand.  Only rows whose
setup maps onto a configuration of ours are compared; each mapping is written out below with what is
assumed, and every other row is listed with the reason it is not comparable (encoder-decoder models,
torchtune's fused optimizer step or activation offload, totals from blog posts, missing flags).  A
throughput row that is the same run as a public-measurements row (same repository, model, method, and
sequence length, batch and number where both state them) is listed as such, not compared twice.  The
measured number is read from the CSV, never copied here.  Which level a number is (torch's peak
allocated, reserved, or nvidia-smi) decides which of our three peaks it is compared with.

This is a sanity check, not a calibration: the sources differ in framework, kernels and unit habits
("GB" printed by tools that divide by 2^30 is common), so the table says where the estimate stands,
and the overhead constants are not fitted to it.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import default_path, write_result  # noqa: E402  (benchmarks/, the script's own folder)
from advisor.hardware import hardware_for  # noqa: E402
from advisor.memory import TrainConfig, estimate  # noqa: E402
from advisor.models import resolve_model  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "public-measurements.csv"
DEFAULT_THROUGHPUT_CSV = ROOT.parent / "shared" / "data" / "public-throughput.csv"
LEVELS = {"allocated": "peak_allocated_bytes", "reserved": "peak_reserved_bytes", "device": "peak_device_bytes"}

# row index -> (catalog model, our config, GPU, level the number is, what is assumed)
MAPPED = {
    9: ("llama-3.2-3b", dict(method="full", seq_len=4096, micro_batch=2, stack="torchtune"), "a100-80gb", "allocated",
        "torchtune 'Peak Memory Active', pure bf16 AdamW, packed 4096, before torch.compile (its table's 2nd step)"),
    # The PEFT docs' rows (docs/source/accelerate/fsdp.md, deepspeed.md) run examples/sft/train.py with the commands
    # the pages print, lora_dropout 0.1 included.  Rows 37-39 are the device level: that script logs no torch memory
    # statistic, the pages' other numbers are GPU-memory screenshots ("72-80 GB (90-98%) as seen in the screenshot",
    # with "the slight increase ... at the end" of a time series), and these ones come with the CPU RAM in use:
    # a system monitor's readings, not torch's allocated peak.  The numbers were published on 2024-02-26 (row 40, peft
    # aa2ca83ca) and 2024-03-13 (rows 37-39, 6008f272a, examples/sft/requirements.txt: transformers from git main):
    # transformers 4.38 / 4.39, whose LlamaForCausalLM shifts the fp32 logits into a contiguous copy (loss "shifted").
    37: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, fsdp=True, offload="params", lora_dropout=0.1, loss="shifted"), "2x4090", "device",
         "PEFT FSDP QLoRA docs, per GPU, FSDP1 + CPU param offload, lora_dropout 0.1, transformers 4.39's loss, read beside the CPU RAM"),
    38: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, fsdp=True, lora_dropout=0.1, loss="shifted"), "2xa100-80gb", "device",
         "PEFT FSDP QLoRA docs, per GPU, no offload, lora_dropout 0.1, transformers 4.39's loss"),
    39: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, zero=3, lora_dropout=0.1, loss="shifted"), "2xa100-40gb", "device",
         "PEFT DeepSpeed QLoRA docs, per GPU, ZeRO-3, lora_dropout 0.1, transformers 4.39's loss"),
    40: ("llama-2-70b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=8, grad_ckpt=True,
                             gpus=8, zero=3, lora_dropout=0.1, loss="shifted"), "8xh100", "device",
         "PEFT DeepSpeed docs, nvidia-smi screenshot, ZeRO-3, lora_dropout 0.1, transformers 4.38's loss"),
}


# Rows read against the estimate but not scored: their setup cannot be pinned down, so they check nothing.  LLaMA-Factory
# issue 7409 (2025-03-21) reports Qwen2-7B-Instruct LoRA r8 at three shapes; the post names no device for them, and
# its other run (the next row) is on Ascend 910B NPUs, whose allocator, runtime and attention kernels are not a
# CUDA GPU's.  Its "G" is ambiguous: the post gives the model as "14.3G", and Qwen2-7B's bf16 weights are 15.2 GB =
# 14.2 GiB.  Checkpointing is "likely", and the data is unpacked with unpublished lengths.  The table shows the
# readings both ways (GB and GiB) beside the estimate; benchmarks/variable_lengths.py replays their unpacked batches.
UNSCORED_REASON = ("device not stated (the same post trains on Ascend 910B NPUs), 'G' read as GB or GiB, "
                   "checkpointing 'likely', unpacked data of unpublished lengths")
UNSCORED = {
    60: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=1024, grad_ckpt=True,
                            stack="llamafactory", lengths="variable"), "a100-80gb",
         "device", "Qwen2-7B (Qwen2.5-7B's shapes), checkpointing on, an 80 GB CUDA GPU assumed"),
    61: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, grad_ckpt=True,
                            stack="llamafactory", lengths="variable"), "a100-80gb",
         "device", "as above, seq 2048"),
    62: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                            stack="llamafactory", lengths="variable"),
         "a100-80gb", "device", "as above, micro batch 2 (28.2 GB at first, 32 GB after a few steps)"),
}


# rows the generic reasons below would misdescribe
REASONS = {2: "torchtune with torch.compile and its chunked CE (neither modelled: compile fuses and frees "
              "differently, CEWithChunkedOutputLoss is not the tiled loss)",
           12: "torchtune with torch.compile and its chunked CE (as row 2)",
           8: "unpacked alpaca under a 4096 cutoff: the longest batch sets the peak, and alpaca's lengths "
              "(far under 4096) are not in the row", 10: "adds torch.compile (not modelled)",
           11: "adds torch.compile and chunked CE to row 10", 26: "memory after model init only",
           27: "memory after model init only", 63: "an Ascend NPU, not a GPU", 64: "a fits-on claim, not a measurement"}


# public-throughput.csv row_id -> a mapping as in MAPPED.  None yet: no row with a memory number that is not
# already in public-measurements.csv is known well enough (the reasons below say what is missing).
TP_MAPPED: dict[int, tuple] = {}

# why the throughput rows of each source are not compared (Unsloth, torch.compile and an unnamed model are
# added by _tp_reason); TP_ROW_REASONS for the rows their source's reason would misdescribe
TP_REASONS = {
    "llamafactory_tgs": "cutoff 1024 only: variable-length batches padded to the longest, dataset and lengths not "
                        "published; LoRA targets and the level of the (whole-GB) number not stated",
    "unsloth_readme": "benchmark notebook: sequence length and batch not stated",
    "unsloth_readme_epoch": "Alpaca batches padded to the longest, lengths not published",
    "torchtitan_2024": "selective per-op activation checkpointing not modelled (torchtitan pretraining, FSDP2)",
    "axolotl_llama4": "MoE Llama 4 Scout: not in the catalog, no config in model-configs; 4-bit AdamW not modelled",
    "litgpt_config_hub": "litgpt's own model and LoRA implementation (fused qkv, bf16-true adapters and optimizer "
                         "states, its chunked CE): a stack we do not model",
    "ms_swift_benchmark": "Qwen-1 remote-code model not in the catalog",
}
TP_ROW_REASONS = {382: "MoE Llama 4 Scout: not in the catalog, no config in model-configs; activation offload "
                       "(gradient_checkpointing: offload) and 4-bit AdamW not modelled",
                  451: "Qwen-1 remote-code model not in the catalog; one number per GPU of a 2-GPU run, split not stated",
                  534: "Unsloth kernels; sequence lengths not stated"}


def _number(text: str) -> float | None:
    match = re.match(r"\s*([\d.]+)", text)
    return float(match.group(1)) if match else None


def _measured_bytes(row: dict) -> int | None:
    number = re.fullmatch(r"\s*([\d.]+)\s*", row["measured_peak_gb"])
    if not number:
        return None
    unit = 2**30 if "unit=GiB" in row["notes"] else 10**9
    return int(float(number.group(1)) * unit)


def _tp_measured_bytes(row: dict) -> int | None:
    """The memory number of a throughput row in the unit its source prints (GiB, GB, MiB, MB)."""
    match = re.match(r"\s*([\d.]+)\s*(GiB|GB|MiB|MB)\b", row["memory_published"])
    if not match:
        return None
    return int(float(match.group(1)) * {"GiB": 2**30, "GB": 10**9, "MiB": 2**20, "MB": 10**6}[match.group(2)])


def _same_run(pm: dict, tp: dict) -> bool:
    """Whether a throughput row restates a public-measurements row: same repository, model and method, and the
    same sequence length, micro batch and number wherever both rows state them."""
    def repo(text):
        match = re.search(r"github(?:\.com/|:)([\w.-]+/[\w.-]+)", text)
        return match and match.group(1)
    pairs = [(pm["seq_len"], tp["seq_len"]), (pm["micro_batch"], tp["micro_batch_per_gpu"]),
             (pm["measured_peak_gb"], tp["memory_published"])]
    return (repo(pm["source"]) is not None and repo(pm["source"]) == repo(tp["source_ref"])
            and tp["model"].lower() in pm["model"].lower() and pm["method"].split()[0] == tp["method"]
            and all(a is None or b is None or a == b for a, b in ((_number(x), _number(y)) for x, y in pairs)))


def _unmapped_reason(row: dict) -> str:
    text = " ".join(row.values()).lower()
    if any(word in text for word in ("t5", "t0_", "mt0", "bloomz")):
        return "encoder-decoder or BLOOM architecture: not modelled"
    if row["kind_of_number"].startswith("estimate"):
        return "an estimate, not a measurement"
    if "optimizer_in_bwd" in text or "act. off" in text or "fused optimizer" in text:
        return "torchtune optimizer-in-backward / activation offload: not modelled"
    if "variable" in row["seq_len"] or "n/a" in row["seq_len"] or "not stated" in row["seq_len"]:
        return "sequence length not stated or variable"
    if "see doc" in text or "config default" in text or "unknown" in text:
        return "flags not stated"
    return "hardware or model outside the catalog"


def _tp_reason(row: dict, pm_rows: list[dict]) -> str:
    same = next((i for i, pm in enumerate(pm_rows) if _same_run(pm, row)), None)
    if same is not None:
        return f"same run as public-measurements row {same}"
    row_id = int(row["row_id"])
    if row_id in TP_ROW_REASONS:
        return TP_ROW_REASONS[row_id]
    reason = TP_REASONS.get(row["source_key"], "not reviewed: no mapping or reason written for this row")
    if "unsloth" in (row["attention_impl"] + row["framework_and_opts"]).lower():
        reason = "Unsloth kernels; " + reason
    if "unspecified" in row["model"]:
        reason = "model not named; " + reason
    if "compile" in row["framework_and_opts"]:
        reason += "; torch.compile"
    return reason


def _compare(label: str, source_model: str, setup: str, measured: int, mapping: tuple) -> tuple[str, tuple]:
    """One mapped row: its table line, and (error %, inside the range, range width %)."""
    model, fields, gpu, level, assumed = mapping
    est = estimate(resolve_model(model), TrainConfig(**fields), hardware_for(gpu))
    predicted = getattr(est, LEVELS[level])
    err = 100.0 * (predicted - measured) / measured
    # like for like: torch's allocated peak has the tensors' spread alone (peak_allocated_range_bytes); the
    # reserved level has the allocator's spread too, so it takes the device range less what only the device
    # level has (the CUDA context and NCCL), shifted by the difference of the expected values
    if level == "allocated":
        low, high = est.peak_allocated_range_bytes
    else:
        low, high = (bound - (est.peak_device_bytes - predicted) for bound in est.peak_device_range_bytes)
    inside = low <= measured <= high
    if est.unpacked_cache_bytes:  # unpacked data: how many new-longest-batch caches the reading holds
        assumed += (f"; unpacked: {est.unpacked_cache_bytes / 2**30:.1f} GiB cached per new longest batch on a card "
                    f"with room, the reading is {(measured - predicted) / est.unpacked_cache_bytes:+.1f} of them")
    line = (f"| {label} | {source_model} | {setup} | {level} | {measured / 2**30:.1f} | {predicted / 2**30:.1f} | "
            f"{low / 2**30:.1f}-{high / 2**30:.1f} | {err:+.1f} | {'yes' if inside else 'NO'} | {assumed} |")
    return line, (err, inside, 100.0 * (high - low) / predicted)


def _unscored_line(label: str, row: dict, mapping: tuple) -> str:
    """A row read but not scored: the estimate beside the reading taken as GB and as GiB."""
    model, fields, gpu, level, assumed = mapping
    est = estimate(resolve_model(model), TrainConfig(**fields), hardware_for(gpu))
    predicted, (low, high) = getattr(est, LEVELS[level]), est.peak_device_range_bytes
    number = float(row["measured_peak_gb"])
    readings = " / ".join(f"{number * unit / 2**30:.1f} ({100 * (predicted - number * unit) / (number * unit):+.1f} %)"
                          for unit in (10**9, 2**30))
    setup = f"{row['method']} r{row['rank']} seq {row['seq_len']} mb {row['micro_batch']}"
    return (f"| {label} | {row['model']} | {setup} | {readings} | {predicted / 2**30:.1f} | "
            f"{low / 2**30:.1f}-{high / 2**30:.1f} | {assumed} |")


def _summary(what: str, results: list[tuple], total: int | str) -> str:
    if not results:
        return f"{what}: 0 comparable rows of {total}"
    errors, inside, widths = zip(*results)
    return (f"{what}: {len(errors)} comparable rows of {total}: median error {statistics.median(errors):+.1f} %, "
            f"median |error| {statistics.median(abs(e) for e in errors):.1f} %, range {min(errors):+.1f} % .. "
            f"{max(errors):+.1f} %; inside the estimate's range: {sum(inside)} of {len(inside)}; median range width "
            f"{statistics.median(widths):.1f} % of the expected value")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="public-measurements.csv")
    parser.add_argument("--throughput-csv", type=Path, default=DEFAULT_THROUGHPUT_CSV,
                        help="public-throughput.csv (its rows with a memory_published number)")
    args = parser.parse_args()
    for path, flag in ((args.csv, "--csv"), (args.throughput_csv, "--throughput-csv")):
        if not path.exists():
            print(f"error: {path} not found (hint: pass {flag} PATH)", file=sys.stderr)
            return 2
    rows = list(csv.DictReader(args.csv.open(encoding="utf-8")))
    tp_rows = [row for row in csv.DictReader(args.throughput_csv.open(encoding="utf-8"))
               if row["memory_published"].strip()]
    lines = ["| row | source model | setup | level | measured GiB | estimate GiB | range GiB | error % | in range | assumed |",
             "|---|---|---|---|---:|---:|---|---:|:-:|---|"]
    pm_results, tp_results = [], []
    for index, mapping in MAPPED.items():
        row = rows[index]
        setup = f"{row['method']} r{row['rank'] or '-'} seq {row['seq_len']} mb {row['micro_batch']} {row['gpus']}"
        line, result = _compare(f"pm:{index}", row["model"], setup, _measured_bytes(row), mapping)
        lines.append(line)
        pm_results.append(result)
    for row in tp_rows:
        if int(row["row_id"]) in TP_MAPPED:
            setup = (f"{row['method']} {row['peft_config'] or ''} seq {row['seq_len']} mb {row['micro_batch_per_gpu']} "
                     f"{row['n_gpus']}x {row['gpu']}")
            line, result = _compare(f"tp:{row['row_id']}", row["model"], setup, _tp_measured_bytes(row),
                                    TP_MAPPED[int(row["row_id"])])
            lines.append(line)
            tp_results.append(result)
    unscored = ["", f"Read, not scored ({UNSCORED_REASON}):", "",
                "| row | source model | setup | measured GiB as GB / as GiB (estimate's error) | estimate GiB | "
                "range GiB | assumed |", "|---|---|---|---|---:|---|---|"]
    unscored += [_unscored_line(f"pm:{index}", rows[index], mapping) for index, mapping in UNSCORED.items()]
    skipped = ["", "| row | source model | not compared because |", "|---|---|---|"]
    skipped += [f"| pm:{i} | {row['model']} | {REASONS.get(i) or _unmapped_reason(row)} |"
                for i, row in enumerate(rows) if i not in MAPPED and i not in UNSCORED]
    skipped += [f"| tp:{row['row_id']} | {row['model']} | {_tp_reason(row, rows)} |"
                for row in tp_rows if int(row["row_id"]) not in TP_MAPPED]
    summary = "\n".join(["", _summary("all mapped rows", pm_results + tp_results, f"{len(rows)} + {len(tp_rows)}"),
                         _summary(f"pm ({args.csv.name})", pm_results, len(rows)),
                         _summary(f"tp ({args.throughput_csv.name}, rows with a memory number)", tp_results,
                                  len(tp_rows))])
    text = "\n".join(lines) + "\n" + summary + "\n" + "\n".join(unscored + skipped)
    print(text)
    out = write_result(default_path("public-measurements"), "The estimate against published GPU measurements", text,
                       about=f"; data: {args.csv.name}, {args.throughput_csv.name}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
