"""NVML states, driven by a fake pynvml at the module boundary (and the real library's no-driver path)."""

import json

import pytest

from advisor.hardware import hardware_for
from advisor.hardware.nvml import Nvml, cuda_visible_indices
from advisor.hardware.sampler import MemorySampler
from advisor.report import GpusReport
from tests.fake_pynvml import FakeGpu, FakeMig, GiB, make_fake_pynvml


@pytest.mark.parametrize("error,words", [
    ("LibraryNotFound", "no NVIDIA driver"), ("DriverNotLoaded", "not loaded"),
    ("NoPermission", "permission"), ("LibRmVersionMismatch", "mismatch"),
])
def test_init_failures_are_states_with_hints(error, words):
    detection = Nvml(make_fake_pynvml(init_error=error)).detect()
    assert detection.gpus == [] and words in detection.reason
    assert "--gpu" in detection.hint and "--vram" in detection.hint


def test_no_library_installed():
    nvml = Nvml(module=None)
    nvml._module = None
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    builtins.__import__ = no_pynvml
    try:
        detection = nvml.detect()
    finally:
        builtins.__import__ = real_import
    assert "nvidia-ml-py" in detection.reason


def test_hanging_init_is_bounded():
    detection = Nvml(make_fake_pynvml(gpus=[FakeGpu()], hang_s=2.0), init_timeout_s=0.2).detect()
    assert detection.gpus == [] and "did not initialise" in detection.reason


def test_one_gpu_everything_read():
    nv = make_fake_pynvml([FakeGpu(processes=[(4242, 3 * GiB, "python"), (77, None, None)])])
    with Nvml(nv) as nvml:
        detection = nvml.detect()
    (gpu,) = detection.gpus
    assert gpu.name == "NVIDIA GeForce RTX 4090" and gpu.total_bytes == 24 * GiB and gpu.used_bytes == GiB
    assert gpu.free_bytes == 23 * GiB and gpu.compute_capability == (8, 9) and gpu.supports_bf16
    assert gpu.pci_bus_id == "00000000:01:00.0" and gpu.mig_enabled is None and gpu.nvlink_active is None
    assert [(p.pid, p.name, p.used_bytes) for p in gpu.processes] == [(4242, "python", 3 * GiB), (77, None, None)]
    assert detection.driver.driver_version == "550.54.15" and detection.driver.cuda_driver_version == "12.4"
    assert nv.shutdowns == 1  # the context manager closed NVML


def test_two_mixed_gpus_and_nvlink():
    gpus = [FakeGpu(name="NVIDIA A100-SXM4-80GB", total=80 * GiB, cc=(8, 0), nvlink=[1, 1, 0, 0], uuid="GPU-aaaa"),
            FakeGpu(name="Tesla T4", total=16 * GiB, cc=(7, 5), uuid="GPU-bbbb")]
    detection = Nvml(make_fake_pynvml(gpus)).detect()
    a100, t4 = detection.gpus
    assert a100.nvlink_active is True and a100.supports_bf16 and a100.supports_flash_attention_2
    assert t4.supports_bf16 is False and t4.supports_flash_attention_2 is False and t4.nvlink_active is None
    report = GpusReport.from_detection(detection)
    assert [g.catalog_name for g in report.gpus] == ["A100 80GB", "T4"]


def test_mig_instances_listed():
    gpu = FakeGpu(name="NVIDIA A100-SXM4-80GB", total=80 * GiB, cc=(8, 0), mig=True,
                  migs=[FakeMig("MIG-1", 20 * GiB, GiB), FakeMig("MIG-2", 40 * GiB, 0)])
    (info,) = Nvml(make_fake_pynvml([gpu])).detect().gpus
    assert info.mig_enabled is True
    assert [(m.uuid, m.total_bytes) for m in info.mig_instances] == [("MIG-1", 20 * GiB), ("MIG-2", 40 * GiB)]


def test_memory_v2_unsupported_falls_back_to_v1():
    (info,) = Nvml(make_fake_pynvml([FakeGpu(mem_v2=False, used=5 * GiB)])).detect().gpus
    assert info.used_bytes == 5 * GiB


def test_not_supported_field_is_none_not_a_crash():
    (info,) = Nvml(make_fake_pynvml([FakeGpu(cc=None)])).detect().gpus
    assert info.compute_capability is None and info.supports_bf16 is None


def test_gpu_lost_at_detection_is_left_out():
    gpus = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", lost=True)]
    detection = Nvml(make_fake_pynvml(gpus)).detect()
    assert [g.uuid for g in detection.gpus] == ["GPU-a"] and "stopped responding" in detection.reason


def test_sampler_survives_a_gpu_lost_mid_run():
    gpus = [FakeGpu(uuid="GPU-a", used=GiB), FakeGpu(uuid="GPU-b", used=2 * GiB)]
    nv = make_fake_pynvml(gpus)
    with MemorySampler(Nvml(nv)) as sampler:
        assert sampler.sample() == {0: GiB, 1: 2 * GiB}
        gpus[1].lost = True
        gpus[0].used = 3 * GiB
        assert sampler.sample() == {0: 3 * GiB, 1: None}
        assert sampler.lost == {1}
        assert sampler.sample()[1] is None
    assert nv.shutdowns == 1


def test_sampler_without_driver():
    sampler = MemorySampler(Nvml(make_fake_pynvml(init_error="LibraryNotFound")))
    assert not sampler.available and sampler.sample() == {}
    sampler.close()


def test_cuda_visible_devices_by_index_and_uuid():
    gpus = Nvml(make_fake_pynvml([FakeGpu(uuid=f"GPU-{i}abc") for i in range(4)])).detect().gpus
    assert cuda_visible_indices(gpus, "2,0") == [2, 0]
    assert cuda_visible_indices(gpus, "GPU-3,GPU-1a") == [3, 1]
    assert cuda_visible_indices(gpus, "1,7,2") == [1]  # CUDA stops at the first invalid entry
    assert cuda_visible_indices(gpus, "") == []
    assert cuda_visible_indices(gpus, "-1") == []


def test_detected_gpu_is_the_default_hardware(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus = [FakeGpu(name="Tesla T4", total=16 * GiB, cc=(7, 5)), FakeGpu(total=24 * GiB, used=2 * GiB)]
    detection = Nvml(make_fake_pynvml(gpus)).detect()
    hw = hardware_for(detection=detection)
    assert hw.name == "NVIDIA GeForce RTX 4090" and hw.memory_bytes == 24 * GiB and hw.count == 1
    assert hw.usable_bytes == 22 * GiB
    # flags override detection
    assert hardware_for(gpu="h100", detection=detection).name == "H100 SXM"


def test_real_library_without_driver():
    """This machine has nvidia-ml-py but no driver: the real pynvml path must say so, not crash."""
    pytest.importorskip("pynvml")
    detection = Nvml().detect()
    if detection.gpus:
        pytest.skip("a GPU is present")
    assert detection.reason and "--gpu" in detection.hint


def test_gpus_command_without_driver_exits_zero(capsys):
    from advisor.cli import main

    assert main(["gpus", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1
    if not doc["gpus"]:
        assert doc["reason"] and doc["hint"]
