"""`lora-advisor` as an interactive session: GPUs, model and goals, the plan, its memory and its reasons.

The app never computes on the UI thread: NVML detection and planning run in thread workers that post
messages back.  The domain (hardware, models, planner, export) does not know the TUI exists.
"""

from __future__ import annotations

from dataclasses import dataclass
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

from ..errors import AdvisorError
from ..hardware.nvml import Detection
from ..units import GiB
from .screens.modals import ErrorModal, ExportModal, HelpModal, RankSweepModal
from .widgets.memory_bar import MemoryBar

GpuBackend = Callable[[], Detection]


def nvml_backend() -> Detection:
    from ..hardware.nvml import Nvml

    with Nvml() as nvml:  # closes NVML again: the app holds no handle while idle
        return nvml.detect()


@dataclass
class Form:
    model: str = "llama-3.1-8b"
    gpu: str = ""
    seq_len: int = 2048
    effective_batch: int = 16
    method: str = "auto"
    prefer: str = "speed"


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
        def __init__(self, report) -> None:
            super().__init__()
            self.report = report

    class Failed(Message):
        def __init__(self, error: AdvisorError) -> None:
            super().__init__()
            self.error = error

    def __init__(self, gpu_backend: GpuBackend = nvml_backend, form: Form | None = None,
                 export_dir: Path = Path("lora-advisor-export"), host_ram: Callable[[], int | None] | None = None) -> None:
        super().__init__()
        self.gpu_backend = gpu_backend
        self.host_ram = host_ram  # this machine's CPU RAM (for offload rules); None: read it from the OS
        self.form = form or Form()
        self.export_dir = export_dir
        self.detection: Detection | None = None
        self.report = None  # the latest PlanReport
        self.hardware = None
        self.calibrations: dict = {}  # {method: CalibrationPoint} for the planned card

    # ---- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from ..hardware.catalog import gpu_catalog
        from ..models import catalog_names

        yield Header()
        with VerticalScroll(id="left"):  # scrolls on small terminals (80x24)
            with Vertical(classes="panel", id="hardware"):
                yield Label("Hardware")
                yield Static("detecting GPUs ...", id="hardware-text")
                yield Input(self.form.gpu, id="gpu", placeholder="GPU: 4090, A100-80GB, 2xH100, or 24GiB",
                            suggester=SuggestFromList([g.name for g in gpu_catalog()], case_sensitive=False))
            with Vertical(classes="panel", id="goals"):
                yield Label("Model and goals")
                yield Input(self.form.model, id="model", placeholder="catalog name or path to config.json",
                            suggester=SuggestFromList(catalog_names(), case_sensitive=False))
                yield Input(str(self.form.seq_len), id="seq_len", placeholder="sequence length", type="integer")
                yield Input(str(self.form.effective_batch), id="effective_batch", placeholder="effective batch",
                            type="integer")
                yield Select([(m, m) for m in ("auto", "full", "lora", "qlora")], value=self.form.method,
                             allow_blank=False, id="method")
                yield Select([("prefer speed", "speed"), ("prefer quality", "quality")], value=self.form.prefer,
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
        try:
            self.post_message(self.Planned(self._plan()))
        except AdvisorError as err:
            self.post_message(self.Failed(err))

    def _plan(self):
        from ..engine.rules import cached_default_rules
        from ..hardware import hardware_for
        from ..models import resolve_model
        from ..planner import Goals, make_plan
        from ..report import PlanReport

        form = self.form
        gpu, vram = (form.gpu, None)
        if form.gpu and form.gpu.strip()[-1:].lower() in ("b",) and any(c.isdigit() for c in form.gpu):
            gpu, vram = None, form.gpu  # "24GiB", "80GB": a custom card
        hardware = hardware_for(gpu or None, vram, None, None if (gpu or vram) else self.detection)
        self.hardware = hardware
        arch = resolve_model(form.model)
        goals = Goals(seq_len=form.seq_len, effective_batch=form.effective_batch, method=form.method,
                      prefer=form.prefer, gpus=hardware.count if hardware else 1)
        self.calibrations = {}
        if hardware is not None:  # what real runs on this card measured, as the CLI applies it
            from ..verify.calibration import points_by_method

            self.calibrations = points_by_method(hardware.name, arch.model_type)[0]
        from ..hardware import host_ram_bytes

        # the detected GPUs are this machine's, a named card may sit in another one
        host_ram = None if (gpu or vram) else (self.host_ram or host_ram_bytes)()
        plan = make_plan(arch, hardware, goals, list(cached_default_rules()), calibrations=self.calibrations,
                         host_ram_bytes=host_ram)
        return PlanReport.build(arch, hardware, goals, plan)

    # ---- messages ----------------------------------------------------------------------------------
    def on_advisor_app_detected(self, message: Detected) -> None:
        previous, self.detection = self.detection, message.detection
        self.query_one("#hardware-text", Static).update(hardware_text(message.detection))
        if previous is None or _moved(previous, message.detection, self.REPLAN_ON_CHANGE_BYTES):
            self.replan()

    def on_advisor_app_planned(self, message: Planned) -> None:
        self.report = message.report
        self.show_plan()

    def on_advisor_app_failed(self, message: Failed) -> None:
        self.query_one("#plan-summary", Static).update(Text(f"no plan: {message.error.message}", style="red"))
        self.push_screen(ErrorModal(message.error.message, message.error.hint))

    @on(Input.Submitted)
    @on(Select.Changed)
    def form_changed(self, event) -> None:
        if self.detection is None:  # still starting: the first plan follows detection
            return
        form = self.form
        try:
            form.model = self.query_one("#model", Input).value.strip() or form.model
            form.gpu = self.query_one("#gpu", Input).value.strip()
            form.seq_len = int(self.query_one("#seq_len", Input).value or form.seq_len)
            form.effective_batch = int(self.query_one("#effective_batch", Input).value or form.effective_batch)
        except ValueError:
            return
        form.method = str(self.query_one("#method", Select).value)
        form.prefer = str(self.query_one("#prefer", Select).value)
        self.query_one("#plan-summary", Static).update("planning ...")
        self.replan()

    @on(OptionList.OptionHighlighted, "#alternatives")
    def alternative_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.report is None or event.option_id is None:
            return
        from ..memory import estimate
        from ..models import resolve_model

        plan = self.report.plan
        kind, _, index = event.option_id.partition(":")
        capacity = self.hardware.usable_bytes if self.hardware else None
        if kind == "rejected":  # an option that lost: its memory against the card, and why
            rejection = plan.rejected[int(index)]
            est = estimate(resolve_model(self.form.model), rejection.config, self.hardware,
                           calibration=self.calibrations.get(rejection.config.method))
            self.query_one(MemoryBar).show(est, capacity)
            self.query_one("#plan-summary", Static).update(
                Text(f"✗ {rejection.option}\n{rejection.reason}", style="bold red"))
            return
        option = plan.chosen if kind == "chosen" else plan.alternatives[int(index)]
        est = estimate(resolve_model(self.form.model), option.config, self.hardware,
                       calibration=self.calibrations.get(option.config.method))
        self.query_one(MemoryBar).show(est, capacity)
        self.query_one("#plan-summary", Static).update(describe(option, est))

    # ---- rendering -----------------------------------------------------------------------------------
    def show_plan(self) -> None:
        plan = self.report.plan
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
        summary.update(describe(plan.chosen, plan.estimate))
        self.query_one(MemoryBar).show(plan.estimate, capacity)
        lines = [f"✓ {r}" for r in plan.chosen.reasons]
        from ..planner import settled_for

        lines += [f"✓ {sentence}" for sentence in settled_for(plan)]
        lines += [f"✗ {r.option}: {r.reason}" for r in plan.rejected]
        lines += [f"! {w}" for w in plan.warnings]
        self.query_one("#why", Static).update("\n".join(lines))
        alternatives.add_option(Option(f"▶ {short(plan.chosen)}", id="chosen"))
        for index, alt in enumerate(plan.alternatives):
            alternatives.add_option(Option(f"  {short(alt)}", id=f"alt:{index}"))
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

    def action_rank_sweep(self) -> None:
        if self.report is None or self.report.plan.chosen is None:
            return
        from ..memory import estimate
        from ..models import resolve_model

        cfg = self.report.plan.chosen.config
        if cfg.method == "full":
            self.push_screen(ErrorModal("the chosen plan is full fine-tuning: it has no rank",
                                        "set the method to lora or qlora"))
            return
        arch = resolve_model(self.form.model)
        rows = []
        for rank in (4, 8, 16, 32, 64, 128):
            est = estimate(arch, cfg.model_copy(update={"rank": rank}), self.hardware,
                           calibration=self.calibrations.get(cfg.method))
            state = sum(est.component(n).bytes for n in ("adapters", "gradients", "optimizer_states"))
            rows.append((rank, est.trainable_params, state, est.peak_device_bytes))
        self.push_screen(RankSweepModal(rows, f"rank sweep · {arch.name} · {short(self.report.plan.chosen)}"))

    def action_verify(self) -> None:
        """A short real run on the detected GPU, or the dry run (fake tensors) without one."""
        if self.report is None or self.report.plan.chosen is None:
            self.push_screen(ErrorModal("there is no plan to verify yet", "pick a model and a GPU that fit"))
            return
        from ..models import resolve_model
        from .screens.verify import VerifyScreen

        mode = "cuda" if self.detection is not None and self.detection.gpus and not self.form.gpu else "dry"
        self.push_screen(VerifyScreen(resolve_model(self.form.model), self.report.plan.chosen.config,
                                      self.report.plan.estimate, mode,
                                      capacity=self.hardware.usable_bytes if self.hardware else None))

    def action_export(self) -> None:
        if self.report is None or self.report.plan.chosen is None:
            self.push_screen(ErrorModal("there is no plan to export yet", "pick a model and a GPU that fit"))
            return
        self.push_screen(ExportModal(self.export_dir, self._would_write), self._export)

    def _export_context(self):
        from ..export import ExportContext
        from ..models import resolve_model
        from ..models.catalog import hub_id_for

        arch = resolve_model(self.form.model)
        return ExportContext(arch=arch, cfg=self.report.plan.chosen.config, estimate=self.report.plan.estimate,
                             model_id=hub_id_for(arch.name), effective_batch=self.form.effective_batch,
                             gpu_name=self.hardware.name if self.hardware else "unknown GPU")

    def _would_write(self, fmt: str, directory: Path) -> list[Path]:
        from ..export import render_all

        try:
            return [directory / name for name in render_all(self._export_context(), [fmt])]
        except AdvisorError:
            return []

    def _export(self, choice) -> None:
        if choice is None:
            return
        from ..export import render_all
        from ..export.writer import write_files

        fmt, directory, force = choice
        try:
            written = write_files(render_all(self._export_context(), [fmt]), directory, force)
        except AdvisorError as err:
            self.push_screen(ErrorModal(err.message, err.hint))
            return
        self.notify("wrote " + ", ".join(str(p) for p in written), title="Export")


def _moved(before: Detection, after: Detection, threshold: int) -> bool:
    """GPUs appeared or left, or memory held by other processes moved by more than ``threshold``."""
    if [g.uuid for g in before.gpus] != [g.uuid for g in after.gpus]:
        return True
    return any(abs((a.used_bytes or 0) - (b.used_bytes or 0)) > threshold for a, b in zip(before.gpus, after.gpus))


def describe(option, est=None) -> Text:
    cfg = option.config
    text = Text()
    text.append(short(option), style="bold")
    text.append(f"\nmicro batch {cfg.micro_batch} x accumulation {option.grad_accum} · {cfg.optimizer} · "
                f"{cfg.precision} · attention {cfg.attn}\n~{option.tokens_per_s:,.0f} tokens/s estimated")
    if est is not None:
        ph = est.phases
        text.append(f" · fwd {ph.forward / GiB:.1f} · bwd {ph.backward / GiB:.1f} · opt {ph.optimizer / GiB:.1f} GiB",
                    style="dim")
    return text


def short(option) -> str:
    cfg = option.config
    method = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA", "lora8bit": "LoRA 8-bit"}[cfg.method]
    rank = f" r{cfg.rank}" if cfg.uses_adapters else ""
    parts = [f"{method}{rank}", "ckpt" if cfg.grad_ckpt else "no ckpt", f"bs {cfg.micro_batch}"]
    if cfg.sharding not in ("single",):
        parts.append(cfg.sharding)
    if cfg.offload != "none":
        parts.append(f"offload {cfg.offload}")
    if cfg.optimizer != "adamw":  # what else tells two options of the same method and rank apart
        parts.append({"adamw_8bit": "8-bit Adam", "paged_adamw_8bit": "paged 8-bit Adam"}.get(cfg.optimizer, cfg.optimizer))
    if cfg.loss == "chunked":
        parts.append("chunked CE")
    return " · ".join(parts) + f"  {option.need_bytes / GiB:.1f} GiB"


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
