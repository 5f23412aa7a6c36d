"""`lora-advisor` as an interactive session: GPUs, model and goals, the plan, its memory and its reasons.

The app holds one immutable answer of the core (``self.result``) and renders it.  Nothing is computed on the
UI thread: NVML detection and planning (which may look a model up on the Hub) run in thread workers that
return their answer as a message tagged with the request it answers; an answer to a superseded or cancelled
request is dropped.  The domain (hardware, models, planner, export) does not know the TUI exists.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
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
from .words import FIELD_INPUT, FIELD_LABELS, card_text, config_words, error_text, rejection_words

__all__ = ["AdvisorApp", "FIELD_LABELS", "error_text", "make_request"]

GpuBackend = Callable[[], Detection]
# the data's batch lengths (memory/config.py Lengths), in the words of the form
BATCH_CHOICES = [("packed/padded", "fixed"), ("unpacked", "variable")]

# the actions of the main screen: off (and out of the footer) while a dialog is in front
MAIN_ACTIONS = {"rank_sweep", "export", "verify", "focus_gpu", "focus_model", "focus_plan", "help", "cancel_plan"}


def nvml_backend() -> Detection:
    return core.detect_gpus()  # closes NVML again: the app holds no handle while idle


class FormError(AdvisorError):
    """A field the app cannot even read (an empty number): worded like the core's errors."""


def make_request(base: core.PlanRequest, fields: dict[str, str]) -> core.PlanRequest:
    """The request the form's texts describe; a number that is not one is refused with its field.  Whether a
    number is allowed (at least 1) is the core's to say, so the app and the CLI refuse the same values."""
    numbers = {}
    for name in ("seq_len", "effective_batch"):
        text = fields[name].strip()
        try:
            numbers[name] = int(text)
        except ValueError:
            raise FormError(f"{text!r} is not a whole number" if text else "empty", "give a positive whole number",
                            field=name, value=text) from None
    model = fields["model"].strip()
    if not model:
        raise FormError("empty", "a catalog name (llama-3.1-8b), a hub id (org/name) or a path to config.json",
                        field="model", value="")
    return replace(base, model=model, hardware=core.GpuRequest(gpu=fields["gpu"].strip()), seq_len=numbers["seq_len"],
                   effective_batch=numbers["effective_batch"], method=fields["method"], prefer=fields["prefer"],
                   lengths=fields.get("lengths", base.lengths))


def looks_like_hub_id(spec: str) -> bool:
    return "/" in spec and not spec.endswith(".json") and not Path(spec).expanduser().exists()


class AdvisorApp(App):
    """The main screen: inputs on the left, the plan on the right."""

    CSS_PATH = "app.tcss"
    TITLE = "lora-advisor"
    # Start on the plan, where the one-key bindings work; typing goes to an input only once it is focused
    # (g / m, a click, or tab), and escape leaves it again.
    AUTO_FOCUS = "#alternatives"
    BINDINGS = [("r", "rank_sweep", "Rank sweep"), ("e", "export", "Export"), ("v", "verify", "Verify"),
                ("g", "focus_gpu", "GPU"), ("m", "focus_model", "Model"),
                Binding("c", "cancel_plan", "Cancel look-up", show=False),
                ("question_mark", "help", "Help"), ("q", "quit", "Quit"),
                ("escape", "focus_plan", "Back to the plan")]

    class Detected(Message):
        def __init__(self, detection: Detection) -> None:
            super().__init__()
            self.detection = detection

    class Planned(Message):
        def __init__(self, result: core.PlanResult, ticket: int) -> None:
            super().__init__()
            self.result, self.ticket = result, ticket

    class NeedsGpu(Message):
        """The model resolved, but there is no card to plan for: none detected and none typed."""

        def __init__(self, arch, ticket: int) -> None:
            super().__init__()
            self.arch, self.ticket = arch, ticket

    class Failed(Message):
        def __init__(self, error: AdvisorError, ticket: int) -> None:
            super().__init__()
            self.error, self.ticket = error, ticket

    def __init__(self, gpu_backend: GpuBackend = nvml_backend, request: core.PlanRequest | None = None,
                 export_dir: Path = Path("lora-advisor-export"), host_ram: Callable[[], int | None] | None = None,
                 verify_start: Callable | None = None) -> None:
        super().__init__()
        self.gpu_backend = gpu_backend
        self.host_ram = host_ram  # this machine's CPU RAM (for offload rules); None: read it from the OS
        self.request = request or core.PlanRequest(model="llama-3.1-8b")
        self.export_dir = export_dir
        self.verify_start = verify_start  # core.start_verify unless a test scripts the child
        self.detection: Detection | None = None
        self.result: core.PlanResult | None = None  # the latest answer, immutable; rendered, never patched
        self.selected = 0  # the option adopted (Enter): Export, Verify and the rank sweep act on it (0 = the choice)
        self.previewed: str | None = None  # the list row shown in the panels ("option:N" / "rejected:N")
        self.state = "starting"  # starting, planning, planned, needs_gpu, failed, cancelled
        self.error: AdvisorError | None = None  # what the last question failed with
        self.compact = False  # a small terminal: shorter plan summary and legend
        self._ticket = 0  # the request the panels wait for; answers to older ones are dropped
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
    def main(self):
        """The main screen, also while a dialog is in front (``App.query_one`` searches the front screen)."""
        return self.screen_stack[0]

    @property
    def hardware(self):
        return self.result.hardware if self.result is not None else None

    # ---- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from ..hardware.catalog import gpu_catalog
        from ..models import catalog_names

        req = self.request
        yield Header()
        with VerticalScroll(id="left"):  # scrolls on small terminals (80x24)
            with Vertical(classes="panel", id="hardware"):
                yield Label("Hardware", classes="panel-title")
                yield Static("detecting GPUs ...", id="hardware-text")
                yield Label("GPU: card, 2xH100, 24GiB", classes="field")
                yield Input(req.hardware.gpu or req.hardware.vram, id="gpu", compact=True,
                            placeholder="4090, A100-80GB, 24GiB",
                            suggester=SuggestFromList([g.name for g in gpu_catalog()], case_sensitive=False))
                yield Static("", id="gpu-error", classes="field-error")
            with Vertical(classes="panel", id="goals"):
                yield Label("Model and goals (Enter)", classes="panel-title")
                yield Label("Model", classes="field")
                yield Input(req.model, id="model", compact=True, placeholder="catalog name, org/name, config.json",
                            suggester=SuggestFromList(catalog_names(), case_sensitive=False))
                yield Static("", id="model-error", classes="field-error")
                yield Label("Sequence length, tokens", classes="field")
                yield Input(str(req.seq_len), id="seq_len", compact=True, placeholder="tokens, e.g. 2048",
                            restrict=r"-?[0-9]*")
                yield Static("", id="seq_len-error", classes="field-error")
                yield Label("Effective batch (seqs)", classes="field")
                yield Input(str(req.effective_batch), id="effective_batch", compact=True,
                            placeholder="sequences, e.g. 16", restrict=r"-?[0-9]*")
                yield Static("", id="effective_batch-error", classes="field-error")
                yield Label("Method", classes="field")
                yield Select([(m, m) for m in core.METHOD_CHOICES], value=req.method, allow_blank=False, id="method",
                             compact=True)
                yield Static("", id="method-error", classes="field-error")
                yield Label("Prefer", classes="field")
                yield Select([(p, p) for p in core.PREFER_CHOICES], value=req.prefer, allow_blank=False, id="prefer",
                             compact=True)
                yield Static("", id="prefer-error", classes="field-error")
                yield Label("Batches", classes="field")
                yield Select(BATCH_CHOICES, value=req.lengths, allow_blank=False, id="lengths", compact=True)
                yield Static("", id="lengths-error", classes="field-error")
        with Vertical(id="right"):
            with Vertical(classes="panel", id="plan"):
                yield Static("detecting GPUs ...", id="plan-summary")
                yield MemoryBar(id="memory")
            with VerticalScroll(id="why"):
                yield Static("", id="why-text")
            yield OptionList(id="alternatives")
        yield Footer()

    # NVML is polled off the UI thread; a re-plan follows only when what the plan depends on moved
    POLL_SECONDS = 5.0
    REPLAN_ON_CHANGE_BYTES = 512 * 2**20

    TEXT_FIELDS = ("model", "gpu", "seq_len", "effective_batch")

    def on_mount(self) -> None:
        self._remember_fields()
        self.main.query_one("#plan").border_title = "Plan"
        self.main.query_one("#why").border_title = "Why"
        self.main.query_one("#alternatives").border_title = "Alternatives · Enter adopts"
        self.detect()
        self.set_interval(self.POLL_SECONDS, self.detect)

    def on_resize(self, event) -> None:
        self.compact = event.size.width < 100 or event.size.height < 30
        self.screen_stack[0].set_class(event.size.width < 100, "narrow")
        self.screen_stack[0].set_class(event.size.height < 30, "short")
        self.main.query_one(MemoryBar).short_legend = self.compact
        if self.previewed is not None and self.result is not None and self.state == "planned":
            self.preview(self.previewed)

    def check_action(self, action: str, parameters) -> bool | None:
        """The main screen's keys work only while it is in front (a dialog has its own)."""
        if action in MAIN_ACTIONS and len(self.screen_stack) > 1:
            return False
        if action == "cancel_plan" and self.state != "planning":
            return False
        return True

    # ---- workers -----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="nvml")
    def detect(self) -> None:
        try:
            detection = self.gpu_backend()
        except Exception as exc:  # a backend that breaks is "no GPU", with the reason
            detection = Detection(reason=f"GPU detection failed: {exc}", hint="type a GPU below")
        self.post_message(self.Detected(detection))

    def ask(self) -> None:
        """Ask the core about ``self.request``: the panels say a plan is on its way until it answers."""
        self._ticket += 1
        self.state, self.error = "planning", None
        self._clear_field_errors()
        model = self.request.model
        doing = (f"looking up {model} on the Hugging Face Hub ... (c cancels)" if looks_like_hub_id(model)
                 else f"planning {model} ...")
        self.main.query_one("#plan-summary", Static).update(Text(doing, style="bold yellow"))
        self.main.query_one("#right").add_class("stale")
        self.refresh_bindings()
        self.replan(self.request, self.detection, self._ticket)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def replan(self, request: core.PlanRequest, detection: Detection | None, ticket: int) -> None:
        """Ask the core; the answer comes back as a message (this thread writes nothing of the app's)."""
        try:
            hardware, _, _ = core.resolve_hardware(request.hardware, detect=lambda: detection)
            if hardware is None:  # no card to fit into: check the model, then ask for one
                self.post_message(self.NeedsGpu(core.resolve_model(request.model), ticket))
                return
            result = core.plan(request, detect=lambda: detection, host_ram=self.host_ram)
        except AdvisorError as err:
            self.post_message(self.Failed(err, ticket))
            return
        except Exception as exc:  # never a traceback, never "planning ..." forever
            self.post_message(self.Failed(AdvisorError(f"internal error: {type(exc).__name__}: {exc}",
                                                       "please report this"), ticket))
            return
        self.post_message(self.Planned(result, ticket))

    # ---- messages ----------------------------------------------------------------------------------
    def on_advisor_app_detected(self, message: Detected) -> None:
        previous, self.detection = self.detection, message.detection
        self._show_hardware()
        if previous is None or _moved(previous, message.detection, self.REPLAN_ON_CHANGE_BYTES):
            self.ask()

    def on_advisor_app_planned(self, message: Planned) -> None:
        if message.ticket != self._ticket:
            return  # answers a question that was replaced or cancelled
        self.result, self.selected, self.state = message.result, 0, "planned"
        self.main.query_one("#right").remove_class("stale")
        self._show_hardware()
        self.show_plan()
        self.refresh_bindings()

    def on_advisor_app_needs_gpu(self, message: NeedsGpu) -> None:
        if message.ticket != self._ticket:
            return
        self.result, self.selected, self.state = None, 0, "needs_gpu"
        self._clear_panels()
        reason = (self.detection.reason if self.detection is not None else None) or "no GPU detected"
        text = Text("Which GPU is this plan for?\n", style="bold yellow")
        text.append(f"{reason}, and no GPU typed. Type a card (4090, A100-80GB, 2xH100) or a memory size (24GiB) "
                    f"in the GPU field and press Enter.\n")
        from ..models.params import count_params

        text.append(f"{message.arch.name}: {count_params(message.arch).total / 1e9:.1f} B parameters", style="dim")
        self.main.query_one("#plan-summary", Static).update(text)
        self._field_error("gpu", Text("needed: type a card or a size", style="yellow"))
        self.main.query_one("#gpu", Input).focus()
        self.refresh_bindings()

    def on_advisor_app_failed(self, message: Failed) -> None:
        if message.ticket != self._ticket:
            return
        self.fail(message.error)

    def fail(self, err: AdvisorError) -> None:
        """No stale answer: the panels are cleared, the error sits next to its field and in the plan panel."""
        self.result, self.selected, self.state, self.error = None, 0, "failed", err
        self._clear_panels()
        text, hint = error_text(err)
        summary = Text(f"no plan: {text}", style="bold red")
        if hint:
            summary.append(f"\nhint: {hint}", style="dim")
        self.main.query_one("#plan-summary", Static).update(summary)
        where = FIELD_INPUT.get(err.field or "")
        if where is not None:
            self._field_error(where, Text(f"✗ {err.message}" + (f" ({hint})" if hint else ""), style="red"))
        self.refresh_bindings()

    # ---- the form ------------------------------------------------------------------------------------
    # only the main screen's fields: a dialog's own inputs (the export path and format) must not re-plan
    @on(Input.Submitted, "#model, #gpu, #seq_len, #effective_batch")
    @on(Select.Changed, "#method, #prefer, #lengths")
    def form_changed(self, event) -> None:
        if self.detection is None:  # still starting: the first plan follows detection
            return
        self._remember_fields()
        fields = dict(self.submitted)
        fields.update({name: str(self.main.query_one(f"#{name}", Select).value)
                       for name in ("method", "prefer", "lengths")})
        try:
            request = make_request(self.request, fields)
        except FormError as err:
            self._ticket += 1  # whatever was on its way answers a question no longer asked
            self.fail(err)
            return
        self.request = request
        self.ask()
        if isinstance(event, Input.Submitted):  # the answer is on the right: the one-key commands work again
            self.action_focus_plan()

    def _field_error(self, name: str, text: Text | str) -> None:
        widget = self.main.query_one(f"#{name}-error", Static)
        widget.update(text)
        widget.set_class(bool(str(text)), "shown")

    def _clear_field_errors(self) -> None:
        for widget in self.main.query(".field-error"):
            widget.update("")
            widget.remove_class("shown")

    def _clear_panels(self) -> None:
        self.previewed = None
        self.main.query_one("#right").remove_class("stale")
        self.main.query_one(MemoryBar).show(None, None)
        self.main.query_one("#why-text", Static).update("")
        self.main.query_one("#alternatives", OptionList).clear_options()
        self._show_hardware()

    def _show_hardware(self) -> None:
        text = hardware_text(self.detection) if self.detection is not None else Text("detecting GPUs ...")
        if self.result is not None and self.result.hardware_source != "detected":
            text = Text("plan for: ", style="dim") + Text(card_text(self.result), style="bold") + Text("\n") + text
        self.main.query_one("#hardware-text", Static).update(text)

    # ---- the list: preview on highlight, adopt on Enter ------------------------------------------------
    @on(OptionList.OptionHighlighted, "#alternatives")
    def alternative_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.result is None or self.state != "planned" or event.option_id is None:
            return
        self.preview(event.option_id)

    @on(OptionList.OptionSelected, "#alternatives")
    def alternative_selected(self, event: OptionList.OptionSelected) -> None:
        if self.result is None or self.state != "planned" or event.option_id is None:
            return
        kind, _, index = event.option_id.partition(":")
        if kind != "option":
            self.notify("this option does not fit: it cannot be adopted", title="Not adopted", severity="warning")
            return
        self.selected = int(index)
        self._label_options()
        self.preview(event.option_id)

    def preview(self, option_id: str) -> None:
        """The row's option in the panels: its summary, memory bar, phases and reasons."""
        self.previewed = option_id
        kind, _, index = option_id.partition(":")
        plan, i = self.result.plan, int(index)
        capacity = self.hardware.usable_bytes if self.hardware else None
        try:
            if kind == "rejected":  # an option that lost: its memory against the card, and why
                rejection = plan.rejected[i]
                shown = self.result.rejected(i) if rejection.config is not None else None
                summary = Text(f"✗ does not fit · {rejection_words(rejection, capacity)}", style="bold red")
                if shown is not None:
                    summary.append("\n")
                    summary.append_text(describe(shown, None))
                self.main.query_one("#plan-summary", Static).update(summary)
                self.main.query_one(MemoryBar).show(shown.estimate if shown else None, capacity)
                self.main.query_one("#why-text", Static).update(Text(f"✗ {rejection.reason}", style="red"))
                return
            shown = self.result.select(i)
        except AdvisorError as err:  # an option the plan does not have: say so where the answer goes
            self.fail(err)
            return
        option = self.result.option(i)
        self.main.query_one("#plan-summary", Static).update(
            describe(shown, option, adopted=(i == self.selected), compact=self.compact))
        self.main.query_one(MemoryBar).show(shown.estimate, capacity)
        lines = [Text(f"✓ {r}") for r in option.reasons]
        lines += [Text(f"✓ {s}") for s in self.result.settled()] if i == 0 else []
        lines += [Text(f"! {w}", style="yellow") for w in plan.warnings]
        lines += [Text(f"✗ {rejection_words(r, capacity)}", style="red") for r in plan.rejected]
        self.main.query_one("#why-text", Static).update(Text("\n").join(lines))

    # ---- rendering -----------------------------------------------------------------------------------
    def show_plan(self) -> None:
        plan = self.result.plan
        capacity = self.hardware.usable_bytes if self.hardware else None
        alternatives = self.main.query_one("#alternatives", OptionList)
        alternatives.clear_options()
        self.previewed = None
        if plan.chosen is None:
            need = plan.smallest_need_bytes
            headline = "nothing fits" if need is not None and (capacity is None or need > capacity) else "no plan"
            summary = Text(f"{headline} on {self.hardware.name if self.hardware else 'this card'}\n", style="bold red")
            summary.append((plan.no_choice or "").split(": ", 1)[-1])  # the headline says the first half
            self.main.query_one("#plan-summary", Static).update(summary)
            self.main.query_one(MemoryBar).show(None, capacity)
            # what would make it fit is the answer: it goes first, the misses that led to it after
            lines = [Text(f"→ {w}", style="green") for w in plan.what_would_fit]
            if self.result.host_ram_bytes is None and any(r.config is not None and r.config.offload != "none"
                                                          for r in plan.rejected):
                lines.append(Text("→ offload needs the CPU RAM of the box the card is in: it is unknown for a typed "
                                  "card, so offload rungs were judged without it", style="dim"))
            lines += [Text(f"✗ {rejection_words(r, capacity)}", style="red") for r in plan.rejected]
            self.main.query_one("#why-text", Static).update(Text("\n").join(lines))
            for index, rejection in enumerate(plan.rejected):
                alternatives.add_option(Option(self._rejected_label(rejection), id=f"rejected:{index}"))
            return
        options = [Option(self._option_label(i), id=f"option:{i}") for i in range(self.result.option_count)]
        alternatives.add_options(options)
        for index, rejection in enumerate(plan.rejected):
            alternatives.add_option(Option(self._rejected_label(rejection), id=f"rejected:{index}"))
        alternatives.highlighted = 0  # the cursor shows from the start, on the adopted option
        self.preview("option:0")

    def _option_label(self, index: int) -> Text:
        option = self.result.option(index)
        adopted = index == self.selected
        text = Text(f"{'▶' if adopted else ' '}{index:>2} {option.need_bytes / GiB:6.1f} GiB  ",
                    style="bold green" if adopted else "", no_wrap=True, overflow="ellipsis")
        text.append(core.option_label(option.config), style="bold" if adopted else "")
        return text

    @staticmethod
    def _rejected_label(rejection) -> Text:
        label = core.option_label(rejection.config) if rejection.config is not None else rejection.option
        need = f"{rejection.need_bytes / GiB:6.1f} GiB" if rejection.need_bytes else " " * 10
        return Text(f" ✗ {need}  {label}", style="red", no_wrap=True, overflow="ellipsis")

    def _label_options(self) -> None:
        alternatives = self.main.query_one("#alternatives", OptionList)
        for index in range(self.result.option_count):
            alternatives.replace_option_prompt(f"option:{index}", self._option_label(index))

    # ---- actions -----------------------------------------------------------------------------------
    def action_help(self) -> None:
        self.push_screen(HelpModal())

    def action_focus_gpu(self) -> None:
        self.main.query_one("#gpu", Input).focus()

    def action_focus_model(self) -> None:
        self.main.query_one("#model", Input).focus()

    def _remember_fields(self) -> None:
        """The text fields as last asked: what the panels answer (or say is wrong)."""
        self.submitted = {name: self.main.query_one(f"#{name}", Input).value for name in self.TEXT_FIELDS}

    def action_focus_plan(self) -> None:
        """Leave the form.  An edit not submitted with Enter is taken back, so no field shows a value the
        panels do not answer for."""
        focused = self.focused
        if isinstance(focused, Input) and focused.id in self.submitted \
                and focused.value != self.submitted[focused.id]:
            focused.value = self.submitted[focused.id]
            self.notify("edit taken back: Enter applies a field", timeout=3)
        self.main.query_one("#alternatives", OptionList).focus()

    def action_cancel_plan(self) -> None:
        """Stop waiting for a plan (a slow Hub look-up): its answer, when it comes, is dropped."""
        if self.state != "planning":
            return
        self._ticket += 1
        self.state = "cancelled"
        self._clear_panels()
        self.main.query_one("#plan-summary", Static).update(
            Text(f"cancelled: no plan for {self.request.model}; edit a field and press Enter to ask again", style="yellow"))
        self.refresh_bindings()

    def _selected(self) -> core.Selected | None:
        """The option Export, Verify and the rank sweep act on: the adopted one (the plan's choice by default)."""
        if self.result is None or self.state != "planned" or self.result.plan.chosen is None:
            why = {"planning": "a plan is still being computed", "needs_gpu": "type a GPU first",
                   "failed": "the last question failed: fix the field marked in red"}.get(self.state, "")
            self.notify(why or "pick a model and a GPU that fit", title="No plan to act on", severity="warning")
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
        self.push_screen(RankSweepModal(rows, f"Rank sweep · option {selected.option} · {selected.label}",
                                        selected.capacity_bytes))

    def action_verify(self) -> None:
        """A short real run of the adopted option on the detected GPU, or the dry run (fake tensors) without one."""
        selected = self._selected()
        if selected is None:
            return
        from .screens.verify import VerifyScreen

        # a real run only on this machine's own GPUs; a named card is somewhere else: trace it instead
        mode = "cuda" if self.result.hardware_source == "detected" else "dry"
        self.push_screen(VerifyScreen(selected, mode, start=self.verify_start))

    def action_export(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        self.push_screen(ExportModal(self.export_dir, lambda fmt, directory: self._would_write(selected, fmt, directory),
                                     core.EXPORT_FORMATS, lambda fmt, directory, force: self._export(selected, fmt, directory, force),
                                     title=f"Export option {selected.option} · {selected.label}"))

    @staticmethod
    def _would_write(selected: core.Selected, fmt: str, directory: Path) -> list[Path]:
        try:
            files, _, _ = core.render_export(selected, (fmt,), allow_no_fit=True)
        except AdvisorError:
            return []
        return [directory / name for name in files]

    def _export(self, selected: core.Selected, fmt: str, directory: Path, force: bool) -> None:
        """Write the files (raises AdvisorError: the dialog shows it and stays open with what was typed)."""
        outcome = core.export(selected, (fmt,), directory, force)
        skipped = "".join(f"\nskipped {name}: {why}" for name, why in outcome.skipped.items())
        notes = "".join(f"\nnote: {note}" for note in outcome.notes)
        self.notify("wrote " + ", ".join(str(p) for p in outcome.written) + skipped + notes,
                    title=f"Export · {selected.label}")

    async def action_quit(self) -> None:
        """Quit now: a verification child still running is ended first (never left behind)."""
        from .screens.verify import VerifyScreen

        for screen in self.screen_stack:
            if isinstance(screen, VerifyScreen):
                screen.kill_run()
        self.exit()


def _moved(before: Detection, after: Detection, threshold: int) -> bool:
    """GPUs appeared or left, or memory held by other processes moved by more than ``threshold``."""
    if [g.uuid for g in before.gpus] != [g.uuid for g in after.gpus]:
        return True
    return any(abs((a.used_bytes or 0) - (b.used_bytes or 0)) > threshold for a, b in zip(before.gpus, after.gpus))


def describe(shown: core.Selected, option=None, adopted: bool = False, compact: bool = False) -> Text:
    """An option's headline: which it is, what it trains with, and its peak against the card."""
    cfg, est = shown.cfg, shown.estimate
    text = Text()
    if shown.option is not None:
        if adopted:
            text.append(f"▶ option {shown.option} (adopted) · ", style="bold green")
        else:
            text.append(f"option {shown.option} (preview · Enter adopts) · ", style="bold yellow")
    text.append(shown.label, style="bold")
    low, high = est.peak_device_range_bytes
    text.append(f"\npeak {est.peak_device_bytes / GiB:.1f} GiB")
    if shown.capacity_bytes:
        text.append(f" of {shown.capacity_bytes / GiB:.1f} usable")
        verdict = {"fits": "fits", "tight": "TIGHT", "does_not_fit": "does not fit"}.get(est.fit or "", "")
        if verdict:
            text.append(f" · {verdict}", style={"fits": "bold green", "tight": "bold yellow"}.get(est.fit, "bold red"))
    text.append(f" · range {low / GiB:.1f}-{high / GiB:.1f}", style="dim")
    speed = f" · ~{option.tokens_per_s:,.0f} tok/s" if option is not None else ""
    if option is not None and option.speed is not None and option.speed.wall_s is not None:  # a job's size was given
        from ..render import duration_text

        sp = option.speed
        speed += f" · {duration_text(sp.wall_s)} ({duration_text(sp.wall_s_range[0])}-{duration_text(sp.wall_s_range[1])})"
        speed += f" · {sp.gpu_hours:,.1f} GPU-h" + (f" · cost {sp.cost:,.2f}" if sp.cost is not None else "")
    if compact:  # a small terminal: the headline, the peak and the phases; the rest is in Why
        ph = est.phases
        text.append(f"\nfwd {ph.forward / GiB:.1f} · bwd {ph.backward / GiB:.1f} · opt {ph.optimizer / GiB:.1f} GiB{speed}",
                    style="dim")
        return text
    text.append(f"\n{config_words(cfg)} · accumulation {shown.grad_accum}{speed}", style="dim")
    ph = est.phases
    text.append(f"\nfwd {ph.forward / GiB:.1f} · bwd {ph.backward / GiB:.1f} · opt {ph.optimizer / GiB:.1f} GiB"
                f" · {cfg.precision} · attention {cfg.attn}", style="dim")
    return text


def hardware_text(detection: Detection) -> Text:
    if not detection.gpus:
        text = Text(f"{detection.reason}\n", style="yellow")
        text.append("type a catalog GPU or a size below", style="dim")
        return text
    text = Text()
    for gpu in detection.gpus:
        used = (gpu.used_bytes or 0) / GiB
        total = (gpu.total_bytes or 0) / GiB
        cells = 12
        filled = round(cells * used / total) if total else 0
        text.append(f"{gpu.index}: {gpu.name}\n", style="bold")
        text.append("█" * filled, style="red")
        text.append("░" * (cells - filled), style="green")
        text.append(f" {used:5.1f}/{total:.1f} GiB\n")
    return text
