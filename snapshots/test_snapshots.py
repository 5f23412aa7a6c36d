"""Snapshot tests of the app's states at 80x24 and 120x40, with a fake GPU backend and a scripted verify child.

SVGs live in snapshots/__snapshots__/.  After an intended UI change: `pytest snapshots --snapshot-update`.
"""

from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import Input  # noqa: E402

from tests.fake_pynvml import FakeGpu, GiB  # noqa: E402
from tests.tui_support import NO_DRIVER, ONE_4090, TWO_GPUS, app, backend, scripted, settle  # noqa: E402

SIZES = pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
SMALL_3060 = backend([FakeGpu(name="NVIDIA GeForce RTX 3060", total=12 * GiB, used=GiB, cc=(8, 6))])
RUNNING = ({"event": "start", "mode": "cuda"},
           *({"event": "sample", "used_bytes": {"0": int((2 + i) * GiB)}} for i in range(6)),
           *({"event": "step", "step": i, "loss": 2.5 - 0.1 * i, "tokens_per_s": 4000.0} for i in (1, 2, 3)))


async def settled(pilot):
    await settle(pilot)


def press(*keys):
    async def run(pilot):
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await settle(pilot)

    return run


def edit(field, value):
    async def run(pilot):
        await settle(pilot)
        widget = pilot.app.query_one(f"#{field}", Input)
        widget.focus()
        widget.value = value
        await pilot.press("enter")
        await settle(pilot)

    return run


async def until_finished(pilot, cancel=False):
    screen = pilot.app.screen
    for _ in range(300):
        await pilot.pause(0.05)
        if cancel and int(screen.query_one("ProgressBar").progress) == 3:
            await pilot.press("c")
            cancel = False
        if getattr(screen, "finished", False):
            break
    await pilot.pause(0.1)


# ---- the states issue 12 lists, at both sizes --------------------------------------------------------------
@SIZES
def test_no_gpu_chosen(snap_compare, size):
    assert snap_compare(app(gpu_backend=NO_DRIVER, model="llama-3.1-8b"), terminal_size=size, run_before=settled)


@SIZES
def test_plan_fits(snap_compare, size):
    assert snap_compare(app(gpu_backend=ONE_4090, model="llama-3.1-8b"), terminal_size=size, run_before=settled)


@SIZES
def test_adopted_alternative(snap_compare, size):
    assert snap_compare(app(gpu_backend=ONE_4090, model="llama-3.1-8b"), terminal_size=size,
                        run_before=press("down", "down", "enter"))


@SIZES
def test_nothing_fits(snap_compare, size):
    assert snap_compare(app(gpu_backend=SMALL_3060, model="llama-3.1-70b"), terminal_size=size, run_before=settled)


@SIZES
def test_error_next_to_its_field(snap_compare, size):
    assert snap_compare(app(gpu_backend=ONE_4090, model="llama-3.1-8b"), terminal_size=size,
                        run_before=edit("seq_len", "0"))


@SIZES
def test_verify_running(snap_compare, size):
    async def run(pilot):
        await settle(pilot)
        await pilot.press("v")
        for _ in range(100):
            await pilot.pause(0.05)
            if int(pilot.app.screen.query_one("ProgressBar").progress) == 3:
                break
        await pilot.pause(0.1)

    assert snap_compare(app(model="llama-3.2-1b", verify_start=scripted(*RUNNING)), terminal_size=size, run_before=run)


@SIZES
def test_verify_finished(snap_compare, size):
    """The dry run (fake tensors, a tiny model): measured vs predicted per phase, the verdict, the rerun key."""
    async def run(pilot):
        await settle(pilot)
        await pilot.press("v")
        await until_finished(pilot)

    tiny = "snapshots/fixtures/tiny-llama/config.json"
    assert snap_compare(app(model=tiny, gpu_backend=NO_DRIVER, gpu="4090", seq_len=256), terminal_size=size,
                        run_before=run)


@SIZES
def test_verify_cancelled(snap_compare, size):
    async def run(pilot):
        await settle(pilot)
        await pilot.press("v")
        await until_finished(pilot, cancel=True)

    assert snap_compare(app(model="llama-3.2-1b", verify_start=scripted(*RUNNING)), terminal_size=size, run_before=run)


# ---- dialogs and other states, at the small size (where fitting is hard) ------------------------------------
SMALL = (80, 24)


def test_two_gpus(snap_compare):
    assert snap_compare(app(gpu_backend=TWO_GPUS, model="qwen2.5-7b"), terminal_size=(120, 40), run_before=settled)


def test_rank_sweep(snap_compare):
    assert snap_compare(app(model="llama-3.1-8b", method="lora"), terminal_size=SMALL, run_before=press("r"))


def test_export_dialog(snap_compare):
    assert snap_compare(app(model="llama-3.2-1b", export_dir=Path("exports")), terminal_size=SMALL,
                        run_before=press("e"))


def test_help(snap_compare):
    assert snap_compare(app(model="llama-3.2-1b"), terminal_size=(120, 40), run_before=press("question_mark"))


def test_unknown_model(snap_compare):
    assert snap_compare(app(model="lama-3-8", gpu_backend=NO_DRIVER), terminal_size=SMALL, run_before=settled)


def test_previewed_option_that_does_not_fit(snap_compare):
    """Flip (keyboard only) to the first option that did not fit: its memory over the card, and why."""
    async def run(pilot):
        await settle(pilot)
        plan = pilot.app.report.plan
        full = next(i for i, r in enumerate(plan.rejected) if r.config.method == "full" and r.rule == "must-fit")
        for _ in range(len(plan.alternatives) + 1 + full):  # the cursor starts on the plan's choice
            await pilot.press("down")
        await pilot.pause()

    assert snap_compare(app(model="llama-3.1-8b"), terminal_size=(120, 40), run_before=run)
