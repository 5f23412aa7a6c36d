import pytest

from advisor.cli import main
from advisor.hardware.catalog import UnknownGpuError, gpu_catalog, resolve_gpu

REQUIRED = ["RTX 3090", "RTX 4090", "RTX 5090", "RTX A6000", "RTX 6000 Ada", "T4", "V100 16GB", "V100 32GB",
            "A10G", "L4", "L40S", "A100 40GB", "A100 80GB", "H100 PCIe", "H100 SXM", "H200", "B200", "GH200"]


def test_catalog_is_sane():
    specs = gpu_catalog()
    assert len(specs) >= 30
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)
    known_cc = {(7, 0), (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (12, 0)}
    aliases = set()
    for spec in specs:
        assert 4 <= spec.memory_gb <= 300
        assert spec.compute_capability in known_cc
        assert spec.bf16 == (spec.compute_capability >= (8, 0))
        assert spec.tflops_fp16 and spec.tflops_fp16 > 0
        assert spec.bf16 == (spec.tflops_bf16 is not None)
        assert spec.bandwidth_gbs and spec.bandwidth_gbs > 100
        for alias in spec.aliases:
            assert alias.lower() not in aliases, f"alias {alias} used twice"
            aliases.add(alias.lower())


@pytest.mark.parametrize("typed,name,count", [
    ("4090", "RTX 4090", 1), ("rtx4090", "RTX 4090", 1), ("RTX 4090", "RTX 4090", 1),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 1), ("A100-80GB", "A100 80GB", 1), ("a100", "A100 80GB", 1),
    ("h100", "H100 SXM", 1), ("4xA100-80GB", "A100 80GB", 4), ("8x h100", "H100 SXM", 8), ("t4", "T4", 1),
    ("Tesla T4", "T4", 1), ("l40s", "L40S", 1),
])
def test_forgiving_names(typed, name, count):
    spec, n = resolve_gpu(typed)
    assert (spec.name, n) == (name, count)


@pytest.mark.parametrize("spec", gpu_catalog(), ids=lambda s: s.name)
def test_every_entry_resolves_by_its_names(spec):
    for name in [spec.name, *spec.aliases]:
        assert resolve_gpu(name)[0].name == spec.name


def test_unknown_gpu_names_nearest():
    with pytest.raises(UnknownGpuError) as err:
        resolve_gpu("rtx 4099")
    assert "RTX 4090" in err.value.hint


def test_estimate_with_catalog_gpu(capsys):
    import json

    assert main(["estimate", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "4090"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capacity_bytes"] == 24 * 2**30 and doc["fits"] is True
    assert main(["estimate", "--model", "llama-3.1-8b", "--gpu", "rtx 4099"]) == 2
    assert "RTX 4090" in capsys.readouterr().err
