"""Allocator fragmentation across configs: the traced step replayed through PyTorch's caching allocator.

    python benchmarks/allocator_replay.py [--out FILE] [--models a,b]

For each config the oracle (advisor/verify/dryrun.py) traces two steps on fake tensors and replays their
allocations through the caching allocator's rules (advisor/memory/allocator.py), with Hopper's 32 MiB cuBLAS
workspaces.  The table gives the replayed peak reserved over the replayed peak allocated (the fragmentation a
real run reads) next to the estimate's flat FRAGMENTATION, and the estimate's reserved error against the
replay.  The replay reproduced three Llama-3.2-1B steps measured on an H200 to 0.04 %
(benchmarks/results/gpu-h200-2026-12-04), so this is the allocator term's check where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.core import resolve_model  # noqa: E402
from advisor.memory.config import TrainConfig  # noqa: E402
from advisor.memory.estimate import estimate  # noqa: E402
from advisor.memory.overheads import CUBLAS_WORKSPACE_HOPPER_BYTES, FRAGMENTATION  # noqa: E402
from advisor.verify.dryrun import run_dry  # noqa: E402

MODELS = ["qwen2.5-0.5b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b"]
METHODS = [dict(method="lora"), dict(method="qlora"), dict(method="full", optimizer="adamw")]
SHAPES = [(256, 1), (512, 1), (2048, 1), (768, 4), (4096, 1)]


def configs(models: list[str]):
    for model, method, ckpt, (seq, micro) in itertools.product(models, METHODS, (True, False), SHAPES):
        if model == "qwen2.5-7b" and (method["method"] == "full" or seq * micro > 2048):
            continue  # 7B traces are slow on a CPU; its short sequences are where fragmentation matters
        yield model, TrainConfig(attn="sdpa", grad_ckpt=ckpt, seq_len=seq, micro_batch=micro, **method)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", help="comma-separated catalog names instead of the default list")
    args = parser.parse_args()
    from advisor.hardware import Hardware

    hardware = Hardware(name="H200", memory_bytes=141 * 10**9, compute_capability=(9, 0))  # Hopper workspaces
    rows, ratios, errors = [], [], []
    started = time.perf_counter()
    for name, cfg in configs(args.models.split(",") if args.models else MODELS):
        arch = resolve_model(name)
        result = run_dry(arch, cfg, workspace_bytes=CUBLAS_WORKSPACE_HOPPER_BYTES)
        est = estimate(arch, cfg, hardware)
        ratio = result.replayed_reserved / result.replayed_peak_allocated - 1
        error = 100 * (est.peak_reserved_bytes - result.replayed_reserved) / result.replayed_reserved
        ratios.append(ratio)
        errors.append(error)
        label = f"{cfg.method} {'ckpt' if cfg.grad_ckpt else 'no ckpt'} {cfg.seq_len}x{cfg.micro_batch}"
        rows.append(f"| {name} | {label} | {result.replayed_peak_allocated / 2**30:.2f} | "
                    f"{result.replayed_reserved / 2**30:.2f} | {100 * ratio:.1f} | {error:+.1f} |")
        print(rows[-1], flush=True)
    q = statistics.quantiles(ratios, n=10)
    summary = (f"{len(rows)} configs; fragmentation (reserved / allocated - 1): median {100 * statistics.median(ratios):.1f} %, "
               f"p10 {100 * q[0]:.1f} %, p90 {100 * q[-1]:.1f} %, min {100 * min(ratios):.1f} %, max {100 * max(ratios):.1f} % "
               f"(the estimate assumes {100 * FRAGMENTATION:.0f} %); estimate's reserved vs replay: median "
               f"{statistics.median(errors):+.1f} %, min {min(errors):+.1f} %, max {max(errors):+.1f} %")
    text = (f"# Allocator replay: fragmentation by config\n\nDate: {dt.date.today()}; machine: {platform.node()} "
            f"({platform.processor() or platform.machine()}), CPU only (fake tensors); {time.perf_counter() - started:.0f} s.\n\n"
            f"{summary}\n\n| model | config | allocated GiB | reserved GiB | fragmentation % | estimate reserved error % |\n"
            "|---|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    print(summary)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
