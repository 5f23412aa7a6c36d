"""The verification matrix on a real GPU: predicted vs measured (allocated, reserved, device).

    python3 benchmarks/gpu_matrix.py --out DIR [--budget-s 360] [--steps 4] [--dry-run] [--limit N]
                                     [--hf-configs DIR]

Cases in order of what they tell (the budget stops the list, not a case): the real stack first (the
exported train.py: HF Trainer + PEFT + TRL on random weights and synthetic tokens), where published runs
read 5-20 % above the estimate (small models, short sequences, trained embeddings, full fine-tuning, no
checkpointing); the bare step of the same config beside it, which separates the stack's own memory from
the step's; then 4-bit QLoRA through the bare step (the exported job would quantise a downloaded
checkpoint).  Each case is `lora-advisor verify --json --no-calibration` in a child process, so one OOM
or error does not end the matrix and no case reads an earlier one's calibration.  Writes DIR/gpu-check.md
(the table) and DIR/results.jsonl (every report).

`--hf-configs DIR` (a folder of <Model>/config.json, e.g. shared/data/model-configs) fills an offline
Hugging Face cache, so the exported job's `AutoConfig.from_pretrained(hub id)` works on a machine without
network.  `--dry-run` runs the same cases on fake tensors, to test this script without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASE_TIMEOUT_S = 150
CKPT, NO_CKPT = "--grad-ckpt", "--no-grad-ckpt"
LORA, QLORA = ["--method", "lora"], ["--method", "qlora"]
FULL = ["--method", "full", "--optimizer", "adamw"]

# (runner, model, flags); every case has one micro batch per optimizer step unless it says otherwise, so a
# step is one forward and backward.  Measured on the H200 on 2026-12-04 (results/gpu-h200-2026-12-04): the job
# and the bare step allocate the same bytes, so the cases not yet run come first, on the bare step (20-30 s a
# case where the exported job takes 80-106 s); unpacked data of varying length (--lengths variable, 12 steps:
# the caching allocator's growth step by step, against the replay of the same lengths) leads.
MEASURED = [
    ("job", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512"]),
    ("step", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512"]),
    ("job", "llama-3.2-1b", [*LORA, NO_CKPT, "--seq-len", "2048"]),
    ("job", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "512"]),
]
VARIABLE = ["--lengths", "variable", "--steps", "12"]
# The real stacks on one GPU (DeepSpeed ZeRO 2 and 3, FSDP2 through accelerate): what each adds beyond the step,
# against the estimate's stack terms (memory/sharding.py), which no oracle traces.  Exported job only: the bare
# step has no stack.  Run first on 2026-12-04 (third lease).
STACKS = [
    ("job", "qwen2.5-0.5b", [*FULL, CKPT, "--seq-len", "1024", "--zero", "2"]),
    ("job", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512", "--zero", "2"]),
    ("job", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "512", "--zero", "3"]),
    # not a stack: the one fixed-shape case that read 9 % below the estimate (and below the CPU oracle) on the
    # second lease; with --trace its live set at the peak says what the oracle counts that CUDA does not
    ("step", "llama-3.2-3b", [*QLORA, NO_CKPT, "--seq-len", "1024"]),
    ("job", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "512", "--fsdp", "--master-weights"]),
    ("job", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512", "--fsdp"]),
    ("job", "qwen2.5-0.5b", [*LORA, CKPT, "--seq-len", "256", "--zero", "2"]),
    # held out from the ZeRO-1/2 first-step cache (memory/overheads.py), which the 0.5B case above set
    ("job", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "512", "--zero", "2"]),
]
CASES: list[tuple[str, str, list[str]]] = [
    *STACKS,
    ("step", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "2048", *VARIABLE]),
    ("step", "qwen2.5-0.5b", [*LORA, CKPT, "--seq-len", "2048", *VARIABLE]),
    ("step", "llama-3.2-1b", [*QLORA, CKPT, "--seq-len", "512"]),
    ("step", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512", "--train-embeddings"]),
    ("step", "llama-3.2-3b", [*LORA, NO_CKPT, "--seq-len", "768", "--micro-batch", "4"]),
    ("step", "llama-3.1-8b", [*LORA, CKPT, "--seq-len", "2048"]),
    ("step", "llama-3.1-8b", [*QLORA, CKPT, "--seq-len", "2048"]),
    ("step", "qwen2.5-0.5b", [*FULL, NO_CKPT, "--seq-len", "1024"]),
    ("step", "llama-3.2-3b", [*QLORA, NO_CKPT, "--seq-len", "1024"]),
    ("step", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "2048", *VARIABLE]),
    ("step", "llama-3.2-3b", [*LORA, CKPT, "--seq-len", "8192"]),
    ("step", "llama-3.1-8b", [*QLORA, CKPT, "--seq-len", "8192"]),
    ("job", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "512", "--train-embeddings"]),
    ("job", "llama-3.2-1b", [*FULL, CKPT, "--seq-len", "512", "--master-weights"]),
    ("job", "qwen2.5-0.5b", [*LORA, CKPT, "--seq-len", "256"]),
    ("job", "llama-3.2-1b", [*LORA, CKPT, "--seq-len", "1024", "--micro-batch", "2", "--effective-batch", "8"]),
    *MEASURED,
]


def case_flags(flags: list[str]) -> list[str]:
    """One micro batch per optimizer step unless the case names its own batch; SDPA attention (the plan
    picks FlashAttention-2 on Ampere and newer, and flash-attn is not installed everywhere)."""
    if "--effective-batch" not in flags:
        micro = flags[flags.index("--micro-batch") + 1] if "--micro-batch" in flags else "1"
        flags = [*flags, "--effective-batch", micro]
    return flags if "--attn" in flags else [*flags, "--attn", "sdpa"]


def seed_hub_cache(configs: Path, hub_cache: Path) -> list[str]:
    """An offline Hugging Face cache holding each case model's config.json under its hub id (the layout
    huggingface_hub reads: models--org--name/refs/main -> snapshots/<revision>/config.json)."""
    from advisor.models.catalog import hub_id_for

    seeded = []
    folders = {path.name.lower(): path for path in configs.iterdir() if (path / "config.json").is_file()}
    for model in sorted({model for _, model, _ in CASES}):
        hub_id = hub_id_for(model)
        name = hub_id.split("/")[-1].lower()
        folder = folders.get(name) or folders.get("meta-" + name)
        if folder is None:
            continue
        revision = "0" * 40
        repo = hub_cache / ("models--" + hub_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "config.json", snapshot / "config.json")
        seeded.append(hub_id)
    return seeded


def traced_env(env: dict, index: int) -> tuple[dict, Path]:
    """The case's environment with allocation tracing on (benchmarks/trace_site): each training process writes
    its analysis to a folder of its own outside --out, whose files come back from the device machine in a
    fixed, small number."""
    trace_dir = Path(env.get("TMPDIR", "/tmp")) / "lora-advisor-traces" / f"case-{index}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks" / "trace_site"), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "LORA_ADVISOR_TRACE_DIR": str(trace_dir)}, trace_dir


def read_traces(trace_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(trace_dir.glob("trace-*.json"))]


def trace_summary(trace: dict, sites: int = 10) -> str:
    if "error" in trace:
        return f"  trace: {trace['error']}"
    lines = [f"  trace: peak {trace['peak_allocated_bytes'] / 2**30:.3f} GiB allocated "
             f"(torch: {trace.get('torch_peak_allocated_bytes', 0) / 2**30:.3f}), {trace['live_blocks_at_peak']} "
             f"blocks live, {trace['events']} events{'' if trace['complete'] else ' (wrapped)'}; made by "
             + " < ".join(trace["peak_made_by"][:2])]
    lines += [f"    {row['bytes'] / 2**20:9.1f} MiB {row['blocks']:5d}x {row['site']}" for row in trace["by_site"][:sites]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no case after this many seconds")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N cases")
    parser.add_argument("--cases", type=lambda text: [int(i) for i in text.split(",")], default=None,
                        help="run only these cases, in this order (indices into CASES, e.g. 2,0)")
    parser.add_argument("--hf-configs", type=Path, help="folder of <Model>/config.json for an offline hub cache")
    parser.add_argument("--trace", action="store_true",
                        help="record each case's CUDA allocations; its live set at the peak goes in results.jsonl")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.hf_configs and not args.hf_configs.is_dir():
        print(f"error: {args.hf_configs} is not a folder (hint: a folder of <Model>/config.json)", file=sys.stderr)
        return 2
    if args.hf_configs:
        cache = Path(env.get("HF_HOME", "/tmp/lora-advisor-hf")) / "hub"
        print("offline hub cache:", ", ".join(seed_hub_cache(args.hf_configs, cache)) or "nothing seeded", flush=True)
        env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    rows = ["| runner | model | flags | level | predicted GiB | measured GiB | error % |",
            "|---|---|---|---|---:|---:|---:|"]
    done = skipped = 0
    with open(args.out / "results.jsonl", "w") as log:
        order = args.cases if args.cases is not None else range(len(CASES))
        if any(not 0 <= index < len(CASES) for index in order):
            print(f"error: --cases takes indices from 0 to {len(CASES) - 1}", file=sys.stderr)
            return 2
        for position, index in enumerate(order):
            runner, model, flags = CASES[index]
            if (args.limit and position >= args.limit) or time.perf_counter() - started > args.budget_s:
                skipped += 1
                continue
            flags = case_flags(flags)
            steps = [] if "--steps" in flags else ["--steps", str(args.steps)]  # a case may name its own
            mode = ["--dry-run"] if args.dry_run else ["--device", "cuda", *steps, "--runner", runner]
            if args.dry_run and "--steps" in flags:
                flags = flags[:flags.index("--steps")] + flags[flags.index("--steps") + 2:]
            cmd = [sys.executable, "-m", "advisor", "verify", "--json", "--no-calibration", "--model", model, *flags, *mode]
            case_started = time.perf_counter()
            case_env, trace_dir = traced_env(env, index) if args.trace else (env, None)
            try:
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CASE_TIMEOUT_S,
                                      env=case_env)
                report = json.loads(proc.stdout)
            except subprocess.TimeoutExpired:
                report = {"error": f"timed out after {CASE_TIMEOUT_S} s"}
            except json.JSONDecodeError:
                report = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            seconds = time.perf_counter() - case_started
            traces = read_traces(trace_dir) if trace_dir else []
            log.write(json.dumps({"runner": runner, "model": model, "flags": flags, "seconds": seconds,
                                  "report": report, "traces": traces}) + "\n")
            log.flush()
            done += 1
            label = " ".join(flags)
            if report.get("oom"):
                rows.append(f"| {runner} | {model} | {label} | OOM at step {report['oom'].get('step')} | | | |")
            for check in report.get("checks", []):
                rows.append(f"| {runner} | {model} | {label} | {check['phase']} | "
                            f"{check['predicted_bytes'] / 2**30:.3f} | {check['measured_bytes'] / 2**30:.3f} | "
                            f"{check['error_percent']:+.2f} |")
            if report.get("error"):
                rows.append(f"| {runner} | {model} | {label} | error: {report['error']} {report.get('hint') or ''} | | | |")
            print(f"[{time.perf_counter() - started:5.0f} s, case {seconds:4.0f} s]", *rows[-3:], sep="\n", flush=True)
            for trace in traces:
                print(trace_summary(trace), flush=True)
    header = (f"# GPU check: predicted vs measured\n\nDate: {dt.datetime.now().isoformat(timespec='minutes')}; "
              f"{'dry run (fake tensors)' if args.dry_run else 'real CUDA runs'}; {done} cases run, {skipped} not "
              f"started (budget or --limit); {time.perf_counter() - started:.0f} s.\n\n")
    (args.out / "gpu-check.md").write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {args.out / 'gpu-check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
