"""Planner speed and `--json` cold start.

    python benchmarks/planner_speed.py

1. candidates per second of the planner (warm: imports and rule compilation excluded; best of five),
   target >= 10,000;
2. cold wall time of `lora-advisor --json --model llama-2-7b --gpu rtx4090 --seq-len 2048` against
   `python -c 'import pydantic, yaml'` (the floor any pydantic + YAML tool pays), target <= 3x; median of
   11 interleaved runs, with the compiled-rules cache warm (the first run after an install or a rules
   change also compiles the rules: the "first run" row).
Writes benchmarks/results/planner-speed-<date>.md.
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import default_path, write_result  # noqa: E402  (benchmarks/, the script's own folder)
from advisor.engine.rules import default_rules  # noqa: E402
from advisor.hardware import hardware_for  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.planner import Goals, make_plan  # noqa: E402

SCENARIOS = [("llama-2-7b", "rtx4090", 2048), ("llama-3.1-8b", "a100-80gb", 4096), ("llama-3.1-70b", "4xH100", 2048),
             ("qwen2.5-7b", "l4", 1024), ("gemma-2-9b", "2x4090", 2048)]


def walls(commands: dict[str, list[str]], runs: int = 11) -> dict[str, float]:
    """Median cold wall time of each command; the commands take turns, so a slow moment of a shared
    machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def instructions(cmd: list[str]) -> int | None:
    """Instructions one run executes, counted by callgrind (None when valgrind fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *cmd], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    return int(found.group(1)) if found else None


# What any tool pays that defines a single pydantic model: `import pydantic` alone is lazy and builds none
# of the validation machinery, so the floor leaves out ~2x of pydantic's own start-up.
ONE_MODEL = "import yaml\nfrom pydantic import BaseModel\nclass A(BaseModel):\n    x: int = 1\n"


def main() -> int:
    # An installed wheel has its bytecode compiled by pip; a checkout under PYTHONDONTWRITEBYTECODE=1 (as on
    # these machines) would recompile every module on every run and time the compiler instead.
    compileall.compile_dir(ROOT / "advisor", quiet=1)
    rules = default_rules()
    lines = ["| scenario | candidates decided | of them estimated | seconds | decided/s | estimated/s |",
             "|---|---:|---:|---:|---:|---:|"]
    rates = []
    for model, gpu, seq in SCENARIOS:
        arch, hw = resolve_model(model), hardware_for(gpu=gpu)
        goals = Goals(seq_len=seq, gpus=hw.count)
        make_plan(arch, hw, goals, rules)  # warm the caches once
        seconds = float("inf")
        for _ in range(5):  # best of five: the planner is CPU-bound; the rest is a shared machine's noise
            started = time.perf_counter()
            plan = make_plan(arch, hw, goals, rules)
            seconds = min(seconds, time.perf_counter() - started)
        rates.append(plan.candidates_evaluated / seconds)
        lines.append(f"| {model} on {gpu}, seq {seq} | {plan.candidates_evaluated} | {plan.candidates_estimated} | "
                     f"{seconds:.3f} | {rates[-1]:,.0f} | {plan.candidates_estimated / seconds:,.0f} |")
    python = sys.executable
    plan_cmd = ["--json", "--model", "llama-2-7b", "--gpu", "rtx4090", "--seq-len", "2048"]
    cache = tempfile.mkdtemp(prefix="lora-advisor-bench-cache-")
    os.environ["LORA_ADVISOR_CACHE_DIR"] = cache
    first = walls({"plan": [python, "-m", "advisor", *plan_cmd]}, runs=1)["plan"]  # compiles and caches the rules
    cold = walls({"floor": [python, "-c", "import pydantic, yaml"], "one_model": [python, "-c", ONE_MODEL],
                  "plan": [python, "-m", "advisor", *plan_cmd],
                  "estimate": [python, "-m", "advisor", "estimate", "--json", "--model", "llama-2-7b", "--gpu", "rtx4090"]})
    floor = cold["floor"]
    lines += ["", "| command | median wall s | x floor |", "|---|---:|---:|",
              f"| python -c 'import pydantic, yaml' (floor) | {floor:.3f} | 1.0 |",
              f"| the same + one pydantic BaseModel defined | {cold['one_model']:.3f} | {cold['one_model'] / floor:.1f} |",
              f"| lora-advisor --json (plan) | {cold['plan']:.3f} | {cold['plan'] / floor:.1f} |",
              f"| lora-advisor --json (plan), first run: rules compiled | {first:.3f} | {first / floor:.1f} |",
              f"| lora-advisor estimate --json | {cold['estimate']:.3f} | {cold['estimate'] / floor:.1f} |"]
    summary = (f"\nplanner: min {min(rates):,.0f} candidates decided/s (target >= 10,000); "
               f"--json cold start {cold['plan']:.2f} s = {cold['plan'] / floor:.1f}x floor (target <= 3x), "
               f"{cold['plan'] / cold['one_model']:.1f}x a one-model pydantic script")
    if shutil.which("valgrind"):  # instruction counts: the same on a quiet and on a busy machine
        counts = {name: instructions(cmd) for name, cmd in (
            ("floor", [python, "-c", "import pydantic, yaml"]), ("one_model", [python, "-c", ONE_MODEL]),
            ("plan", [python, "-m", "advisor", *plan_cmd]))}
        if all(counts.values()):
            lines += ["", "| command (callgrind) | instructions | x floor |", "|---|---:|---:|"]
            lines += [f"| {name} | {count:,} | {count / counts['floor']:.1f} |" for name, count in counts.items()]
    text = "\n".join(lines) + "\n" + summary
    print(text)
    out = write_result(default_path("planner-speed"), "Planner speed and --json cold start", text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
