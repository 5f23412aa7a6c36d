"""What is live on the GPU at a training process's peak, and which code allocated it.

A real run's peak says how much, not what.  When the estimate and a real stack disagree (DeepSpeed's buffers,
FSDP's all-gathers, a bitsandbytes transient) the question is which allocations the stack makes that the
estimate does not count.  PyTorch's caching allocator can record every allocation and free with the Python
stack that made it (``torch.cuda.memory._record_memory_history``; the same trace its memory_viz reads).  This
module replays that trace to the moment of the peak and sums the blocks live then by the code that allocated
them.

Two halves:
- ``start_if_asked()``: run by ``benchmarks/trace_site/sitecustomize.py`` at interpreter start.  When
  ``LORA_ADVISOR_TRACE_DIR`` is set and the process is a training process (the exported ``train.py`` or the
  bare-step worker ``advisor.verify.worker``; not the CLI or accelerate's launcher, whose CUDA context would add
  to the card), it turns recording on before the first CUDA allocation and, at exit, writes
  ``DIR/trace-<pid>.json`` (the analysis, a few KiB; never the raw trace).
- ``analyze(snapshot)``: the peak of the replayed trace, the live blocks grouped by allocation site, and the
  largest blocks with their frames.  Pure Python, tested on CPU with a hand-made trace.

    python3 benchmarks/memory_trace.py SNAPSHOT.pickle      # analyse a snapshot saved by torch (prints JSON)
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import sys
from collections import defaultdict
from pathlib import Path

TRACE_DIR_ENV = "LORA_ADVISOR_TRACE_DIR"
EVENTS_ENV = "LORA_ADVISOR_TRACE_EVENTS"  # set: the analysis also carries every alloc / free, to replay here
EVENT_CODES = {"alloc": "a", "free_completed": "f", "segment_alloc": "s", "segment_free": "S"}
TRAINING_SCRIPT, TRAINING_MODULE = "train.py", "advisor.verify.worker"
MAX_ENTRIES = 2_000_000  # events kept; a 4-step run of a 3B model makes well under a million
# Frames are attributed to the first of these (innermost first) that they pass through: the stack's own code
# rather than the torch op that did the allocating.
SITE_MARKERS = ("deepspeed/", "torch/distributed/", "accelerate/", "bitsandbytes/", "peft/", "trl/",
                "transformers/", "torch/optim/", "advisor/", "train.py")
TOP_SITES, TOP_BLOCKS, FRAMES_PER_BLOCK = 25, 15, 6


def _is_training_process() -> bool:
    """What the interpreter runs (``python [opts] train.py ...`` or ``python -m advisor.verify.worker``), not
    any argument: accelerate's launcher has train.py among its arguments and must not record."""
    args = list(getattr(sys, "orig_argv", sys.argv))[1:]
    while args and args[0].startswith("-") and args[0] != "-m":
        args = args[2:] if args[0] in ("-W", "-X") else args[1:]  # the options that take a value
    if args[:1] == ["-m"]:
        return args[1:2] == [TRAINING_MODULE]
    return bool(args) and Path(args[0]).name == TRAINING_SCRIPT


def start_if_asked() -> bool:
    """Record this process's CUDA allocations when asked (see the module doc); True when recording."""
    directory = os.environ.get(TRACE_DIR_ENV)
    if not directory or not _is_training_process():
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python",
                                             max_entries=MAX_ENTRIES)
    atexit.register(_write, Path(directory))
    return True


def _write(directory: Path) -> None:
    import torch

    try:
        snapshot = torch.cuda.memory._snapshot()
        result = analyze(snapshot)
        if os.environ.get(EVENTS_ENV):
            result["events_compact"] = compact_events(snapshot)
        result["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    except Exception as exc:  # a diagnostic must never turn a finished run into a failed one
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["argv"] = getattr(sys, "orig_argv", sys.argv)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"trace-{os.getpid()}.json").write_text(json.dumps(result))


def site_of(frames: list[dict]) -> str:
    """The allocation's site: the innermost frame in the stack's own code (SITE_MARKERS), else the innermost."""
    for frame in frames:
        name = frame.get("filename", "")
        for marker in SITE_MARKERS:
            at = name.rfind(marker)
            if at >= 0:
                return f"{name[at:]}:{frame.get('line')} {frame.get('name')}"
    if frames:
        return f"{Path(frames[0].get('filename', '?')).name}:{frames[0].get('line')} {frames[0].get('name')}"
    return "(no python frame)"


def _frame_text(frame: dict) -> str:
    name = frame.get("filename", "?")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in name:
            name = name.split(marker, 1)[1]
    return f"{name}:{frame.get('line')} {frame.get('name')}"


def compact_events(snapshot: dict, device: int = 0) -> list[list]:
    """The trace without its frames: [code, addr, size] per alloc ("a"), free ("f"), segment alloc ("s") and
    segment free ("S"), in order, what advisor.memory.allocator replays; a fourth element names the stream
    when it is not the default one (the allocator keeps a pool per stream: DeepSpeed's overlap_comm reduces on
    its own; the 2026-12-04c traces predate this)."""
    traces = snapshot.get("device_traces") or []
    trace = traces[device] if device < len(traces) else []
    return [[EVENT_CODES[event["action"]], event["addr"], event["size"], *([event["stream"]] if event.get("stream") else [])]
            for event in trace if event.get("action") in EVENT_CODES]


def analyze(snapshot: dict, device: int = 0) -> dict:
    """Replay ``snapshot['device_traces'][device]`` (alloc adds a block, free_completed removes it) and describe
    the live set at its largest.  A trace that wrapped (more events than it keeps) starts mid-run: blocks freed
    without an alloc in view are skipped, and ``complete`` is False."""
    traces = snapshot.get("device_traces") or []
    trace = traces[device] if device < len(traces) else []
    live: dict[int, dict] = {}
    current = peak = 0
    peak_at = -1
    orphan_frees = 0
    for index, event in enumerate(trace):
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = event
            current += event["size"]
            if current > peak:
                peak, peak_at = current, index
        elif action == "free_completed":
            block = live.pop(event["addr"], None)
            if block is None:
                orphan_frees += 1
            else:
                current -= block["size"]
    # the live set at the peak: replay once more up to it (cheaper than copying the set at every new peak)
    at_peak: dict[int, dict] = {}
    for event in trace[:peak_at + 1]:
        if event.get("action") == "alloc":
            at_peak[event["addr"]] = event
        elif event.get("action") == "free_completed":
            at_peak.pop(event["addr"], None)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for block in at_peak.values():
        entry = by_site[site_of(block.get("frames") or [])]
        entry[0] += 1
        entry[1] += block["size"]
    sites = sorted(by_site.items(), key=lambda item: -item[1][1])
    largest = sorted(at_peak.values(), key=lambda block: -block["size"])[:TOP_BLOCKS]
    peak_event = trace[peak_at] if peak_at >= 0 else {}
    return {
        "events": len(trace),
        "complete": orphan_frees == 0 and len(trace) < MAX_ENTRIES,
        "peak_allocated_bytes": peak,
        "peak_event_index": peak_at,
        "peak_made_by": [_frame_text(f) for f in (peak_event.get("frames") or [])[:FRAMES_PER_BLOCK]],
        "live_blocks_at_peak": len(at_peak),
        "by_site": [{"site": site, "blocks": count, "bytes": size} for site, (count, size) in sites[:TOP_SITES]],
        "other_sites_bytes": sum(size for _, (_, size) in sites[TOP_SITES:]),
        "largest_blocks": [{"bytes": block["size"],
                            "frames": [_frame_text(f) for f in (block.get("frames") or [])[:FRAMES_PER_BLOCK]]}
                           for block in largest],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        print("error: give one snapshot file (hint: torch.cuda.memory._dump_snapshot(path) writes one)",
              file=sys.stderr)
        return 2
    try:
        with open(args[0], "rb") as handle:
            snapshot = pickle.load(handle)  # a file the user made with torch; pickle is its format
    except Exception as exc:
        print(f"error: {args[0]} is not a torch memory snapshot ({type(exc).__name__}) "
              "(hint: torch.cuda.memory._dump_snapshot(path) writes one)", file=sys.stderr)
        return 2
    if not isinstance(snapshot, dict) or "device_traces" not in snapshot:
        print(f"error: {args[0]} holds no allocation trace (hint: record with "
              "torch.cuda.memory._record_memory_history() before the run)", file=sys.stderr)
        return 2
    print(json.dumps(analyze(snapshot), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
