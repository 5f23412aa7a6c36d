"""The estimate against published real GPU measurements (../shared/data/public-measurements.csv).

    python benchmarks/public_measurements.py [--csv PATH]

No GPU is lent to most sessions, so these rows are the only real-run ground truth at hand.  Only rows whose
setup maps onto a configuration of ours are compared; each mapping is written out below with what is
assumed, and every other row is listed with the reason it is not comparable (encoder-decoder models,
torchtune's fused optimizer step or activation offload, totals from blog posts, missing flags).  The
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
LEVELS = {"allocated": "peak_allocated_bytes", "reserved": "peak_reserved_bytes", "device": "peak_device_bytes"}

# row index -> (catalog model, our config, GPU, level the number is, what is assumed)
MAPPED = {
    9: ("llama-3.2-3b", dict(method="full", seq_len=4096, micro_batch=2, stack="torchtune"), "a100-80gb", "allocated",
        "torchtune 'Peak Memory Active', pure bf16 AdamW, packed 4096, before torch.compile (its table's 2nd step)"),
    37: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, fsdp=True, offload="params"), "2x4090", "allocated",
         "PEFT FSDP QLoRA docs, per GPU, FSDP1 + CPU param offload"),
    38: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, fsdp=True), "2xa100-80gb", "allocated", "PEFT FSDP QLoRA docs, per GPU, no offload"),
    39: ("llama-2-70b", dict(method="qlora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                             gpus=2, zero=3), "2xa100-40gb", "allocated", "PEFT DeepSpeed QLoRA docs, per GPU, ZeRO-3"),
    40: ("llama-2-70b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=8, grad_ckpt=True,
                             gpus=8, zero=3), "8xh100", "device", "PEFT DeepSpeed docs, nvidia-smi screenshot, ZeRO-3"),
    60: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=1024, grad_ckpt=True,
                            stack="llamafactory"), "a100-80gb",
         "device", "LLaMA-Factory user report on Qwen2-7B (same shapes as Qwen2.5-7B), checkpointing assumed on"),
    61: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, grad_ckpt=True,
                            stack="llamafactory"), "a100-80gb",
         "device", "as above, seq 2048"),
    62: ("qwen2.5-7b", dict(method="lora", rank=8, targets=("all-linear",), seq_len=2048, micro_batch=2, grad_ckpt=True,
                            stack="llamafactory"),
         "a100-80gb", "device", "as above, micro batch 2 (28.2 GB at first, 32 GB after a few steps)"),
}


# rows the generic reasons below would misdescribe
REASONS = {2: "torchtune with torch.compile and its chunked CE (neither modelled: compile fuses and frees "
              "differently, CEWithChunkedOutputLoss is not the tiled loss)",
           12: "torchtune with torch.compile and its chunked CE (as row 2)",
           8: "variable-length (unpacked) batches", 10: "adds torch.compile (not modelled)",
           11: "adds torch.compile and chunked CE to row 10", 26: "memory after model init only",
           27: "memory after model init only", 63: "an Ascend NPU, not a GPU", 64: "a fits-on claim, not a measurement"}


def _measured_bytes(row: dict) -> int | None:
    number = re.fullmatch(r"\s*([\d.]+)\s*", row["measured_peak_gb"])
    if not number:
        return None
    unit = 2**30 if "unit=GiB" in row["notes"] else 10**9
    return int(float(number.group(1)) * unit)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args()
    if not args.csv.exists():
        print(f"error: {args.csv} not found (hint: pass --csv PATH)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(args.csv.open(encoding="utf-8")))
    lines = ["| row | source model | setup | level | measured GiB | estimate GiB | range GiB | error % | in range | assumed |",
             "|---:|---|---|---|---:|---:|---|---:|:-:|---|"]
    errors, inside, widths = [], [], []
    for index, (model, fields, gpu, level, assumed) in MAPPED.items():
        row = rows[index]
        measured = _measured_bytes(row)
        hw = hardware_for(gpu)
        est = estimate(resolve_model(model), TrainConfig(**fields), hw)
        predicted = getattr(est, LEVELS[level])
        err = 100.0 * (predicted - measured) / measured
        errors.append(err)
        # the range is of the device peak; at a lower level the same terms' spread applies, minus what only the
        # device level has (the CUDA context and NCCL): shift it by the difference of the expected values
        low, high = (bound - (est.peak_device_bytes - predicted) for bound in est.peak_device_range_bytes)
        inside.append(low <= measured <= high)
        widths.append(100.0 * (high - low) / predicted)
        setup = f"{row['method']} r{row['rank'] or '-'} seq {row['seq_len']} mb {row['micro_batch']} {row['gpus']}"
        lines.append(f"| {index} | {row['model']} | {setup} | {level} | {measured / 2**30:.1f} | {predicted / 2**30:.1f} | "
                     f"{low / 2**30:.1f}-{high / 2**30:.1f} | {err:+.1f} | {'yes' if inside[-1] else 'NO'} | {assumed} |")
    skipped = ["", "| row | source model | not compared because |", "|---:|---|---|"]
    skipped += [f"| {i} | {row['model']} | {REASONS.get(i) or _unmapped_reason(row)} |"
                for i, row in enumerate(rows) if i not in MAPPED]
    summary = (f"\n{len(errors)} comparable rows of {len(rows)}: median error {statistics.median(errors):+.1f} %, "
               f"median |error| {statistics.median(abs(e) for e in errors):.1f} %, range {min(errors):+.1f} % .. {max(errors):+.1f} %; "
               f"inside the estimate's range: {sum(inside)} of {len(inside)}; median range width "
               f"{statistics.median(widths):.1f} % of the expected value")
    text = "\n".join(lines) + "\n" + summary + "\n" + "\n".join(skipped)
    print(text)
    out = write_result(default_path("public-measurements"), "The estimate against published GPU measurements", text,
                       about=f"; data: {args.csv.name}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
