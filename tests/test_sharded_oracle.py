"""The FSDP terms of the memory model against the sharded oracle: one rank of the exported FSDP2 job traced on
fake CPU tensors under PyTorch's fake process group, the model sharded by accelerate's own
``fsdp2_prepare_model`` with the exported settings (decoder layers and the untied embedding resharded after
forward, a ``[final norm, lm_head]`` tail and the root kept gathered).  Every phase peak of the rank must
agree within 3 %.

Shapes: TinyLlama's widths (untied embeddings, GQA) and Llama 3.2's (tied, 128k vocabulary) with 3-4 layers,
so the matrix runs in seconds.
"""

import pytest

from tests.configs_2026 import config_path  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

import torch.distributed as dist  # noqa: E402

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from advisor.memory import TrainConfig  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.sharded import run_sharded_dry, shard_units  # noqa: E402


def _arch(name: str, layers: int, **update):
    return resolve_model(name).model_copy(update={"num_layers": layers, **update})


def test_oracle_sees_the_sharding():
    """Sanity of the oracle itself: a rank of 4 holds half the model states of a rank of 2, and the
    all-gathered layer makes the forward peak larger than the sharded states alone."""
    arch = _arch("tinyllama-1.1b", 2)
    two = run_sharded_dry(arch, TrainConfig(method="full", seq_len=128, fsdp=True, gpus=2))
    four = run_sharded_dry(arch, TrainConfig(method="full", seq_len=128, fsdp=True, gpus=4))
    assert abs(two.steady_bytes - 2 * four.steady_bytes) <= 2 * 512 * 64  # rounding of ~64 tensors
    assert four.phase_peaks["forward"] < two.phase_peaks["forward"]
    assert two.phase_peaks["forward"] > two.steady_bytes + 2**20


def test_shards_are_padded_to_the_world_size():
    """FSDP2 pads dim 0 of every parameter to a multiple of the world size: a vocabulary of 32003 rows
    costs each of 4 ranks ceil(32003 / 4) = 8001 rows of embedding and lm_head."""
    base = run_sharded_dry(_arch("tinyllama-1.1b", 1), TrainConfig(method="full", seq_len=64, fsdp=True, gpus=4))
    odd = run_sharded_dry(_arch("tinyllama-1.1b", 1, vocab_size=32003),
                          TrainConfig(method="full", seq_len=64, fsdp=True, gpus=4))
    row = 2048 * 2  # bf16 row of the embedding / lm_head
    assert odd.weights_bytes - base.weights_bytes == 2 * row  # one more row on each of the two matrices


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "llama-3.2-1b"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_estimate_has_the_units_accelerate_makes(name, method):
    """The units of memory/fsdp.py against the ones accelerate's fsdp2_prepare_model makes of the real model:
    which modules each holds (a rank's sharded bytes) and which reshard after forward.  Untied: the embedding
    alone, resharded; the tail [norm, lm_head] kept.  Tied: one kept tail with the shared weight.  Under
    LoRA accelerate does not find the final norm through the PEFT wrapper: it stays with the root."""
    from advisor.memory.fsdp import fsdp_terms

    arch = _arch(name, 2)
    cfg = TrainConfig(method=method, seq_len=64, fsdp=True, gpus=4)
    units = shard_units(arch, cfg)
    terms = fsdp_terms(arch, cfg)

    def kind(unit):
        names = unit["modules"]
        if names == [""]:
            return "root"
        if any(".layers." in n for n in names):
            return "layer"
        return "tail" if any(n.endswith("lm_head") for n in names) else "embed"

    by_kind = {}
    for unit in units:
        by_kind.setdefault(kind(unit), []).append(unit)
    assert len(by_kind["layer"]) == 2 and len(by_kind["root"]) == len(by_kind["tail"]) == 1
    assert ("embed" in by_kind) == (not arch.tie_word_embeddings) == (terms.embed is not None)
    expected = {"root": (terms.root, False), "layer": (terms.layer, True), "tail": (terms.tail, False)}
    if terms.embed is not None:
        expected["embed"] = (terms.embed, True)
    for k, (unit_terms, reshards) in expected.items():
        for unit in by_kind[k]:
            assert unit["sharded_bytes"] == unit_terms.sharded, (k, unit["modules"])
            assert unit["reshard_after_forward"] is reshards, (k, unit["modules"])


TOLERANCE = 0.03

# (model, layers, arch overrides, settings): full fine-tuning and LoRA, 2 and 4 ranks, with and without
# checkpointing; Llama 3.2's tied 128k embedding; a vocabulary that does not divide by the world size;
# master weights
CASES = [
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=512, gpus=2)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=512, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=1024, gpus=4)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=1024, gpus=2, grad_ckpt=True, optimizer="sgd")),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=512, gpus=2)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=1024, gpus=4)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=1024, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", targets=("q,v",), rank=8, seq_len=512, micro_batch=2, gpus=2,
                                   grad_ckpt=True)),
    ("llama-3.2-1b", 3, {}, dict(method="full", seq_len=512, gpus=2)),
    ("llama-3.2-1b", 3, {}, dict(method="lora", seq_len=512, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 3, {"vocab_size": 32003}, dict(method="full", seq_len=512, gpus=4)),
    ("tinyllama-1.1b", 3, {"vocab_size": 32003}, dict(method="lora", rank=6, seq_len=512, gpus=4)),
    # fp32 master weights under a bf16 policy: 16-bit unsharded params and grads, fp32 sharded grads
    ("tinyllama-1.1b", 3, {}, dict(method="full", seq_len=512, gpus=2, master_weights=True)),
    ("llama-3.2-1b", 2, {}, dict(method="full", seq_len=1024, gpus=2, master_weights=True)),
]


@pytest.mark.parametrize("name,layers,update,settings", CASES,
                         ids=[f"{n}-{s['method']}-{s['gpus']}gpu-{i}" for i, (n, _, _, s) in enumerate(CASES)])
def test_every_phase_peak_of_a_rank_within_three_percent(name, layers, update, settings):
    _rank_within_tolerance(_arch(name, layers, **update), TrainConfig(fsdp=True, **settings))


def _rank_within_tolerance(arch, cfg):
    """One rank's phase peaks, estimate against the sharded oracle (accelerate's FSDP2 wrap)."""
    from advisor.memory import estimate
    from advisor.verify.dryrun import PHASES

    oracle = run_sharded_dry(arch, cfg, layout="accelerate")
    est = estimate(arch, cfg)
    assert oracle.trainable_params == est.trainable_params
    for phase in PHASES:
        measured, predicted = oracle.phase_peaks[phase], getattr(est.phases, phase)
        assert abs(predicted - measured) / measured <= TOLERANCE, (
            f"{phase}: estimate {predicted / 2**20:.1f} MiB vs oracle {measured / 2**20:.1f} MiB "
            f"(peak at {oracle.peak_ops[phase]})")


@pytest.mark.parametrize("settings", [dict(method="lora", seq_len=512, gpus=2),
                                      dict(method="full", seq_len=512, gpus=2),
                                      dict(method="lora", seq_len=1024, gpus=4, grad_ckpt=True)])
def test_gemma3_rank_within_three_percent(settings):
    """Gemma 3 from its own config file (issue 13): the frozen vision tower is sharded with the rest and, on a text
    batch, never gathered."""
    arch = resolve_model(str(config_path("gemma-3-4b-it"))).model_copy(update={"num_layers": 2})
    _rank_within_tolerance(arch, TrainConfig(fsdp=True, **settings))
