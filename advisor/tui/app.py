"""`lora-advisor` as an interactive session: GPUs, model and goals, the plan, its memory and its reasons.

The app never computes on the UI thread: NVML detection and planning run in thread workers that post
messages back.  The domain (hardware, models, planner, export) does not know the TUI exists.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Footer, Header, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from .. import core
from ..errors import AdvisorError
from ..hardware.nvml import Detection
from ..units import GiB
from .screens.modals import ErrorModal, ExportModal, HelpModal, RankSweepModal
from .widgets.memory_bar import MemoryBar

GpuBackend = Callable[[], Detection]

# How this front end names a request field in an error (the CLI names its flag).
FIELD_LABELS = {"model": "Model", "gpu": "GPU", "vram": "GPU", "gpus": "GPU count", "seq_len": "Sequence length",
                "effective_batch": "Effective batch", "method": "Method", "prefer": "Preference", "format": "Format",
                "output": "Export path", "option": "Option", "rules": "Rules"}


def nvml_backend() -> Detection:
    return core.detect_gpus()  # closes NVML again: the app holds no handle while idle


def error_text(err: AdvisorError) -> tuple[str, str]:
    """(message, hint) worded for this screen: the field's label, never a command-line flag."""
    label = FIELD_LABELS.get(err.field or "")
    message = f"{label}: {err.message}" if label else err.message
    hint = err.hint
    if err.field == "allow_no_fit":
        hint = "pick an option that fits"
    return message, hint


class AdvisorApp(App):
    """The main screen: inputs on the left, the plan on the right."""

    CSS_PATH = "app.tcss"
    TITLE = "lora-advisor"
    # Start on the plan, where the one-key bindings work; typing goes to an input only once it is focused
    # (g / m, a click, or tab), and escape leaves it again.
    AUTO_FOCUS = "#alternatives"
    BINDINGS = [("r", "rank_sweep", "Rank sweep"), ("e", "export", "Export"), ("v", "verify", "Verify"),
                ("g", "focus_gpu", "GPU"),
                ("m", "focus_model", "Model"), ("question_mark", "help", "Help"), ("q", "quit", "Quit"),
                ("escape", "focus_plan", "Back to the plan")]

    class Detected(Message):
        def __init__(self, detection: Detection) -> None:
            super().__init__()
            self.detection = detection

    class Planned(Message):
        def __init__(self, result: core.PlanResult) -> None:
            super().__init__()
            self.result = result

    class Failed(Message):
        def __init__(self, error: AdvisorError) -> None:
            super().__init__()
            self.error = error

    def __init__(self, gpu_backend: GpuBackend = nvml_backend, request: core.PlanRequest | None = None,
                 export_dir: Path = Path("lora-advisor-export"), host_ram: Callable[[], int | None] | None = None) -> None:
        super().__init__()
        self.gpu_backend = gpu_backend
        self.host_ram = host_ram  # this machine's CPU RAM (for offload rules); None: read it from the OS
        self.request = request or core.PlanRequest(model="llama-3.1-8b")
        self.export_dir = export_dir
        self.detection: Detection | None = None
        self.result: core.PlanResult | None = None  # the latest answer, immutable; rendered, never patched
        self.selected = 0  # the option Export, Verify and the rank sweep act on (0 = the plan's choice)
        self._report = None

    @property
    def report(self):
        """The plan document of the current result (what `plan --json` prints for the same question)."""
        if self.result is None:
            return None
        if self._report is None or self._report[0] is not self.result:
            self._report = (self.result, self.result.report())
        return self._report[1]

    @property
    def hardware(self):
        return self.result.hardware if self.result is not None else None

    # ---- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from ..hardware.catalog import gpu_catalog
        from ..models import catalog_names

        yield Header()
        with VerticalScroll(id="left"):  # scrolls on small terminals (80x24)
            with Vertical(classes="panel", id="hardware"):
                yield Label("Hardware")
                yield Static("detecting GPUs ...", id="hardware-text")
                yield Input(self.request.hardware.gpu or self.request.hardware.vram, id="gpu", placeholder="GPU: 4090, A100-80GB, 2xH100, or 24GiB",
                            suggester=SuggestFromList([g.name for g in gpu_catalog()], case_sensitive=False))
            with Vertical(classes="panel", id="goals"):
                yield Label("Model and goals")
                yield Input(self.request.model, id="model", placeholder="catalog name or path to config.json",
                            suggester=SuggestFromList(catalog_names(), case_sensitive=False))
                yield Input(str(self.request.seq_len), id="seq_len", placeholder="sequence length", type="integer")
                yield Input(str(self.request.effective_batch), id="effective_batch", placeholder="effective batch",
                            type="integer")
                yield Select([(m, m) for m in core.METHOD_CHOICES], value=self.request.method,
                             allow_blank=False, id="method")
                yield Select([(f"prefer {p}", p) for p in core.PREFER_CHOICES], value=self.request.prefer,
                             allow_blank=False, id="prefer")
        with Vertical(id="right"):
            with Vertical(classes="panel", id="plan"):
                yield Label("Plan")
                yield Static("planning ...", id="plan-summary")
                yield MemoryBar(id="memory")
            yield Static("", id="why")
            yield OptionList(id="alternatives")
        yield Footer()

    # NVML is polled off the UI thread; a re-plan follows only when what the plan depends on moved
    POLL_SECONDS = 5.0
    REPLAN_ON_CHANGE_BYTES = 512 * 2**20

    def on_mount(self) -> None:
        self.query_one("#why").border_title = "Why"
        self.query_one("#alternatives").border_title = "Alternatives"
        self.detect()
        self.set_interval(self.POLL_SECONDS, self.detect)

    # ---- workers -----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="nvml")
    def detect(self) -> None:
        self.post_message(self.Detected(self.gpu_backend()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def replan(self) -> None:
        """Ask the core; the answer comes back as a message (this thread writes nothing of the app's)."""
        request, detection = self.request, self.detection
        try:
            result = core.plan(request, detect=lambda: detection, host_ram=self.host_ram)
        except AdvisorError as err:
            self.post_message(self.Failed(err))
            return
        self.post_message(self.Planned(result))

    # ---- messages ----------------------------------------------------------------------------------
    def on_advisor_app_detected(self, message: Detected) -> None:
        previous, self.detection = self.detection, message.detection
        self.query_one("#hardware-text", Static).update(hardware_text(message.detection))
        if previous is None or _moved(previous, message.detection, self.REPLAN_ON_CHANGE_BYTES):
            self.replan()

    def on_advisor_app_planned(self, message: Planned) -> None:
        self.result = message.result
        self.selected = 0
        self.show_plan()

    def on_advisor_app_failed(self, message: Failed) -> None:
        # no stale answer: the panels say there is no plan for what was asked
        self.result, self.selected = None, 0
        text, hint = error_text(message.error)
        self.query_one("#plan-summary", Static).update(Text(f"no plan: {text}", style="red"))
        self.query_one(MemoryBar).show(None, None)
        self.query_one("#why", Static).update("")
        self.query_one("#alternatives", OptionList).clear_options()
        self.push_screen(ErrorModal(text, hint))

    # only the main screen's fields: a dialog's own inputs (the export path and format) must not re-plan
    @on(Input.Submitted, "#model, #gpu, #seq_len, #effective_batch")
    @on(Select.Changed, "#method, #prefer")
    def form_changed(self, event) -> None:
        if self.detection is None:  # still starting: the first plan follows detection
            return
        try:
            seq_len = int(self.query_one("#seq_len", Input).value or self.request.seq_len)
            batch = int(self.query_one("#effective_batch", Input).value or self.request.effective_batch)
        except ValueError:
            return
        gpu = self.query_one("#gpu", Input).value.strip()
        self.request = replace(self.request, model=self.query_one("#model", Input).value.strip() or self.request.model,
                               hardware=core.GpuRequest(gpu=gpu, gpus=None), seq_len=seq_len, effective_batch=batch,
                               method=str(self.query_one("#method", Select).value),
                               prefer=str(self.query_one("#prefer", Select).value))
        self.query_one("#plan-summary", Static).update("planning ...")
        self.replan()

    @on(OptionList.OptionHighlighted, "#alternatives")
    def alternative_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.result is None or event.option_id is None:
            return
        kind, _, index = event.option_id.partition(":")
        capacity = self.hardware.usable_bytes if self.hardware else None
        try:
            if kind == "rejected":  # an option that lost: its memory against the card, and why
                rejection = self.result.plan.rejected[int(index)]
                self.query_one(MemoryBar).show(self.result.rejected(int(index)).estimate, capacity)
                self.query_one("#plan-summary", Static).update(
                    Text(f"✗ {rejection.option}\n{rejection.reason}", style="bold red"))
                return
            self.selected = int(index)
            chosen = self.result.select(self.selected)
        except AdvisorError as err:
            self.push_screen(ErrorModal(*error_text(err)))
            return
        self.query_one(MemoryBar).show(chosen.estimate, capacity)
        self.query_one("#plan-summary", Static).update(describe(self.result.option(self.selected), chosen.estimate,
                                                                self.selected))

    # ---- rendering -----------------------------------------------------------------------------------
    def show_plan(self) -> None:
        plan = self.result.plan
        summary = self.query_one("#plan-summary", Static)
        capacity = self.hardware.usable_bytes if self.hardware else None
        alternatives = self.query_one("#alternatives", OptionList)
        alternatives.clear_options()
        if plan.chosen is None:
            summary.update(Text(f"nothing fits: the smallest candidate needs {plan.smallest_need_bytes / GiB:.1f} GiB",
                                style="bold red"))
            self.query_one(MemoryBar).show(None, capacity)
            # what would make it fit is the answer: it goes first, the misses that led to it after
            self.query_one("#why", Static).update("\n".join(
                [f"→ {w}" for w in plan.what_would_fit] + [f"✗ {r.option}: {r.reason}" for r in plan.rejected]))
            return
        summary.update(describe(plan.chosen, plan.estimate, 0))
        self.query_one(MemoryBar).show(plan.estimate, capacity)
        lines = [f"✓ {r}" for r in plan.chosen.reasons]
        lines += [f"✓ {sentence}" for sentence in self.result.settled()]
        lines += [f"✗ {r.option}: {r.reason}" for r in plan.rejected]
        lines += [f"! {w}" for w in plan.warnings]
        self.query_one("#why", Static).update("\n".join(lines))
        alternatives.add_option(Option(f"▶ {short(plan.chosen)}", id="option:0"))
        for index, alt in enumerate(plan.alternatives, start=1):
            alternatives.add_option(Option(f"{index} {short(alt)}", id=f"option:{index}"))
        for index, rejection in enumerate(plan.rejected):
            need = f"  {rejection.need_bytes / GiB:.1f} GiB" if rejection.need_bytes else ""
            alternatives.add_option(Option(Text(f"✗ {rejection.option}{need}", style="red"), id=f"rejected:{index}"))

    # ---- actions -----------------------------------------------------------------------------------
    def action_help(self) -> None:
        self.push_screen(HelpModal())

    def action_focus_gpu(self) -> None:
        self.query_one("#gpu", Input).focus()

    def action_focus_model(self) -> None:
        self.query_one("#model", Input).focus()

    def action_focus_plan(self) -> None:
        self.query_one("#alternatives", OptionList).focus()

    def _selected(self) -> core.Selected | None:
        """The option Export, Verify and the rank sweep act on: the highlighted one (the plan's choice by default)."""
        if self.result is None or self.result.plan.chosen is None:
            self.push_screen(ErrorModal("there is no plan yet", "pick a model and a GPU that fit"))
            return None
        try:
            return self.result.select(self.selected)
        except AdvisorError as err:
            self.push_screen(ErrorModal(*error_text(err)))
            return None

    def action_rank_sweep(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        try:
            rows = core.rank_sweep(selected)
        except AdvisorError as err:
            self.push_screen(ErrorModal(*error_text(err)))
            return
        self.push_screen(RankSweepModal([(r.rank, r.trainable_params, r.adapter_state_bytes, r.peak_device_bytes)
                                         for r in rows], f"rank sweep · {selected.arch.name} · {selected.label}"))

    def action_verify(self) -> None:
        """A short real run of the selected option on the detected GPU, or the dry run (fake tensors) without one."""
        selected = self._selected()
        if selected is None:
            return
        from .screens.verify import VerifyScreen

        # a real run only on this machine's own GPUs; a named card is somewhere else: trace it instead
        mode = "cuda" if self.result.hardware_source == "detected" else "dry"
        self.push_screen(VerifyScreen(selected, mode))

    def action_export(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        self.push_screen(ExportModal(self.export_dir, lambda fmt, directory: self._would_write(selected, fmt, directory),
                                     core.EXPORT_FORMATS),
                         lambda choice: self._export(selected, choice))

    @staticmethod
    def _would_write(selected: core.Selected, fmt: str, directory: Path) -> list[Path]:
        try:
            files, _, _ = core.render_export(selected, (fmt,), allow_no_fit=True)
        except AdvisorError:
            return []
        return [directory / name for name in files]

    def _export(self, selected: core.Selected, choice) -> None:
        if choice is None:
            return
        fmt, directory, force = choice
        try:
            outcome = core.export(selected, (fmt,), directory, force)
        except AdvisorError as err:
            self.push_screen(ErrorModal(*error_text(err)))
            return
        skipped = "".join(f"\nskipped {name}: {why}" for name, why in outcome.skipped.items())
        self.notify("wrote " + ", ".join(str(p) for p in outcome.written) + skipped, title=f"Export · {selected.label}")


def _moved(before: Detection, after: Detection, threshold: int) -> bool:
    """GPUs appeared or left, or memory held by other processes moved by more than ``threshold``."""
    if [g.uuid for g in before.gpus] != [g.uuid for g in after.gpus]:
        return True
    return any(abs((a.used_bytes or 0) - (b.used_bytes or 0)) > threshold for a, b in zip(before.gpus, after.gpus))


def describe(option, est=None, index: int | None = None) -> Text:
    cfg = option.config
    text = Text()
    which = "" if index is None else ("▶ " if index == 0 else f"option {index} · ")
    text.append(which + short(option), style="bold")
    text.append(f"\nmicro batch {cfg.micro_batch} x accumulation {option.grad_accum} · {cfg.optimizer} · "
                f"{cfg.precision} · attention {cfg.attn}\n~{option.tokens_per_s:,.0f} tokens/s estimated")
    if est is not None:
        ph = est.phases
        low, high = est.peak_device_range_bytes
        text.append(f" · fwd {ph.forward / GiB:.1f} · bwd {ph.backward / GiB:.1f} · opt {ph.optimizer / GiB:.1f} GiB",
                    style="dim")
        verdict = {"fits": "fits", "tight": "TIGHT", "does_not_fit": "does not fit"}.get(est.fit or "", "")
        text.append(f"\ndevice {est.peak_device_bytes / GiB:.1f} GiB, range {low / GiB:.1f}-{high / GiB:.1f} GiB"
                    + (f" · {verdict}" if verdict else ""), style="bold red" if est.fit == "tight" else "")
    return text


def short(option) -> str:
    return core.option_label(option.config) + f"  {option.need_bytes / GiB:.1f} GiB"


def hardware_text(detection: Detection) -> Text:
    if not detection.gpus:
        text = Text(f"{detection.reason}\n", style="yellow")
        text.append("type a catalog GPU or a size below", style="dim")
        return text
    text = Text()
    for gpu in detection.gpus:
        used = (gpu.used_bytes or 0) / GiB
        total = (gpu.total_bytes or 0) / GiB
        cells = 20
        filled = round(cells * used / total) if total else 0
        text.append(f"{gpu.index}: {gpu.name}\n", style="bold")
        text.append("█" * filled, style="red")
        text.append("░" * (cells - filled), style="green")
        text.append(f" {used:.1f}/{total:.1f} GiB used\n")
    return text
