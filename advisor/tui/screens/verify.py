"""The Verify screen: a short real run (or the dry run) in a child process, live, next to the prediction."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar, Sparkline, Static

from ...units import GiB


class VerifyScreen(ModalScreen[None]):
    """Live memory per GPU (NVML samples) with the predicted peak and the capacity, step / loss /
    throughput, a cancel key, and the measured-vs-predicted summary at the end."""

    DEFAULT_CSS = """
    VerifyScreen Sparkline { height: 4; margin: 1 0; }
    VerifyScreen .hidden { display: none; }
    """

    BINDINGS = [("c", "cancel", "Cancel run"), ("escape", "close", "Close")]

    class Event(Message):
        def __init__(self, event: dict) -> None:
            super().__init__()
            self.event = event

    def __init__(self, selected, mode: str, steps: int = 10) -> None:
        super().__init__()
        self.selected = selected  # core.Selected: the option to run, with its estimate
        self.arch, self.cfg, self.predicted = selected.arch, selected.cfg, selected.estimate
        self.mode, self.steps = mode, steps
        self.capacity = selected.capacity_bytes
        self.samples: list[float] = []
        self.events: list[dict] = []
        self.run = None
        self.finished = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Verify · {self.arch.name} · {self.selected.label} · {self.mode}", classes="title")
            yield ProgressBar(total=self.steps if self.mode != "dry" else 1, show_eta=False, id="progress")
            # live device memory from NVML (GiB); the dry run has no GPU to sample
            yield Sparkline([0.0], id="memory-chart", classes="hidden" if self.mode == "dry" else "")
            yield Static(self._limits(), id="limits", classes="hint")
            yield Static("starting the worker ...", id="status")
            yield Static("", id="summary")

    def _limits(self) -> str:
        predicted = f"predicted peak {self.predicted.peak_device_bytes / GiB:.2f} GiB"
        capacity = f" · capacity {self.capacity / GiB:.2f} GiB" if self.capacity else ""
        return predicted + capacity + " · c cancels · escape closes"

    def on_mount(self) -> None:
        self.start()

    @work(thread=True, exclusive=True, exit_on_error=False, group="verify")
    def start(self) -> None:
        from ... import core

        self.run = core.start_verify(self.selected, self.mode, self.steps)
        for event in self.run.events():
            self.post_message(self.Event(event))

    def on_verify_screen_event(self, message: Event) -> None:
        event = message.event
        self.events.append(event)
        kind = event["event"]
        status = self.query_one("#status", Static)
        if kind == "sample":
            used = [v for v in event["used_bytes"].values() if v is not None]
            if used:
                self.samples.append(max(used) / GiB)
                self.query_one(Sparkline).data = self.samples[-120:]
        elif kind == "step":
            self.query_one(ProgressBar).advance(1)
            status.update(f"step {event['step']}/{self.steps} · loss {event['loss']:.3f} · "
                          f"{event['tokens_per_s']:,.0f} tokens/s")
        elif kind == "start":
            status.update(f"running in a child process ({event['mode']})")
        elif kind in ("result", "oom", "error", "cancelled"):
            self.finish()

    def finish(self) -> None:
        from ... import core

        self.finished = True
        report = core.verify_report(self.selected, self.mode, self.events)
        self.query_one(ProgressBar).update(progress=self.query_one(ProgressBar).total)
        lines = Text()
        if report.oom:
            lines.append(f"does not fit: out of memory at step {report.oom.get('step')}\n", style="bold red")
        if report.error:
            lines.append(f"{report.error}\n", style="red")
        for check in report.checks:
            lines.append(f"{check.phase:<10} predicted {check.predicted_bytes / GiB:8.3f} GiB · measured "
                         f"{check.measured_bytes / GiB:8.3f} GiB · {check.error_percent:+.2f}%\n")
        self.query_one("#status", Static).update("done" if not report.error else "stopped")
        self.query_one("#summary", Static).update(lines)

    def action_cancel(self) -> None:
        if self.run is not None and not self.finished:
            self.run.cancel()

    def action_close(self) -> None:
        self.action_cancel()
        self.dismiss()
