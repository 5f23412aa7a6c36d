"""Put this folder first on PYTHONPATH with LORA_ADVISOR_TRACE_DIR set, and every training process started
beneath (the exported train.py, the bare-step worker) records its CUDA allocations and writes what was live at
its peak (benchmarks/memory_trace.py).  Without the variable nothing is imported."""

import os
import sys

if os.environ.get("LORA_ADVISOR_TRACE_DIR"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import memory_trace

    memory_trace.start_if_asked()
