"""The Verify screen: a short real run (or the dry run) in a child process, live, next to the prediction."""

from __future__ import annotations

import threading
import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, ProgressBar, Sparkline, Static

from ...units import GiB

# a phase whose measurement is within this of the prediction passes (the dry run traces the same step)
PASS_PERCENT = 10.0
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class VerifyScreen(ModalScreen[None]):
    """Live memory per GPU (NVML samples) with the predicted peak and the capacity, step / loss /
    throughput, a cancel key, and the measured-vs-predicted verdict at the end, with a rerun key."""

    DEFAULT_CSS = """
    VerifyScreen Sparkline { height: 3; margin: 0 0 1 0; }
    VerifyScreen .hidden { display: none; }
    VerifyScreen #verdict { text-style: bold; }
    """

    BINDINGS = [Binding("c", "cancel", "Cancel run"), Binding("r", "rerun", "Run again"),
                Binding("escape", "close", "Close")]

    class Event(Message):
        def __init__(self, event: dict, attempt: int) -> None:
            super().__init__()
            self.event, self.attempt = event, attempt

    def __init__(self, selected, mode: str, steps: int = 10, start=None) -> None:
        super().__init__()
        self.selected = selected  # core.Selected: the option to run, with its estimate
        self.arch, self.cfg, self.predicted = selected.arch, selected.cfg, selected.estimate
        self.mode, self.steps = mode, steps
        self.starter = start  # (selected, mode, steps) -> a run with events() and cancel(); core.start_verify
        self.capacity = selected.capacity_bytes
        self.samples: list[float] = []
        self.events: list[dict] = []
        self.run = None
        self.finished = False
        self.outcome = ""  # passed, failed, not judged, oom, error, cancelled
        self.attempt = 0
        self._lock = threading.Lock()
        self._stop = False  # cancel asked for before the child existed
        self._began = time.monotonic()
        self._heard = False  # an event came from the child

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Verify option {self.selected.option} · {self.arch.name} · {self.selected.label} · {self.mode}",
                        classes="title")
            yield ProgressBar(total=self.steps if self.mode != "dry" else 1, show_eta=False, id="progress")
            # live device memory from NVML (GiB); the dry run has no GPU to sample
            yield Sparkline([0.0], id="memory-chart", classes="hidden" if self.mode == "dry" else "")
            yield Static(self._limits(), id="limits", classes="hint")
            yield Static("", id="status")
            yield Static("", id="verdict")
            yield Static("", id="summary")
        yield Footer()

    def _limits(self) -> str:
        low, high = self.predicted.peak_device_range_bytes
        predicted = f"predicted peak {self.predicted.peak_device_bytes / GiB:.2f} GiB (range {low / GiB:.2f}-{high / GiB:.2f})"
        capacity = f" · capacity {self.capacity / GiB:.2f} GiB" if self.capacity else ""
        return predicted + capacity

    def on_mount(self) -> None:
        self._tick()
        self.set_interval(0.25, self._tick)
        self.launch()

    def _tick(self) -> None:
        """Feedback from the first second: a spinner and the seconds waited until the child speaks."""
        if self._heard or self.finished:
            return
        waited = time.monotonic() - self._began
        frame = SPINNER[int(waited * 4) % len(SPINNER)]
        what = "tracing one step on fake tensors" if self.mode == "dry" else "starting the training child"
        self.query_one("#status", Static).update(f"{frame} {what} ... {waited:.0f} s (c cancels)")

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "rerun":
            return self.finished
        if action == "cancel":
            return not self.finished
        return True

    def launch(self) -> None:
        self.attempt += 1
        self._stop, self.run, self.finished, self.outcome = False, None, False, ""
        self.events, self.samples, self._heard, self._began = [], [], False, time.monotonic()
        self.query_one(ProgressBar).update(progress=0)
        self.query_one("#verdict", Static).update("")
        self.query_one("#summary", Static).update("")
        self._tick()
        self.refresh_bindings()
        self.start(self.attempt)

    @work(thread=True, exclusive=True, exit_on_error=False, group="verify")
    def start(self, attempt: int) -> None:
        from ...errors import AdvisorError

        try:
            if self.starter is None:
                from ... import core

                run = core.start_verify(self.selected, self.mode, self.steps)
            else:
                run = self.starter(self.selected, self.mode, self.steps)
        except AdvisorError as err:
            self.post_message(self.Event({"event": "error", "message": err.message, "hint": err.hint}, attempt))
            return
        except Exception as exc:
            self.post_message(self.Event({"event": "error", "message": f"{type(exc).__name__}: {exc}"}, attempt))
            return
        with self._lock:
            self.run = run
            stop = self._stop
        if stop:  # closed or quit while the child was starting: it ends at once
            run.cancel()
        for event in run.events():
            self.post_message(self.Event(event, attempt))

    def kill_run(self) -> None:
        """End the child now (quit, close): no orphan, no GPU memory left held.  Blocks up to the grace period."""
        with self._lock:
            self._stop = True
            run = self.run
        if run is not None:
            run.cancel()

    @work(thread=True, exit_on_error=False, group="verify-cancel")
    def _cancel_in_background(self) -> None:
        self.kill_run()

    def on_verify_screen_event(self, message: Event) -> None:
        if message.attempt != self.attempt or self.finished:
            return
        event = message.event
        self.events.append(event)
        self._heard = True
        kind = event.get("event")
        status = self.query_one("#status", Static)
        if kind == "sample":
            used = [v for v in (event.get("used_bytes") or {}).values() if v is not None]
            if used:
                self.samples.append(max(used) / GiB)
                self.query_one(Sparkline).data = self.samples[-120:]
        elif kind == "step":
            self.query_one(ProgressBar).advance(1)
            status.update(f"step {event['step']}/{self.steps} · loss {event['loss']:.3f} · "
                          f"{event['tokens_per_s']:,.0f} tokens/s")
        elif kind == "start":
            status.update(f"running in a child process ({event.get('mode', self.mode)})")
        elif kind in ("result", "oom", "error", "cancelled"):
            self.finish(kind)

    def finish(self, kind: str) -> None:
        self.finished = True
        self.refresh_bindings()
        status, verdict = self.query_one("#status", Static), self.query_one("#verdict", Static)
        done = int(self.query_one(ProgressBar).progress)
        if kind == "cancelled":  # never 100 %: the bar stays where the run stopped
            self.outcome = "cancelled"
            status.update(f"cancelled after {done} of {self.query_one(ProgressBar).total:.0f} steps: no verdict")
            verdict.update(Text("cancelled · r runs it again", style="yellow"))
            return
        from ... import core

        try:
            report = core.verify_report(self.selected, self.mode, self.events)
        except Exception as exc:  # a report that cannot be built is an error shown, not a crash
            self.outcome = "error"
            status.update("stopped")
            verdict.update(Text(f"✗ no report: {exc} · r runs it again", style="bold red"))
            return
        lines = Text()
        for check in report.checks:
            off = abs(check.error_percent) > PASS_PERCENT
            lines.append(f"{check.phase:<10} predicted {check.predicted_bytes / GiB:8.3f} GiB · measured "
                         f"{check.measured_bytes / GiB:8.3f} GiB · {check.error_percent:+7.2f}%\n",
                         style="dim" if not check.judged else "red" if off else "")
        if report.oom:
            self.outcome = "oom"
            status.update("stopped: out of memory")
            verdict.update(Text(f"✗ does not fit: out of memory at step {report.oom.get('step')} · r runs it again",
                                style="bold red"))
        elif report.error:
            self.outcome = "error"
            status.update("stopped")
            lines.append(f"{report.error}\n", style="red")
            if report.hint:
                lines.append(f"hint: {report.hint}\n", style="dim")
            verdict.update(Text("✗ the run failed · r runs it again", style="bold red"))
        else:
            self.query_one(ProgressBar).update(progress=self.query_one(ProgressBar).total)
            # the verdict judges what the estimate predicts; a check that measures something else (a dry run's
            # allocator replay, the cache of unpacked data: report.not_judged_because) is shown with why
            worst = max((abs(c.error_percent) for c in report.checks if c.judged), default=None)
            unjudged = list(dict.fromkeys(c.not_judged_because for c in report.checks if not c.judged))
            for check in report.checks:
                if not check.judged and abs(check.error_percent) > PASS_PERCENT and worst is not None:
                    lines.append(f"{check.phase} {check.error_percent:+.1f}% is not part of the verdict: "
                                 f"{check.not_judged_because}\n", style="dim")
            status.update("done")
            if worst is None and unjudged:
                # a dry run of a DeepSpeed plan: every number measures the bare step, none the plan
                self.outcome = "not judged"
                lines.append(f"nothing here is judged: {'; '.join(unjudged)}\n", style="dim")
                verdict.update(Text("– not judged (see why above) · r runs it again", style="bold yellow"))
            elif worst is None:
                self.outcome = "error"
                verdict.update(Text("? nothing was measured · r runs it again", style="bold yellow"))
            elif worst <= PASS_PERCENT:
                self.outcome = "passed"
                verdict.update(Text(f"✓ PASS: measured within {worst:.1f}% of the prediction "
                                    f"(limit {PASS_PERCENT:.0f}%) · r runs it again", style="bold green"))
            else:
                self.outcome = "failed"
                verdict.update(Text(f"✗ FAIL: measured {worst:.1f}% away from the prediction "
                                    f"(limit {PASS_PERCENT:.0f}%) · r runs it again", style="bold red"))
        self.query_one("#summary", Static).update(lines)

    def action_cancel(self) -> None:
        if not self.finished:
            self.query_one("#status", Static).update("cancelling ...")
            self._cancel_in_background()

    def action_rerun(self) -> None:
        if self.finished:
            self.launch()

    def action_close(self) -> None:
        if not self.finished:
            self._cancel_in_background()
        self.dismiss()

    def on_unmount(self) -> None:
        if not self.finished:
            self.kill_run()
