"""Issue 12: the app on the shared core.  Each test was a defect seen by a new user (crash, hang, stale or
dishonest state), or what the issue asks instead (adopt any option, say which card, inline errors)."""

import os
import threading
import time

import pytest

pytest.importorskip("textual")

from textual.widgets import Input, OptionList, ProgressBar, Static  # noqa: E402

from advisor.tui.screens.modals import ErrorModal, ExportModal, HelpModal, RankSweepModal  # noqa: E402
from advisor.tui.screens.verify import VerifyScreen  # noqa: E402
from advisor.tui.widgets.memory_bar import MemoryBar  # noqa: E402
from tests.tui_support import NO_DRIVER, app, scripted, settle, text_of  # noqa: E402


async def submit(pilot, field: str, value: str) -> None:
    """Type ``value`` into a main-screen field the way a user does (focus, replace, Enter) and let it plan."""
    widget = pilot.app.query_one(f"#{field}", Input)
    widget.focus()
    widget.value = value
    await pilot.press("enter")
    await settle(pilot)


def panels_are_empty(app) -> bool:
    return (app.query_one(MemoryBar).estimate is None and text_of(app.query_one("#why-text")) == ""
            and app.query_one("#alternatives", OptionList).option_count == 0)


# ---- (1) no crash, no hang ----------------------------------------------------------------------------------
async def test_unknown_model_then_escape_down_r_v_neither_crashes_nor_acts():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await submit(pilot, "model", "llama-9000")
        await pilot.press("escape", "escape", "down", "r", "v", "e")
        await settle(pilot)
        assert pilot.app.screen is pilot.app.screen_stack[0]  # nothing opened on a plan that does not exist
        assert "unknown model" in text_of(pilot.app.query_one("#model-error"))
        assert pilot.app.query_one("#model-error").display
        assert "no plan" in text_of(pilot.app.query_one("#plan-summary"))
        assert panels_are_empty(pilot.app)
    assert pilot.app.return_code in (None, 0)


async def test_a_slow_hub_lookup_leaves_the_ui_responsive_and_can_be_cancelled(monkeypatch):
    from advisor import core
    from advisor.errors import AdvisorError

    answer = threading.Event()

    def slow(spec):
        answer.wait(30)  # the Hub, slowly: it answers when the test lets it
        raise AdvisorError(f"cannot fetch {spec}", "check the network", field="model", value=spec)

    try:
        async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            monkeypatch.setattr(core, "resolve_model", slow)
            field = pilot.app.query_one("#model", Input)
            field.focus()
            field.value = "foo/bar-7b"
            began = time.monotonic()
            await pilot.press("enter", "down", "r", "v")
            await pilot.pause()
            # the keys were handled while the look-up is still waiting (a UI thread that waited for the Hub would
            # be here only after 30 s; 10 leaves a loaded CI machine its time)
            assert not answer.is_set() and time.monotonic() - began < 10
            assert "looking up foo/bar-7b" in text_of(pilot.app.query_one("#plan-summary"))
            assert pilot.app.screen is pilot.app.screen_stack[0]
            await pilot.press("c")
            await pilot.pause()
            assert "cancelled" in text_of(pilot.app.query_one("#plan-summary"))
            answer.set()  # the look-up ends after the cancel: its answer is dropped
            await pilot.pause(0.5)
            await settle(pilot)
            assert pilot.app.state == "cancelled" and not pilot.app.query_one("#model-error").display
    finally:
        answer.set()  # never leave the look-up thread waiting


@pytest.mark.parametrize("text", ["A100-80GB", "4xA100-80GB", "A100 80GB", "24", "24GiB"])
async def test_gpu_field_takes_card_names_ending_in_gb_and_bare_sizes(text):
    async with app(model="llama-3.2-1b", gpu_backend=NO_DRIVER).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await submit(pilot, "gpu", text)
        assert pilot.app.state == "planned", text_of(pilot.app.query_one("#plan-summary"))
        assert pilot.app.result.hardware is not None and pilot.app.result.hardware.memory_bytes >= 24 * 2**30
        assert not pilot.app.query_one("#gpu-error").display


@pytest.mark.parametrize("field,value", [("seq_len", "0"), ("seq_len", "-5"), ("effective_batch", "0"),
                                         ("seq_len", ""), ("effective_batch", "-")])
async def test_an_impossible_number_is_refused_next_to_its_field_and_nothing_is_exported(field, value, tmp_path):
    async with app(model="llama-3.2-1b", export_dir=tmp_path).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await submit(pilot, field, value)
        summary = text_of(pilot.app.query_one("#plan-summary"))
        assert "planning" not in summary and "no plan" in summary
        assert pilot.app.query_one(f"#{field}-error").display
        assert text_of(pilot.app.query_one(f"#{field}-error")).startswith("✗")
        assert panels_are_empty(pilot.app)
        await pilot.press("escape", "e")
        await pilot.pause()
        assert not isinstance(pilot.app.screen, ExportModal)  # the previous plan is gone: nothing to export
        assert not list(tmp_path.iterdir())


async def test_after_an_error_the_panels_are_cleared_and_moving_keeps_the_error():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert pilot.app.query_one(MemoryBar).estimate is not None
        await submit(pilot, "gpu", "lots")
        assert panels_are_empty(pilot.app)
        await pilot.press("escape", "down", "up", "down")
        await pilot.pause()
        assert "GPU" in text_of(pilot.app.query_one("#plan-summary")) and pilot.app.query_one("#gpu-error").display
        assert pilot.app.query_one(MemoryBar).estimate is None


async def test_escape_takes_back_an_edit_not_submitted_so_every_field_shows_what_the_panels_answer():
    """Typed but not submitted, then Escape: the field goes back to the value the plan (or its error) is
    about; a submitted value stays, even a wrong one, next to its error."""
    async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        seq = pilot.app.query_one("#seq_len", Input)
        asked = seq.value
        seq.focus()
        seq.value = "8192"
        await pilot.press("escape")
        await settle(pilot)
        assert seq.value == asked and pilot.app.request.seq_len == int(asked) and pilot.app.state == "planned"
        await submit(pilot, "seq_len", "")
        await pilot.press("escape")
        await settle(pilot)
        assert seq.value == "" and "empty" in text_of(pilot.app.query_one("#plan-summary"))
        seq.focus()
        seq.value = "4096"
        await pilot.press("escape")
        await settle(pilot)
        assert seq.value == "" and "empty" in text_of(pilot.app.query_one("#plan-summary"))


async def test_export_dialog_does_not_replan_and_a_failed_write_keeps_the_dialog_and_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    async with app(model="llama-3.2-1b", export_dir=tmp_path / "out").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        result = pilot.app.result
        await pilot.press("e")
        await settle(pilot)
        dialog = pilot.app.screen
        assert isinstance(dialog, ExportModal)
        path = dialog.query_one("#path", Input)
        path.value = str(blocker / "sub")
        path.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert pilot.app.screen is dialog  # still open, with what was typed
        assert path.value == str(blocker / "sub")
        assert "✗" in text_of(dialog.query_one("#export-status"))
        assert pilot.app.result is result  # the dialog's inputs never re-planned the main screen
        assert not isinstance(pilot.app.screen, ErrorModal)


async def test_ctrl_q_during_verify_exits_promptly_and_ends_the_child():
    """The real child (the dry run of an 8B model: many seconds of tracing); Ctrl+Q must not wait for it."""
    async with app(model="llama-3.1-8b", gpu_backend=NO_DRIVER, gpu="4090").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        screen = pilot.app.screen
        assert isinstance(screen, VerifyScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.run is not None:
                break
        pid = screen.run.pid
        began = time.monotonic()
        await pilot.press("ctrl+q")
    assert time.monotonic() - began < 4.0
    with pytest.raises(ProcessLookupError):  # gone and reaped
        os.kill(pid, 0)


async def test_ctrl_q_while_the_child_is_still_starting_cancels_it_when_it_arrives():
    import threading

    gate = threading.Event()
    inner = scripted({"event": "start", "mode": "dry"})

    def slow_start(selected, mode, steps):
        gate.wait(5)
        return inner(selected, mode, steps)

    async with app(model="llama-3.2-1b", verify_start=slow_start).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause()
        screen = pilot.app.screen
        screen.kill_run()  # what Ctrl+Q does to a screen whose child is not there yet
        gate.set()
        for _ in range(50):
            await pilot.pause(0.05)
            if inner.runs:
                break
        await pilot.pause(0.2)
        assert inner.runs and inner.runs[0].cancelled.is_set()


async def test_a_cancelled_verify_never_shows_100_percent():
    steps = [{"event": "start", "mode": "cuda"}] + [
        {"event": "step", "step": i, "loss": 2.0, "tokens_per_s": 1000.0} for i in (1, 2, 3)]
    async with app(model="llama-3.2-1b", verify_start=scripted(*steps)).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        screen = pilot.app.screen
        for _ in range(40):
            await pilot.pause(0.05)
            if screen.query_one(ProgressBar).progress == 3:
                break
        await pilot.press("c")
        for _ in range(40):
            await pilot.pause(0.05)
            if screen.finished:
                break
        bar = screen.query_one(ProgressBar)
        assert screen.finished and screen.outcome == "cancelled"
        assert bar.progress == 3 < bar.total
        assert "cancelled" in text_of(screen.query_one("#status")) and "100" not in text_of(screen.query_one("#status"))


async def test_verify_says_it_is_starting_from_the_first_second_and_can_rerun():
    import threading

    gate = threading.Event()
    inner = scripted({"event": "start", "mode": "dry"}, {"event": "cancelled", "signal": 15}, hold=False)

    def slow_start(selected, mode, steps):
        gate.wait(5)
        return inner(selected, mode, steps)

    async with app(model="llama-3.2-1b", verify_start=slow_start).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause(0.3)
        screen = pilot.app.screen
        assert "starting" in text_of(screen.query_one("#status")) or "tracing" in text_of(screen.query_one("#status"))
        gate.set()
        for _ in range(40):
            await pilot.pause(0.05)
            if screen.finished:
                break
        assert screen.finished and "r runs it again" in text_of(screen.query_one("#verdict"))
        await pilot.press("r")
        for _ in range(40):
            await pilot.pause(0.05)
            if len(inner.runs) == 2 and screen.finished:
                break
        assert len(inner.runs) == 2


# ---- (2) honest state -------------------------------------------------------------------------------------
async def test_without_a_driver_and_without_a_typed_gpu_the_app_asks_for_one():
    async with app(model="llama-3.1-8b", gpu_backend=NO_DRIVER).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        summary = text_of(pilot.app.query_one("#plan-summary"))
        why = text_of(pilot.app.query_one("#why-text"))
        assert "Which GPU" in summary and "fits" not in summary + why
        assert pilot.app.result is None and pilot.app.query_one("#gpu-error").display
        assert pilot.app.focused is pilot.app.query_one("#gpu")
        await submit(pilot, "gpu", "4090")  # answering the question plans for that card
        assert pilot.app.state == "planned" and pilot.app.result.hardware.name == "RTX 4090"
        card = text_of(pilot.app.query_one("#hardware-text"))
        assert "RTX 4090" in card and "24.0 GiB" in card and "bf16 ✓" in card and "FlashAttention-2 ✓" in card


async def test_while_planning_the_panels_say_so(monkeypatch):
    from advisor import core

    real = core.plan
    release = threading.Event()

    def held_plan(*args, **kwargs):
        # the plan worker (a thread) waits until the test has looked: on a slow machine a timed sleep could end first
        release.wait(10)
        return real(*args, **kwargs)

    async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        monkeypatch.setattr(core, "plan", held_plan)
        field = pilot.app.query_one("#seq_len", Input)
        field.focus()
        field.value = "4096"
        await pilot.press("enter")
        await pilot.pause()
        assert "planning" in text_of(pilot.app.query_one("#plan-summary"))
        assert pilot.app.query_one("#right").has_class("stale")
        release.set()
        await settle(pilot)
        assert not pilot.app.query_one("#right").has_class("stale") and pilot.app.state == "planned"


# ---- (3) adopt any option ---------------------------------------------------------------------------------
async def test_enter_adopts_an_option_and_export_verify_and_the_rank_sweep_use_it():
    async with app(model="qwen2.5-7b", gpu="4090", gpu_backend=NO_DRIVER,
                   verify_start=scripted({"event": "start", "mode": "dry"})).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        options = pilot.app.query_one("#alternatives", OptionList)
        assert options.highlighted == 0  # the cursor shows from the start, on the plan's choice
        await pilot.press("down", "down")
        await pilot.pause()
        assert pilot.app.selected == 0  # moving previews; it does not adopt
        assert "preview" in text_of(pilot.app.query_one("#plan-summary"))
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.selected == 2
        assert "adopted" in text_of(pilot.app.query_one("#plan-summary"))
        assert str(options.get_option("option:2").prompt).startswith("▶")
        await pilot.press("up")  # moving away keeps the adopted option
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ExportModal) and "option 2" in pilot.app.screen.title_text
        await pilot.press("escape", "r")
        await pilot.pause()
        assert isinstance(pilot.app.screen, RankSweepModal) and "option 2" in pilot.app.screen.title_text
        await pilot.press("escape", "v")
        await pilot.pause()
        assert isinstance(pilot.app.screen, VerifyScreen) and pilot.app.screen.selected.option == 2


async def test_enter_on_an_option_that_does_not_fit_does_not_adopt_it():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        options = pilot.app.query_one("#alternatives", OptionList)
        options.highlighted = options.option_count - 1
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.selected == 0
        assert "does not fit" in text_of(pilot.app.query_one("#plan-summary"))


async def test_rejected_options_read_in_peoples_words():
    async with app(model="llama-3.1-8b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        why = text_of(pilot.app.query_one("#why-text"))
        assert "QLORA" not in why and "adamw_8bit" not in why
        assert "8-bit AdamW" in why and "needs" in why and " of " in why


# ---- (5) readable inputs, help -------------------------------------------------------------------------------
async def test_keys_work_after_leaving_a_field_and_a_dialogs_keys_are_its_own():
    async with app(model="llama-3.2-1b").run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("m")
        assert pilot.app.focused is pilot.app.query_one("#model")
        await pilot.press("escape", "g")
        assert pilot.app.focused is pilot.app.query_one("#gpu")
        await pilot.press("escape", "question_mark")
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpModal)
        await pilot.press("v", "e")  # the main screen's keys are off behind a dialog
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpModal)


async def test_help_explains_every_key():
    from advisor.tui.screens.modals import HELP

    for key in ("Enter", "Tab", "↑ ↓", "Ctrl+Q", "Esc", "[b]g[/b]", "[b]m[/b]", "[b]r[/b]", "[b]e[/b]", "[b]v[/b]",
                "[b]c[/b]", "[b]?[/b]", "[b]q[/b]"):
        assert key in HELP, key
