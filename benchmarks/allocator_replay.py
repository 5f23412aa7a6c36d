"""Allocator fragmentation across configs: the traced step replayed through PyTorch's caching allocator.

    python benchmarks/allocator_replay.py [--out FILE] [--models a,b]
    python benchmarks/allocator_replay.py --rescore FILE [--out FILE]   # score recorded replays again

For each config the oracle (advisor/verify/dryrun.py) traces two steps on fake tensors and replays their
allocations through the caching allocator's rules (advisor/memory/allocator.py), with Hopper's 32 MiB cuBLAS
workspaces.  The table gives the replayed peak reserved over the replayed peak allocated (the fragmentation a
real run reads), the reserved error of a flat 5 % and of the estimate's allocator term against the replay,
and whether the device peak (replayed reserved + the 767 MiB context an H200 measured) lies inside the
estimate's range.  The replay reproduced three Llama-3.2-1B steps measured on an H200 to 0.04 %
(benchmarks/results/gpu-h200-2026-12-04), so this checks the allocator term where no GPU is at hand.
`--rescore` reads the allocated / reserved columns of an earlier result and scores them against the current
estimate without tracing again (the replay does not depend on the estimate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.core import resolve_model  # noqa: E402
from advisor.hardware import Hardware  # noqa: E402
from advisor.memory.config import TrainConfig  # noqa: E402
from advisor.memory.estimate import estimate  # noqa: E402
from advisor.memory.overheads import CUBLAS_WORKSPACE_HOPPER_BYTES, FRAGMENTATION  # noqa: E402

GiB = 2**30
MODELS = ["qwen2.5-0.5b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b"]
METHODS = ["lora", "qlora", "full"]
SHAPES = [(256, 1), (512, 1), (2048, 1), (768, 4), (4096, 1)]
H200 = Hardware(name="H200", memory_bytes=141 * 10**9, compute_capability=(9, 0))  # Hopper workspaces
H200_CONTEXT = 767 * 2**20  # device minus reserved in the H200 runs
ROW = re.compile(r"\| (\S+) \| (\w+) (ckpt|no ckpt) (\d+)x(\d+) \| ([\d.]+) \| ([\d.]+) \|")


def config(method: str, ckpt: bool, seq: int, micro: int) -> TrainConfig:
    extra = {"optimizer": "adamw"} if method == "full" else {}
    return TrainConfig(method=method, attn="sdpa", grad_ckpt=ckpt, seq_len=seq, micro_batch=micro, **extra)


def configs(models: list[str]):
    for model, method, ckpt, (seq, micro) in itertools.product(models, METHODS, (True, False), SHAPES):
        if model == "qwen2.5-7b" and (method == "full" or seq * micro > 2048):
            continue  # 7B traces are slow on a CPU; its short sequences are where fragmentation matters
        yield model, method, ckpt, seq, micro


def score(model: str, method: str, ckpt: bool, seq: int, micro: int, allocated: float, reserved: float) -> dict:
    """allocated / reserved in GiB (the replay's); the errors in % of the replayed reserved."""
    est = estimate(resolve_model(model), config(method, ckpt, seq, micro), H200)
    low, high = (b / GiB for b in est.peak_device_range_bytes)
    device = reserved + H200_CONTEXT / GiB
    return {"model": model, "label": f"{method} {'ckpt' if ckpt else 'no ckpt'} {seq}x{micro}",
            "allocated": allocated, "reserved": reserved, "fragmentation": 100 * (reserved / allocated - 1),
            "flat_error": 100 * (allocated * (1 + FRAGMENTATION) - reserved) / reserved,
            "error": 100 * (est.peak_reserved_bytes / GiB - reserved) / reserved,
            "in_range": low <= device <= high, "width": 100 * (high - low) / (est.peak_device_bytes / GiB)}


def row_text(r: dict) -> str:
    return (f"| {r['model']} | {r['label']} | {r['allocated']:.2f} | {r['reserved']:.2f} | {r['fragmentation']:.1f} | "
            f"{r['flat_error']:+.1f} | {r['error']:+.1f} | {'yes' if r['in_range'] else 'NO'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", help="comma-separated catalog names instead of the default list")
    parser.add_argument("--rescore", type=Path, help="an earlier result (markdown) whose replays to score again")
    args = parser.parse_args()
    rows: list[dict] = []
    started = time.perf_counter()
    if args.rescore and not args.rescore.is_file():
        print(f"error: {args.rescore} is not a file (hint: a result written by --out)", file=sys.stderr)
        return 2
    models = args.models.split(",") if args.models else MODELS
    from advisor.errors import AdvisorError

    try:
        for model in models:
            resolve_model(model)
    except AdvisorError as err:
        print(f"error: {err.message} (hint: {err.hint})", file=sys.stderr)
        return 2
    if args.rescore:
        for m in ROW.finditer(args.rescore.read_text()):
            rows.append(score(m[1], m[2], m[3] == "ckpt", int(m[4]), int(m[5]), float(m[6]), float(m[7])))
    else:
        from advisor.verify.dryrun import run_dry

        for model, method, ckpt, seq, micro in configs(models):
            result = run_dry(resolve_model(model), config(method, ckpt, seq, micro),
                             workspace_bytes=CUBLAS_WORKSPACE_HOPPER_BYTES)
            rows.append(score(model, method, ckpt, seq, micro, result.replayed_peak_allocated / GiB,
                              result.replayed_reserved / GiB))
            print(row_text(rows[-1]), flush=True)
    if not rows:
        print("no rows", file=sys.stderr)
        return 2
    frag, flat, errors = ([r[k] for r in rows] for k in ("fragmentation", "flat_error", "error"))
    summary = (f"{len(rows)} configs; fragmentation (reserved / allocated - 1): median {statistics.median(frag):.1f} %, "
               f"min {min(frag):.1f} %, max {max(frag):.1f} %.  Reserved against the replay: a flat "
               f"{100 * FRAGMENTATION:.0f} % median {statistics.median(flat):+.1f} % ({min(flat):+.1f} .. {max(flat):+.1f}); "
               f"the estimate median {statistics.median(errors):+.1f} % ({min(errors):+.1f} .. {max(errors):+.1f}); "
               f"device inside the estimate's range: {sum(r['in_range'] for r in rows)} of {len(rows)}, median width "
               f"{statistics.median(r['width'] for r in rows):.1f} %")
    text = (f"# Allocator replay: fragmentation by config\n\nDate: {dt.date.today()}; machine: {platform.node()} "
            f"({platform.machine()}), CPU only (fake tensors); {time.perf_counter() - started:.0f} s"
            f"{'; rescored from ' + str(args.rescore) if args.rescore else ''}.\n\n{summary}\n\n"
            "| model | config | allocated GiB | reserved GiB | fragmentation % | flat 5 % error % | estimate error % | "
            "device in range |\n|---|---|---:|---:|---:|---:|---:|---|\n" + "\n".join(map(row_text, rows)) + "\n")
    print(summary)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
