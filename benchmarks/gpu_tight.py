"""Unpacked data on a card with no room to spare: does the allocator's growing cache cause an OOM?

    python3 benchmarks/gpu_tight.py --out DIR [--steps 12] [--device cuda|cpu]

On a card with room, unpacked data of varying length (TrainConfig.lengths = "variable") makes the caching
allocator keep a new set of segments each time a batch is longer than every one before: reserved memory on
the H200 grew from 6.2 to 9.2 GiB (Llama-3.2-1B LoRA) and from 11.7 to 24.2 GiB (full fine-tuning) in 12
steps (results/gpu-h200-2026-12-04b).  When cudaMalloc fails, the allocator frees its cached segments that
hold no live block and retries (c10/cuda/CUDACachingAllocator.cpp, malloc: release_available_cached_blocks,
then release_cached_blocks), so the growth need not be memory the job needs.  This caps the process at the
estimate's own numbers with torch.cuda.set_per_process_memory_fraction (the allocator then treats the cap
as the card's size, the same code path as a full card) and trains the same lengths as the verify run, step
by step: OOM or not, peak reserved, and how many times the allocator had to free its cache and retry
(memory_stats num_alloc_retries).  Caps: none (the card's whole memory), the estimate's expected reserved
bytes at the cutoff (what the fixed-shape estimate says the pool needs), and the expected allocated bytes
plus 2 % (tighter).

`--device cpu` runs the loop without caps (a smoke test of this script on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2**30
CKPT = dict(grad_ckpt=True, attn="sdpa", lengths="variable")
CASES = [
    ("llama-3.2-1b", dict(method="lora", seq_len=2048, **CKPT)),
    ("llama-3.2-1b", dict(method="full", seq_len=2048, **CKPT)),
    ("qwen2.5-0.5b", dict(method="lora", seq_len=2048, **CKPT)),
    ("llama-3.2-3b", dict(method="lora", seq_len=4096, **CKPT)),
]
CAPS = ("none", "reserved", "allocated+2%")


def cap_bytes(est, which: str) -> int | None:
    if which == "none":
        return None
    return est.peak_reserved_bytes if which == "reserved" else int(est.peak_allocated_bytes * 1.02)


def run_case(arch, cfg, steps: int, device: str, cap: int | None) -> dict:
    """Train ``steps`` steps of cfg.step_lengths under a cap on torch's pool (None: no cap)."""
    import torch

    from advisor.verify.build import (autocast_dtype, build_on_meta, materialize_random, prepare_quantization,
                                      trainable_parameters)
    from advisor.verify.step import make_optimizer, train_step

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total) if cap else 1.0)
    torch.manual_seed(0)
    prepare_quantization(cfg)
    model = build_on_meta(arch, cfg)
    result: dict = {"steps": [], "oom_at": None}
    # memory_stats' counters run for the whole process (reset_peak_memory_stats leaves them): count from here
    retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0) if device == "cuda" else 0
    try:
        materialize_random(model, cfg, device)
        optimizer = make_optimizer(trainable_parameters(model), cfg)
        for step, length in enumerate(cfg.step_lengths(steps), start=1):
            ids = torch.randint(0, arch.vocab_size, (cfg.micro_batch, length), device=device)
            started = time.perf_counter()
            train_step(model, optimizer, ids, ids, autocast_dtype=autocast_dtype(cfg))
            row = {"step": step, "seq_len": length}
            if device == "cuda":
                torch.cuda.synchronize()
                retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries_before
                row.update(peak_reserved=torch.cuda.max_memory_reserved(),
                           peak_allocated=torch.cuda.max_memory_allocated(), retries=retries)
            row["seconds"] = time.perf_counter() - started
            result["steps"].append(row)
    except torch.OutOfMemoryError as exc:
        result["oom_at"] = len(result["steps"]) + 1
        result["oom"] = str(exc).splitlines()[0][:300]
    finally:
        del model
        if device == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N cases")
    args = parser.parse_args()
    if args.steps < 2:
        print("error: --steps must be 2 or more (hint: 12 lets the cache grow)", file=sys.stderr)
        return 2
    from advisor.hardware import hardware_for
    from advisor.memory import TrainConfig, estimate
    from advisor.models import resolve_model

    args.out.mkdir(parents=True, exist_ok=True)
    hardware = hardware_for("h200")
    lines = ["| model | config | cap | cap GiB | OOM | peak reserved GiB | peak allocated GiB | alloc retries |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    with open(args.out / "tight.jsonl", "w") as log:
        for index, (model, fields) in enumerate(CASES):
            if args.limit and index >= args.limit:
                break
            arch, cfg = resolve_model(model), TrainConfig(**fields)
            est = estimate(arch, cfg, hardware)
            for which in CAPS if args.device == "cuda" else ("none",):
                cap = cap_bytes(est, which)
                result = run_case(arch, cfg, args.steps, args.device, cap)
                entry = {"model": model, "config": fields, "cap": which, "cap_bytes": cap, **result}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                rows = result["steps"]
                peak_res = max((r.get("peak_reserved", 0) for r in rows), default=0) / GiB
                peak_alloc = max((r.get("peak_allocated", 0) for r in rows), default=0) / GiB
                retries = rows[-1].get("retries", 0) if rows else 0
                label = f"{fields['method']} seq {cfg.seq_len} (variable, {args.steps} steps)"
                lines.append(f"| {model} | {label} | {which} | {(cap or 0) / GiB:.2f} | "
                             f"{'step ' + str(result['oom_at']) if result['oom_at'] else 'no'} | {peak_res:.2f} | "
                             f"{peak_alloc:.2f} | {retries} |")
                print(lines[-1], flush=True)
    text = (f"# Unpacked data under a capped pool\n\nDate: {dt.datetime.now().isoformat(timespec='minutes')}; "
            f"device {args.device}.\n\n" + "\n".join(lines) + "\n")
    (args.out / "tight.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
