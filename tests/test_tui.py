"""Pilot tests of the app's flows, with a fake GPU backend."""

import pytest

pytest.importorskip("textual")

from textual.widgets import Input, OptionList, Static  # noqa: E402

from advisor.tui.screens.modals import ErrorModal, ExportModal, RankSweepModal  # noqa: E402
from advisor.tui.widgets.memory_bar import MemoryBar  # noqa: E402
from tests.tui_support import NO_DRIVER, app, settle  # noqa: E402


async def test_plan_appears_for_the_detected_gpu():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "RTX 4090" in str(pilot.app.query_one("#hardware-text", Static).render())
        assert pilot.app.report.plan.chosen is not None
        assert pilot.app.report.gpu["name"] == "NVIDIA GeForce RTX 4090"
        assert pilot.app.query_one(MemoryBar).estimate is not None


async def test_picking_a_model_replans():
    async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        before = pilot.app.report.model.name
        model = pilot.app.query_one("#model", Input)
        model.value = "qwen2.5-7b"
        await pilot.click("#model")
        await pilot.press("enter")
        await settle(pilot)
        assert before == "llama-3.2-1b" and pilot.app.report.model.name == "qwen2.5-7b"


async def test_longer_sequence_changes_the_breakdown():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        before = pilot.app.report.plan.estimate.activation_bytes + pilot.app.report.plan.estimate.peak_device_bytes
        seq = pilot.app.query_one("#seq_len", Input)
        seq.value = "8192"
        await pilot.click("#seq_len")
        await pilot.press("enter")
        await settle(pilot)
        after = pilot.app.report.plan.estimate
        assert pilot.app.report.goals["seq_len"] == 8192
        assert after.activation_bytes + after.peak_device_bytes != before


async def test_choosing_unpacked_batches_replans_with_the_cache_warning_and_the_same_peak():
    async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        before = pilot.app.report.plan.estimate.peak_device_bytes
        pilot.app.query_one("#lengths").focus()
        await pilot.press("enter", "down", "enter")  # open the list, the next choice, take it
        await settle(pilot)
        plan = pilot.app.report.plan
        assert pilot.app.report.goals["lengths"] == "variable" and plan.chosen.config.lengths == "variable"
        assert plan.estimate.peak_device_bytes == before  # what fits is the fixed shape's
        assert "unpacked data" in str(pilot.app.query_one("#why-text", Static).render())


async def test_selecting_an_alternative_shows_its_breakdown():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        options = pilot.app.query_one("#alternatives", OptionList)
        assert options.option_count >= 2
        chosen = pilot.app.query_one(MemoryBar).estimate.peak_device_bytes
        options.focus()
        options.highlighted = 0
        await pilot.press("down")
        await pilot.pause()
        shown = pilot.app.query_one(MemoryBar).estimate.peak_device_bytes
        assert shown == pilot.app.report.plan.alternatives[0].need_bytes and shown != chosen


async def test_export_writes_and_refuses_to_overwrite_without_confirmation(tmp_path):
    async with app(model="llama-3.2-1b", export_dir=tmp_path).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ExportModal)
        await pilot.click("#export")
        await pilot.pause()
        written = tmp_path / "train.py"
        assert written.exists()
        written.write_text("# mine")
        await pilot.press("e")
        await pilot.pause()
        await pilot.click("#export")  # first press: warns, writes nothing
        await pilot.pause()
        assert written.read_text() == "# mine"
        assert "exists" in str(pilot.app.screen.query_one("#export-status", Static).render())
        await pilot.pause(0.3)  # two clicks within a few ms would be read as one double click
        await pilot.click("#export")  # second press: confirmed
        await pilot.pause()
        assert written.read_text() != "# mine"


async def test_bad_model_shows_its_error_next_to_the_field_not_a_crash():
    async with app(model="not-a-model-at-all", gpu_backend=NO_DRIVER).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert not isinstance(pilot.app.screen, ErrorModal)  # inline, as posting does: no modal to dismiss
        assert "unknown model" in str(pilot.app.query_one("#model-error", Static).render())
        assert pilot.app.query_one("#model-error").display


async def test_rank_sweep_modal():
    async with app(model="llama-3.1-8b", method="lora").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(pilot.app.screen, RankSweepModal)
        ranks = [row.rank for row in pilot.app.screen.rows]
        assert ranks == [4, 8, 16, 32, 64, 128]
        peaks = [row.peak_device_bytes for row in pilot.app.screen.rows]
        assert peaks == sorted(peaks) and peaks[-1] < 1.3 * peaks[0]


async def test_flipping_to_an_option_that_does_not_fit_shows_why():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        plan = pilot.app.report.plan
        full = [i for i, r in enumerate(plan.rejected) if r.config.method == "full" and r.rule == "must-fit"]
        assert full, "full fine-tuning of an 8B model cannot fit a 24 GB card"
        target = 1 + len(plan.alternatives) + full[0]  # the cursor starts on the plan's choice
        for _ in range(target):
            await pilot.press("down")
        await pilot.pause()
        summary = str(pilot.app.query_one("#plan-summary", Static).render())
        assert "✗" in summary and "GiB" in summary and "full FT" in summary
        bar = pilot.app.query_one(MemoryBar)
        assert bar.estimate.peak_device_bytes > bar.capacity


async def test_polling_replans_only_when_gpu_memory_moves():
    from tests.fake_pynvml import FakeGpu, GiB, make_fake_pynvml
    from advisor.hardware.nvml import Nvml

    gpu = FakeGpu(used=GiB)
    fake = make_fake_pynvml([gpu])
    async with app(gpu_backend=lambda: Nvml(fake).detect(), model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        first = pilot.app.report
        pilot.app.detect()  # a poll with nothing changed: same plan object
        await settle(pilot)
        assert pilot.app.report is first
        gpu.used = 10 * GiB  # another process took 9 GiB: re-plan for what is left
        pilot.app.detect()
        await settle(pilot)
        assert pilot.app.report is not first
        assert pilot.app.report.gpu["usable_bytes"] == 14 * GiB


async def test_verify_screen_runs_the_dry_run_without_a_gpu(tmp_path):
    import json

    from advisor.tui.screens.verify import VerifyScreen

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 688,
                                  "vocab_size": 1024, "max_position_embeddings": 512}))
    async with app(model=str(config), gpu_backend=NO_DRIVER, gpu="4090", seq_len=256).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, VerifyScreen) and screen.mode == "dry"
        for _ in range(300):  # the child imports torch and traces: a few seconds
            await pilot.pause(0.1)
            if screen.finished:
                break
        assert screen.finished
        summary = str(screen.query_one("#summary", Static).render())
        assert "forward" in summary and "optimizer" in summary and "%" in summary


async def test_verify_can_be_cancelled(tmp_path):
    from advisor.tui.screens.verify import VerifyScreen

    async with app(model="llama-3.1-8b", gpu_backend=NO_DRIVER, gpu="4090").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause(0.5)
        screen = pilot.app.screen
        assert isinstance(screen, VerifyScreen)
        await pilot.press("c")
        for _ in range(40):
            await pilot.pause(0.1)
            if screen.finished:
                break
        assert screen.finished and "cancelled" in str(screen.query_one("#status", Static).render())


async def test_export_and_verify_act_on_the_highlighted_alternative(tmp_path):
    """The app's export of the adopted option 2 writes the same file as `lora-advisor export ... --option 2`, and its
    verify runs that option, not the plan's first choice."""
    from advisor.cli import main
    from advisor.tui.screens.verify import VerifyScreen

    flags = ["--model", "qwen2.5-7b", "--gpu", "4090", "--seq-len", "4096"]
    assert main(["export", *flags, "--option", "2", "--format", "peft-trl", "-o", str(tmp_path / "cli")]) == 0
    async with app(model="qwen2.5-7b", gpu="4090", seq_len=4096, gpu_backend=NO_DRIVER,
                   export_dir=tmp_path / "app").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        options = pilot.app.query_one("#alternatives", OptionList)
        options.focus()
        options.highlighted = 0
        await pilot.press("down", "down", "enter")  # preview option 2, adopt it
        await pilot.pause()
        second = pilot.app.report.plan.alternatives[1]
        assert pilot.app.query_one(MemoryBar).estimate.peak_device_bytes == second.need_bytes
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ExportModal)
        await pilot.click("#export")
        await pilot.pause()
        assert (tmp_path / "app" / "train.py").read_text() == (tmp_path / "cli" / "train.py").read_text()
        await pilot.press("v")
        await pilot.pause(0.2)
        screen = pilot.app.screen
        assert isinstance(screen, VerifyScreen), screen
        assert screen.selected.option == 2, (screen.selected.option, pilot.app.selected)
        assert screen.selected.cfg == second.config
        await pilot.press("c")
        for _ in range(40):
            await pilot.pause(0.1)
            if screen.finished:
                break
