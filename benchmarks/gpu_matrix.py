"""The verification matrix on a real GPU: predicted vs measured (allocated, reserved, device).

    python3 benchmarks/gpu_matrix.py --out DIR [--budget-s 480] [--steps 4] [--dry-run] [--limit N]

~1B, 3B and 8B shapes x LoRA / QLoRA / full (where it fits an 80 GB card) x checkpointing on/off x two
sequence lengths, each through `lora-advisor verify --json` (a child process per config, so one OOM
does not end the matrix): LoRA and full through the exported train.py (HF Trainer + PEFT + TRL, the real
stack), QLoRA through the bare step (random 4-bit weights; the job would need the checkpoint).  Writes DIR/gpu-check.md (the table) and DIR/results.jsonl (every report).
`--dry-run` runs the same matrix on fake tensors, to test this script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"]
METHODS = [["--method", "lora"], ["--method", "qlora"], ["--method", "full", "--optimizer", "adamw"]]
SEQS = [512, 2048]


def configs():
    for model, method, ckpt, seq in itertools.product(MODELS, METHODS, (False, True), SEQS):
        if method[1] == "full" and model == "llama-3.1-8b":
            continue  # 8B full FT with AdamW needs ~80 GB before activations
        yield model, [*method, "--grad-ckpt" if ckpt else "--no-grad-ckpt", "--seq-len", str(seq)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting new configs after this")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N configs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = ["| model | flags | level | predicted GiB | measured GiB | error % |", "|---|---|---|---:|---:|---:|"]
    done = skipped = 0
    with open(args.out / "results.jsonl", "w") as log:
        for index, (model, flags) in enumerate(configs()):
            if args.limit and index >= args.limit:
                break
            if time.perf_counter() - started > args.budget_s:
                skipped += 1
                continue
            # a 4-bit base cannot be built with random weights by the exported job (it quantises a checkpoint
            # while loading, and the device machine has no network): the bare step for those
            runner = "step" if "qlora" in flags else "job"
            mode = ["--dry-run"] if args.dry_run else ["--device", "cuda", "--steps", str(args.steps), "--runner", runner]
            cmd = [sys.executable, "-m", "advisor", "verify", "--json", "--model", model, *flags, *mode]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
            try:
                report = json.loads(proc.stdout)
            except json.JSONDecodeError:
                report = {"error": proc.stderr.strip().splitlines()[-1:] or ["no output"]}
            log.write(json.dumps({"model": model, "flags": flags, "report": report}) + "\n")
            done += 1
            label = " ".join(flags)
            if report.get("oom"):
                rows.append(f"| {model} | {label} | OOM at step {report['oom'].get('step')} | | | |")
            for check in report.get("checks", []):
                rows.append(f"| {model} | {label} | {check['phase']} | {check['predicted_bytes'] / 2**30:.3f} | "
                            f"{check['measured_bytes'] / 2**30:.3f} | {check['error_percent']:+.2f} |")
            if report.get("error"):
                rows.append(f"| {model} | {label} | error: {report['error']} | | | |")
            print(rows[-1], flush=True)
    header = (f"# GPU check: predicted vs measured\n\nDate: {dt.datetime.now().isoformat(timespec='minutes')}; "
              f"{'dry run (fake tensors)' if args.dry_run else 'real CUDA runs'}; {done} configs run, {skipped} skipped "
              f"for the time budget; {time.perf_counter() - started:.0f} s.\n\n")
    (args.out / "gpu-check.md").write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {args.out / 'gpu-check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
