"""The child process of `lora-advisor verify`: imports torch, trains, streams JSON lines on stdout.

Request (one JSON line on stdin): {"arch": ModelArch, "config": TrainConfig, "mode": "dry"|"cpu"|"cuda",
"steps": N, "sample_hz": 10}.  Events (one JSON object per line): start, sample (NVML used bytes per GPU),
step (loss, seconds, tokens/s, torch allocated/reserved/peak), oom, result, error.  Running in a child
keeps an out-of-memory error or a CUDA fault away from the parent (and from the TUI).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def _sampler_thread(stop: threading.Event, hz: float) -> threading.Thread:
    from ..hardware.sampler import MemorySampler

    def loop() -> None:
        with MemorySampler() as sampler:
            if not sampler.available:
                return
            while not stop.wait(1.0 / hz):
                emit("sample", used_bytes={str(k): v for k, v in sampler.sample().items()})

    thread = threading.Thread(target=loop, name="nvml-sampler", daemon=True)
    thread.start()
    return thread


def run_real(arch, cfg, device: str, steps: int, sample_hz: float) -> None:
    import torch

    from .build import autocast_dtype, build_on_meta, materialize_random, prepare_quantization, trainable_parameters
    from .step import make_optimizer, train_step

    if device == "cuda" and not torch.cuda.is_available():
        emit("error", message="CUDA is not available to torch in the worker", hint="use --dry-run or --device cpu")
        return
    torch.manual_seed(0)
    prepare_quantization(cfg)
    model = build_on_meta(arch, cfg)
    stop = threading.Event()
    sampler = _sampler_thread(stop, sample_hz) if device == "cuda" else None
    step = 0
    try:
        materialize_random(model, cfg, device)
        optimizer = make_optimizer(trainable_parameters(model), cfg)
        ids = None
        for step, length in enumerate(cfg.step_lengths(steps), start=1):
            if ids is None or ids.shape[1] != length:  # unpacked data: each batch padded to its own longest
                ids = torch.randint(0, arch.vocab_size, (cfg.micro_batch, length), device=device)
            tokens = cfg.micro_batch * length
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            started = time.perf_counter()
            loss = train_step(model, optimizer, ids, ids, autocast_dtype=autocast_dtype(cfg))
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            memory = {}
            if device == "cuda":
                memory = {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved(),
                          "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                          "peak_reserved_bytes": torch.cuda.max_memory_reserved()}
            emit("step", step=step, seq_len=length, loss=float(loss), seconds=seconds, tokens_per_s=tokens / seconds,
                 **memory)
        emit("result", mode=device, steps=steps, environment=_environment(device))
    except torch.OutOfMemoryError as exc:
        memory = {}
        if device == "cuda":
            memory = {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved(),
                      "peak_allocated_bytes": torch.cuda.max_memory_allocated()}
        emit("oom", step=step, message=str(exc).splitlines()[0], **memory)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join(timeout=1.0)


def _environment(device: str) -> dict:
    """What a calibration point is keyed and labelled by."""
    import torch

    env = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda, "stack": {}}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            env["stack"][name] = __import__(name).__version__
        except Exception:  # not installed: not part of the stack
            pass
    if device == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name()
        from ..hardware.nvml import Nvml

        with Nvml() as nvml:
            detection = nvml.detect()
        env["driver_version"] = detection.driver.driver_version if detection.driver else None
    return env


def run_dry_event(arch, cfg, workspace_bytes: int | None = None) -> None:
    from .dryrun import run_dry

    result = run_dry(arch, cfg, workspace_bytes=workspace_bytes)
    # the allocator replay (dryrun.replay_allocator): the allocated and reserved levels a real run reads
    replayed = ({"allocated": result.replayed_peak_allocated, "reserved": result.replayed_reserved}
                if result.replayed_reserved is not None else {})
    emit("result", mode="dry", phase_peaks=result.phase_peaks, peak_bytes=result.peak_bytes,
         weights_bytes=result.weights_bytes, trainable_params=result.trainable_params, seconds=result.seconds,
         replayed_levels=replayed)


def main() -> int:
    from ..errors import AdvisorError
    from ..memory.config import TrainConfig
    from ..models.arch import ModelArch

    request = json.loads(sys.stdin.readline())
    arch = ModelArch.model_validate(request["arch"])
    cfg = TrainConfig.model_validate(request["config"])
    mode = request.get("mode", "dry")
    emit("start", mode=mode, pid=__import__("os").getpid())
    try:
        if mode == "dry":
            run_dry_event(arch, cfg, request.get("workspace_bytes"))
        else:
            run_real(arch, cfg, mode, int(request.get("steps", 10)), float(request.get("sample_hz", 10)))
    except AdvisorError as err:
        emit("error", message=err.message, hint=err.hint)
    except Exception as exc:  # reported as an event: the parent decides how to show it
        emit("error", message=f"{type(exc).__name__}: {exc}", hint="see the traceback on the worker's stderr")
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
