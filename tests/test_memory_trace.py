"""benchmarks/memory_trace.py: the live set at the peak of a recorded allocation trace, by allocation site.
The oracle is a trace written by hand, whose peak and live blocks are known by construction."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_trace  # noqa: E402

DS = {"filename": "/usr/lib/python3/site-packages/deepspeed/runtime/zero/stage_1_and_2.py", "line": 712,
      "name": "setup_buckets"}
TORCH = {"filename": "/usr/lib/python3/site-packages/torch/nn/functional.py", "line": 10, "name": "linear"}
PEFT = {"filename": "/usr/lib/python3/site-packages/peft/tuners/lora/layer.py", "line": 80, "name": "forward"}


def ev(action, addr, size, *frames):
    return {"action": action, "addr": addr, "size": size, "frames": list(frames)}


TRACE = [
    ev("alloc", 1, 100, DS),                     # a bucket that lives on
    ev("alloc", 2, 50, TORCH, PEFT),             # an activation made inside PEFT's forward
    ev("alloc", 3, 30, TORCH, PEFT),
    ev("free_requested", 2, 50, TORCH),          # requested is not freed yet
    ev("alloc", 4, 70, TORCH),                   # the peak: 100 + 50 + 30 + 70 = 250
    ev("free_completed", 2, 50, TORCH),
    ev("free_completed", 4, 70, TORCH),
    ev("alloc", 5, 60, TORCH),                   # 190: below the peak
]


def test_the_live_set_at_the_peak_by_site():
    result = memory_trace.analyze({"device_traces": [TRACE]})
    assert result["peak_allocated_bytes"] == 250 and result["peak_event_index"] == 4
    assert result["live_blocks_at_peak"] == 4 and result["complete"]
    sites = {row["site"]: (row["blocks"], row["bytes"]) for row in result["by_site"]}
    assert sites == {"deepspeed/runtime/zero/stage_1_and_2.py:712 setup_buckets": (1, 100),
                     "peft/tuners/lora/layer.py:80 forward": (2, 80),
                     "functional.py:10 linear": (1, 70)}
    assert [b["bytes"] for b in result["largest_blocks"]] == [100, 70, 50, 30]
    assert result["largest_blocks"][0]["frames"] == ["deepspeed/runtime/zero/stage_1_and_2.py:712 setup_buckets"]
    assert result["peak_made_by"] == ["torch/nn/functional.py:10 linear"]


def test_the_compact_events_keep_order_and_name_a_side_stream():
    trace = [*TRACE[:2], {**ev("alloc", 7, 40, DS), "stream": 93}, {"action": "segment_alloc", "addr": 0, "size": 2 << 20},
             {"action": "free_requested", "addr": 1, "size": 100}]
    assert memory_trace.compact_events({"device_traces": [trace]}) == [
        ["a", 1, 100], ["a", 2, 50], ["a", 7, 40, 93], ["s", 0, 2 << 20]]


def test_a_wrapped_trace_is_marked_incomplete():
    result = memory_trace.analyze({"device_traces": [[ev("free_completed", 9, 10, TORCH), *TRACE]]})
    assert not result["complete"] and result["peak_allocated_bytes"] == 250


def test_the_command_line_reads_a_snapshot_and_refuses_anything_else(tmp_path):
    good = tmp_path / "snap.pickle"
    good.write_bytes(pickle.dumps({"segments": [], "device_traces": [TRACE]}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_trace.py"), str(good)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["peak_allocated_bytes"] == 250
    for bad in (tmp_path / "missing", tmp_path / "text"):
        if bad.name == "text":
            bad.write_text("not a pickle")
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_trace.py"), str(bad)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "hint" in proc.stderr


def test_only_training_processes_record(tmp_path):
    """The hook stays out of processes that are not training (the CLI, accelerate's launcher): their CUDA
    context would add to the card's reading.  Without CUDA nothing records, and nothing is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks" / "trace_site"),
           memory_trace.TRACE_DIR_ENV: str(tmp_path)}
    probe = "import sys; print('memory_trace' in sys.modules)"
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert other.returncode == 0 and other.stdout.strip() == "True"  # the hook loaded ...
    script = tmp_path / "train.py"
    script.write_text("import sys, torch; print(sys.modules['memory_trace']._is_training_process())")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert not list(tmp_path.glob("trace-*.json"))  # ... but no CUDA here: nothing recorded, nothing written
    launcher = tmp_path / "launch.py"  # accelerate's launcher names train.py among its arguments: not traced
    launcher.write_text("import sys; print(sys.modules['memory_trace']._is_training_process())")
    proc = subprocess.run([sys.executable, "-u", str(launcher), "--config_file", "a.yaml", "train.py"],
                          capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "False"
