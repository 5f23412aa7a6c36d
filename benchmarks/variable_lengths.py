"""Unpacked data of varying length, replayed through the caching allocator, against the published rows.

    python benchmarks/variable_lengths.py [--csv PATH] [--steps 12] [--out FILE]

The estimate assumes every batch has the planned shape (packed, or padded to the cutoff).  Unpacked data
gives each step its own length, and the allocator caches segments of every size it has seen: reserved grows
over the first steps.  The LLaMA-Factory user report that public_measurements.py reads but does not score
(rows 60-62: Qwen2-7B LoRA r8, cutoff 1024 / 2048; device not stated) reads up to 17-23 % above the estimate
and says "28.2 GB initially, rose to 32 GB after a few steps".  This traces the same config for N steps whose
lengths are drawn uniformly from [cutoff / 8, cutoff] (seeded; the last step at the cutoff) and replays them (advisor/verify/dryrun.py,
advisor/memory/allocator.py); the device peak adds the estimate's CUDA context.  The length distribution
of the user's data is not published, so this shows the mechanism's size, not a fit.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from public_measurements import DEFAULT_CSV, UNSCORED, _measured_bytes  # noqa: E402

from advisor.hardware import hardware_for  # noqa: E402
from advisor.memory import TrainConfig, estimate  # noqa: E402
from advisor.memory.overheads import CUDA_CONTEXT_BYTES, cublas_workspace_bytes  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.dryrun import run_dry  # noqa: E402

ROWS = (60, 61, 62)
GiB = 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="public-measurements.csv")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.csv.exists():
        print(f"error: {args.csv} not found (hint: pass --csv PATH)", file=sys.stderr)
        return 2
    if args.steps < 2:
        print("error: --steps must be 2 or more (hint: 12 shows the cache growing)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(args.csv.open(encoding="utf-8")))
    if len(rows) <= max(ROWS) or "measured_peak_gb" not in rows[0]:
        print(f"error: {args.csv} has {len(rows)} rows; rows {ROWS[0]}-{ROWS[-1]} of public-measurements.csv are "
              "needed (hint: pass --csv PATH)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    lines = ["| row | config | measured GiB | estimate GiB (fixed shape) | replay fixed GiB | replay varying GiB | "
             "varying error % |", "|---|---|---:|---:|---:|---:|---:|"]
    for index in ROWS:
        model, fields, gpu, level, _ = UNSCORED[index]
        arch, cfg, hardware = resolve_model(model), TrainConfig(**fields), hardware_for(gpu)
        measured = _measured_bytes(rows[index]) / GiB
        est = estimate(arch, cfg, hardware)
        workspace = cublas_workspace_bytes(hardware.compute_capability)
        fixed = run_dry(arch, cfg.model_copy(update={"lengths": "fixed"}), workspace_bytes=workspace)
        lengths = cfg.model_copy(update={"lengths": "variable"}).step_lengths(args.steps, seed=index)
        varying = run_dry(arch, cfg, workspace_bytes=workspace, seq_lens=lengths)
        fixed_device = (fixed.replayed_reserved + CUDA_CONTEXT_BYTES) / GiB
        varying_device = (varying.replayed_reserved + CUDA_CONTEXT_BYTES) / GiB
        label = f"{model} {cfg.method} r{cfg.rank} seq {cfg.seq_len} x mb {cfg.micro_batch} ({level})"
        lines.append(f"| pm:{index} | {label} | {measured:.1f} | {est.peak_device_bytes / GiB:.1f} | {fixed_device:.1f} | "
                     f"{varying_device:.1f} | {100 * (varying_device - measured) / measured:+.1f} |")
        print(lines[-1], flush=True)
    text = (f"# Variable lengths through the allocator replay\n\nDate: {dt.date.today()}; machine: {platform.node()} "
            f"({platform.machine()}), CPU only (fake tensors); {args.steps} steps per row, lengths uniform in "
            f"[cutoff/8, cutoff], the last at the cutoff; {time.perf_counter() - started:.0f} s.\n\n" + "\n".join(lines) + "\n")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
