"""Snapshot tests of the app's main states, at a fixed size, with a fake GPU backend.

SVGs live in snapshots/__snapshots__/.  After an intended UI change: `pytest snapshots --snapshot-update`.
"""

from pathlib import Path

import pytest

pytest.importorskip("textual")

from tests.fake_pynvml import FakeGpu, GiB  # noqa: E402
from tests.tui_support import NO_DRIVER, ONE_4090, TWO_GPUS, app, backend, settle  # noqa: E402

SIZE = (110, 36)


async def settled(pilot):
    await settle(pilot)


def press(*keys):
    async def run(pilot):
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()

    return run


def test_no_driver(snap_compare):
    assert snap_compare(app(gpu_backend=NO_DRIVER, model="llama-3.1-8b"), terminal_size=SIZE, run_before=settled)


def test_one_gpu_plan_fits(snap_compare):
    assert snap_compare(app(gpu_backend=ONE_4090, model="llama-3.1-8b"), terminal_size=SIZE, run_before=settled)


def test_two_gpus(snap_compare):
    assert snap_compare(app(gpu_backend=TWO_GPUS, model="qwen2.5-7b"), terminal_size=SIZE, run_before=settled)


def test_nothing_fits(snap_compare):
    small = backend([FakeGpu(name="NVIDIA GeForce RTX 3060", total=12 * GiB, used=GiB, cc=(8, 6))])
    assert snap_compare(app(gpu_backend=small, model="llama-3.1-70b"), terminal_size=SIZE, run_before=settled)


def test_rank_sweep(snap_compare):
    assert snap_compare(app(model="llama-3.1-8b", method="lora"), terminal_size=SIZE, run_before=press("r"))


def test_export_dialog(snap_compare):
    assert snap_compare(app(model="llama-3.2-1b", export_dir=Path("exports")), terminal_size=SIZE,
                        run_before=press("e"))


def test_error_modal(snap_compare):
    assert snap_compare(app(model="lama-3-8", gpu_backend=NO_DRIVER), terminal_size=SIZE, run_before=settled)


def test_help(snap_compare):
    assert snap_compare(app(model="llama-3.2-1b"), terminal_size=SIZE, run_before=press("question_mark"))


def test_rejected_full_fine_tuning(snap_compare):
    """Flip (keyboard only) to the first option that did not fit: its memory over the card, and why."""
    async def run(pilot):
        await settle(pilot)
        plan = pilot.app.report.plan
        full = next(i for i, r in enumerate(plan.rejected) if r.config.method == "full")
        # the list starts unhighlighted: the first "down" lands on the chosen plan
        for _ in range(2 + len(plan.alternatives) + full):
            await pilot.press("down")
        await pilot.pause()

    assert snap_compare(app(model="llama-3.1-8b"), terminal_size=SIZE, run_before=run)


def test_verify_dry_run_finished(snap_compare):
    """The Verify screen after the dry run (no GPU): measured vs predicted per phase."""
    async def run(pilot):
        await settle(pilot)
        await pilot.press("v")
        for _ in range(300):
            await pilot.pause(0.1)
            if getattr(pilot.app.screen, "finished", False):
                break
        await pilot.pause(0.1)

    tiny = "snapshots/fixtures/tiny-llama/config.json"
    assert snap_compare(app(model=tiny, gpu_backend=NO_DRIVER, gpu="4090", seq_len=256), terminal_size=SIZE,
                        run_before=run)
