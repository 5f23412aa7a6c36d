"""The sharded oracle: one rank of an FSDP2 job, traced on fake tensors under a fake process group.

The single-GPU dry run (``dryrun.run_dry``) checks the memory model of one process.  This runs the same
training step (``step.train_step`` on the model ``build`` makes) after PyTorch's own ``fully_shard``
(torch.distributed.fsdp, FSDP2) has sharded it over ``cfg.gpus`` ranks, and counts one rank's live tensor
bytes per phase.  Nothing here simulates FSDP: the hooks, the all-gather and reduce-scatter buffers, the
padding of every shard to the world size, the prefetch and the resharding are torch's code; only the
collectives are hallucinated by the fake process group (``torch.testing._internal.distributed.fake_pg``),
which is fine because fake tensors carry no values, only shapes, dtypes and storages.  The approach is the
one PyTorch's ``FSDPMemTracker`` (torch/distributed/_tools/fsdp2_mem_tracker.py) is built on.

What a rank holds differs from the single-GPU count in one way the plain counter cannot see: FSDP2 frees
and re-allocates an unsharded parameter by resizing its storage (``_fsdp_param.free_storage`` /
``alloc_storage``: ``untyped_storage().resize_(0)``), not by dropping the tensor.  The counter here
re-reads the size of every live storage around each op.

Wrapping (``layout="accelerate"``, the default) is accelerate's own: the model goes through accelerate 1.16's
``fsdp2_prepare_model`` (accelerate/utils/fsdp_utils.py) with the plugin the exported accelerate.yaml makes
(fsdp_version 2, TRANSFORMER_BASED_WRAP, reshard_after_forward true), behind a stand-in for the Accelerator.
That function shards every decoder layer, the untied input embedding, a ``[final norm, lm_head]`` tail that is
never resharded after forward, and the root with torch's default (not resharded), and upcasts the trainable
params to fp32 under mixed precision.  ``layout="layers+root"`` (every decoder layer, then the whole model,
all resharded after forward) is kept for comparison; no exported job runs it.  ``shard_units`` lists the
units a layout makes.

Precision follows the export contract (``export.context.ExportContext.autocast`` / ``mixed_precision``):
pure 16-bit full fine-tuning has 16-bit params and no ``MixedPrecisionPolicy``; everything else
(LoRA, master weights) has fp32 trainable params, ``MixedPrecisionPolicy(param_dtype=reduce_dtype=16-bit)``
and autocast around the forward, as accelerate does when ``mixed_precision`` is bf16/fp16.
"""

from __future__ import annotations

import contextlib
import time
import weakref

from ..errors import UsageError
from ..memory.config import TrainConfig
from ..models.arch import ModelArch
from .dryrun import (PHASES, DryRunResult, _autocast_asked_as_on_gpu, _cpu_attention, _dropout_as_on_gpu,
                     _masks_as_on_gpu, _round)

LAYOUTS = ("layers+root", "accelerate")


class _ResizingCounter:
    """Live storage bytes, re-read around every op: FSDP2 frees unsharded params by resizing their storage
    to 0 and re-allocates them by resizing back, while the storage objects stay alive."""

    def __init__(self, classify=None) -> None:
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.live = 0
        self.peak = 0
        self.current_op = ""
        self.peak_op = ""
        self.classify = classify  # () -> {storage id: kind}, to explain the peak (slow)
        self.explain = classify is not None
        self.made_by: dict[int, str] = {}  # storage -> the op that made it (explain only)
        self.at_peak: dict[str, int] = {}  # kind (or the op that made it) -> bytes live at the peak (explain only)

    def add(self, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor):
            return
        if hasattr(tensor, "_local_tensor"):  # a DTensor: its local shard is the storage
            tensor = tensor._local_tensor
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None and entry[0]() is storage:
            return
        nbytes = _round(storage.nbytes())
        self._live[key] = (weakref.ref(storage, lambda _r, k=key: self._drop(k)), nbytes)
        if self.explain:
            self.made_by[key] = self.current_op
        self.live += nbytes
        self._note_peak()

    def _drop(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.live -= entry[1]
        self.made_by.pop(key, None)

    def refresh(self) -> None:
        """Pick up storages resized since the last look."""
        for key, (ref, counted) in list(self._live.items()):
            storage = ref()
            if storage is None:
                continue
            nbytes = _round(storage.nbytes())
            if nbytes != counted:
                self._live[key] = (ref, nbytes)
                self.live += nbytes - counted
        self._note_peak(resized=True)

    def _note_peak(self, resized: bool = False) -> None:
        if self.live > self.peak:
            self.peak = self.live
            self.peak_op = ("storage resize (FSDP unshard) before " if resized else "") + self.current_op
            if self.explain:
                kinds, parts = self.classify(), {}
                for k, (_r, n) in self._live.items():
                    kind = kinds.get(k) or f"made by {self.made_by.get(k) or 'setup'}"
                    parts[kind] = parts.get(kind, 0) + n
                self.at_peak = parts


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int):
    """A fake process group of ``world_size`` ranks, seen from ``rank`` (no other process exists)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_shardable(cfg: TrainConfig) -> None:
    """What the sharded oracle can trace: FSDP2 over 2+ ranks, full fine-tuning or LoRA, no offload."""
    if not cfg.fsdp or cfg.gpus < 2:
        raise UsageError("the sharded dry run traces FSDP over several GPUs", "set fsdp=True and gpus >= 2")
    if cfg.method not in ("full", "lora"):
        raise UsageError(f"the sharded dry run cannot trace --method {cfg.method} under FSDP",
                         "the export uses FSDP1 for QLoRA (bitsandbytes 4-bit params cannot be DTensors); "
                         "trace full or lora")
    if cfg.offload != "none":
        raise UsageError("the sharded dry run does not trace CPU offload", "trace --offload none")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise UsageError(f"the sharded dry run cannot trace --optimizer {cfg.optimizer}", "trace adamw or sgd")


def mixed_precision(cfg: TrainConfig):
    """(torch dtype of autocast or None, the MixedPrecisionPolicy) the exported accelerate config gives.

    The contract is export.context.ExportContext: autocast (accelerate mixed_precision bf16/fp16) unless the
    plan is pure 16-bit full fine-tuning or fp32.  With mixed precision accelerate upcasts trainable params
    to fp32 and sets MixedPrecisionPolicy(param_dtype, reduce_dtype) to the 16-bit dtype
    (accelerate utils/dataclasses.py FullyShardedDataParallelPlugin.set_mixed_precision,
    utils/fsdp_utils.py fsdp2_prepare_model), and wraps the forward in autocast (accelerator.py
    prepare_model, native_amp)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from .build import DTYPES

    autocast = cfg.precision != "fp32" and (cfg.master_weights or cfg.method != "full")
    if not autocast:
        return None, MixedPrecisionPolicy()
    dtype = DTYPES[cfg.precision]
    return dtype, MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)


def _shard(model, mesh, mp_policy, layout: str, autocast):
    """Shard ``model`` as the layout says; return the model to train (accelerate returns its own)."""
    from torch.distributed.fsdp import fully_shard

    if layout == "accelerate":
        return _accelerate_prepare(model, mesh, mp_policy, autocast)
    # "layers+root": fully_shard every decoder layer, then the whole model, all resharded after forward
    kwargs = {"mesh": mesh, "reshard_after_forward": True, "mp_policy": mp_policy}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _accelerate_prepare(model, mesh, mp_policy, autocast):
    """accelerate's own ``fsdp2_prepare_model`` (accelerate/utils/fsdp_utils.py) with the plugin the exported
    accelerate.yaml builds (export/launch.py: fsdp_version 2, TRANSFORMER_BASED_WRAP, reshard_after_forward
    true, mixed_precision bf16/fp16 or no), behind a stand-in for the Accelerator: the function reads only
    ``state.fsdp_plugin``, ``torch_device_mesh`` + ``parallelism_config.fsdp_dim_names``, ``mixed_precision``,
    ``is_main_process`` and ``device``.  What it does to the layout, in its own words: every
    ``_no_split_modules`` layer (bottom-up), then the input embedding (untied), then ``[final norm, lm_head]``
    (tied: ``[final norm, embed, lm_head]``; on a PEFT model ``_find_final_norm`` finds no norm, which stays
    with the root) with reshard_after_forward=False, then the root with torch's default (False for a root);
    trainable params upcast to fp32 when mixed_precision is not "no".

    ``fsdp_cpu_ram_efficient_loading`` (exported true) is off here: it changes how rank 0's weights reach the
    others (meta + broadcast in ``fsdp2_load_full_state_dict``, whose loaded shards FSDP re-pads in
    ``FSDPParam.reset_sharded_param``), not the training step traced here; the loading itself is not traced."""
    import types

    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False,
        mixed_precision_policy=mp_policy if autocast is not None else None)
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=mesh,
        parallelism_config=types.SimpleNamespace(fsdp_dim_names=mesh.mesh_dim_names),
        mixed_precision="no" if autocast is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast],
        # not the main process: its only use outside cpu_ram_efficient_loading is to log the fp32 upcast,
        # through accelerate's logger, which needs a real AcceleratorState
        is_main_process=False, device=torch.device("cpu"))
    return fsdp2_prepare_model(accelerator, model)


def shard_units(arch: ModelArch, cfg: TrainConfig, rank: int = 0, layout: str = "accelerate") -> list[dict]:
    """The FSDP units ``layout`` makes of the model, in module order (the root first): for each, the modules it
    manages (qualified names), the bytes of ``rank``'s sharded params and whether it reshards after forward."""
    check_shardable(cfg)
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from .build import build_on_meta, materialize

    autocast, mp_policy = mixed_precision(cfg)
    model = build_on_meta(arch, cfg, attn_implementation=_cpu_attention(arch, cfg))
    with fake_process_group(rank, cfg.gpus):
        mesh = init_device_mesh("cpu", (cfg.gpus,), mesh_dim_names=("dp_shard",))
        with FakeTensorMode(allow_non_fake_inputs=True):
            materialize(model, lambda shape, dtype: torch.empty(shape, dtype=dtype), cfg)
            if autocast is not None and layout != "accelerate":
                for param in model.parameters():
                    if param.requires_grad and param.dtype != torch.float32:
                        param.data = param.data.to(torch.float32)
            model = _shard(model, mesh, mp_policy, layout, autocast)
        names = {module: name for name, module in model.named_modules()}
        units, seen = [], set()
        for module in model.modules():
            if not isinstance(module, FSDPModule):
                continue
            state = module._get_fsdp_state()
            if id(state) in seen:
                continue
            seen.add(id(state))
            group = state._fsdp_param_group
            units.append({
                "modules": [names[m] for m in state._modules],
                "sharded_bytes": sum(_round(fp._sharded_param_data.untyped_storage().nbytes())
                                     for fp in group.fsdp_params) if group else 0,
                # reshard_after_forward=None (accelerate's root) is True until the first forward's lazy init
                # finds the root and turns it off (_fsdp_state.py FSDPState._lazy_init)
                "reshard_after_forward": group is not None and group.post_forward_mesh_info is not None
                and not (module is model and state._auto_reshard_after_forward),
            })
    return units


def _storage_kinds(model, optimizer) -> dict[int, str]:
    """What each storage FSDP and the optimizer hold right now is (for ``explain``): sharded and unsharded
    params, all-gather and reduce-scatter buffers, unsharded and sharded grads, optimizer states."""
    from torch.distributed.fsdp import FSDPModule

    def key(t) -> int:
        return id(getattr(t, "_local_tensor", t).untyped_storage())

    kinds: dict[int, str] = {}
    for state in optimizer.state.values():
        for t in state.values():
            if hasattr(t, "untyped_storage") and t.dim() > 0:
                kinds[key(t)] = "optimizer states"
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        group = module._get_fsdp_state()._fsdp_param_group
        if group is None:
            continue
        unit = type(module).__name__.replace("FSDP", "")
        comm = group.comm_ctx
        if getattr(comm, "all_gather_state", None) is not None:
            kinds.setdefault(key(comm.all_gather_state.all_gather_result.all_gather_output),
                             "all-gather buffer kept for overlap (previous unit)")
        for rs in getattr(comm, "reduce_scatter_states", []):
            kinds.setdefault(key(rs.reduce_scatter_input), "reduce-scatter input kept (previous unit)")
        if group._all_gather_result is not None:
            kinds[key(group._all_gather_result.all_gather_output)] = f"all-gather buffer ({unit})"
        for fp in group.fsdp_params:
            kinds[key(fp._sharded_param_data)] = "params (sharded)"
            if fp.sharded_param.grad is not None:
                kinds[key(fp.sharded_param.grad)] = "grads (sharded)"
            for t in getattr(fp, "all_gather_outputs", []):
                kinds[key(t)] = f"params unsharded ({unit})"
            if hasattr(fp, "_unsharded_param"):
                kinds[key(fp._unsharded_param)] = f"params unsharded ({unit})"
                if fp._unsharded_param.grad is not None:
                    kinds[key(fp._unsharded_param.grad)] = f"grads unsharded ({unit})"
    return kinds


def run_sharded_dry(arch: ModelArch, cfg: TrainConfig, rank: int = 0, steps: int = 2,
                    layout: str = "accelerate", explain: bool = False) -> DryRunResult:
    """Trace ``steps`` FSDP2 training steps of rank ``rank`` of ``cfg.gpus`` on fake CPU tensors; return
    the last step's phase peaks for that rank (bytes of that rank's tensors).  ``explain`` also sets
    ``result.breakdown``: for each phase, the live bytes at its peak by kind (or by the op that made them)."""
    check_shardable(cfg)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from .build import build_on_meta, materialize, trainable_parameters
    from .step import make_optimizer, train_step

    started = time.perf_counter()
    breakdown: dict[str, dict[str, int]] = {}
    traced: dict[str, object] = {}  # the sharded model and its optimizer, once they exist
    counter = _ResizingCounter(
        (lambda: _storage_kinds(traced["model"], traced["optimizer"]) if traced else {}) if explain else None)

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counter.current_op = str(func)
            counter.refresh()
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                counter.add(t)
            counter.refresh()
            return out

    autocast, mp_policy = mixed_precision(cfg)
    model = build_on_meta(arch, cfg, attn_implementation=_cpu_attention(arch, cfg))
    if autocast is not None and layout != "accelerate":  # accelerate's "Upcast to fp32 master weights"
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
    phase_peaks: dict[str, int] = {}
    peak_ops: dict[str, str] = {}
    current: list[str] = ["idle"]

    def on_phase(name: str) -> None:
        counter.refresh()
        if current[0] in PHASES:
            phase_peaks[current[0]] = counter.peak
            peak_ops[current[0]] = counter.peak_op
            if explain:
                breakdown[current[0]] = dict(sorted(counter.at_peak.items(), key=lambda kv: -kv[1]))
        current[0] = name
        counter.peak = counter.live

    with fake_process_group(rank, cfg.gpus):
        mesh = init_device_mesh("cpu", (cfg.gpus,), mesh_dim_names=("dp_shard",))
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        with fake_mode, _Track(), _masks_as_on_gpu(), _autocast_asked_as_on_gpu(), _dropout_as_on_gpu():
            materialize(model, lambda shape, dtype: torch.empty(shape, dtype=dtype), cfg)
            total_params = sum(p.numel() for p in model.parameters())
            model = _shard(model, mesh, mp_policy, layout, autocast)
            for tensor in list(model.parameters()) + list(model.buffers()):
                counter.add(tensor)
            counter.refresh()
            weights = counter.live
            params = trainable_parameters(model)
            optimizer = make_optimizer(params, cfg)
            input_ids = torch.zeros((cfg.micro_batch, cfg.seq_len), dtype=torch.long)
            steady = weights
            for _ in range(steps):
                phase_peaks.clear()
                traced.update(model=model, optimizer=optimizer)
                counter.refresh()
                steady = counter.live
                train_step(model, optimizer, input_ids, input_ids, on_phase, autocast)
    result = DryRunResult(
        phase_peaks=dict(phase_peaks),
        weights_bytes=weights,
        trainable_params=sum(p.numel() for p in params),  # global counts: DTensor numel is the full shape's
        total_params=total_params,
        steady_bytes=steady,
        peak_ops=peak_ops,
        seconds=time.perf_counter() - started,
    )
    result.breakdown = breakdown
    return result
