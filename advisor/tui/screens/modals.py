"""Modal screens: errors, help, the rank sweep and the export dialog."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from rich.text import Text
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static


class ErrorModal(ModalScreen[None]):
    """A bad config.json, an invalid rule, an unwritable path: the message and the hint, never a crash."""

    BINDINGS = [("escape", "dismiss", "Close"), ("enter", "dismiss", "Close")]

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__()
        self.message, self.hint = message, hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error"):
            yield Label("Error", classes="title")
            yield Static(self.message)
            if self.hint:
                yield Static(f"hint: {self.hint}", classes="hint")
            yield Button("Close", id="close", variant="error")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


HELP = """\
[b]lora-advisor[/b]: the fine-tuning setup that fits your GPU, and why.

The fields on the left apply when you press [b]Enter[/b] in them (Method, Prefer and Batches apply when picked;
Batches: packed or padded to the length, or unpacked data of varying length).
The Alternatives list previews an option as the cursor moves; [b]Enter[/b] adopts it (marked ▶):
Export, Verify and the rank sweep use the adopted option.

  [b]↑ ↓[/b]     move in the list (preview)    [b]Enter[/b]  adopt the option / apply a field
  [b]Tab[/b]     next field  [b]Shift+Tab[/b] back  [b]Esc[/b]    back to the list (leave a field)
  [b]g[/b]       the GPU field                 [b]m[/b]      the model field
  [b]r[/b]       rank sweep                    [b]e[/b]      export the adopted option
  [b]v[/b]       verify: a short run on this machine's GPU, or the dry run on fake tensors
  [b]c[/b]       cancel a plan in progress (a slow Hub look-up)
  [b]?[/b]       this help                     [b]q[/b] / [b]Ctrl+Q[/b]  quit (ends a verify run)
  In Verify: [b]c[/b] cancels the run, [b]r[/b] runs it again, [b]Esc[/b] closes.
"""


class HelpModal(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Close"), ("question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Static(HELP)
            yield Button("Close", id="close")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


class RankSweepModal(ModalScreen[None]):
    """Rank barely moves memory; sequence length and targets do.  A rank whose peak exceeds the card is flagged."""

    BINDINGS = [("escape", "dismiss", "Close")]

    def __init__(self, rows, title: str, capacity: int | None = None) -> None:
        super().__init__()
        self.rows, self.title_text, self.capacity = rows, title, capacity  # rows: core.RankRow

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="title")
            yield DataTable(id="ranks", cursor_type="row")
            cap = f" · card: {self.capacity / 2**30:.1f} GiB usable" if self.capacity else ""
            yield Static("rank moves the adapters; sequence length, micro batch and targets move the activations" + cap,
                         classes="hint")
            yield Button("Close", id="close")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        right = {"justify": "right"}
        table.add_column("rank", key="rank")
        for name in ("adapter params", "adapters+grads+states", "peak (device)"):
            table.add_column(Text(name, **right), key=name)
        table.add_column("fits", key="fits")
        for row in self.rows:
            verdict = {True: Text("✓", style="green"), False: Text("✗ over", style="bold red"),
                       None: Text("-", style="dim")}[row.fits]
            table.add_row(Text(str(row.rank), **right), Text(f"{row.trainable_params:,}", **right),
                          Text(f"{row.adapter_state_bytes / 2**30:.2f} GiB", **right),
                          Text(f"{row.peak_device_bytes / 2**30:.2f} GiB", **right), verdict)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


class ExportModal(ModalScreen[bool | None]):
    """Pick a format and a path; an existing file needs a second, explicit confirmation.  A failed write is
    shown here, with what was typed still in place."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, default_dir: Path, would_write, formats: tuple[str, ...], do_export=None,
                 title: str = "Export the plan") -> None:
        super().__init__()
        self.default_dir = default_dir
        self.formats = formats
        self.would_write = would_write  # (format, directory) -> the paths an export would write
        self.do_export = do_export  # (format, directory, force) -> None; raises AdvisorError
        self.title_text = title
        self.confirm_overwrite = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title")
            yield Label("Format", classes="field")
            yield Select([(f, f) for f in self.formats], value=self.formats[0], allow_blank=False, id="format")
            yield Label("Directory to write into", classes="field")
            yield Input(str(self.default_dir), id="path", placeholder="directory to write into")
            yield Static("", id="export-status", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="export", variant="primary")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#format", Select).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.confirm_overwrite = False
        self.query_one("#export-status", Static).update("")

    def on_select_changed(self, event: Select.Changed) -> None:
        self.confirm_overwrite = False

    def warn_exists(self, path: Path) -> None:
        self.confirm_overwrite = True
        self.query_one("#export-status", Static).update(f"{path} exists: press Export again to overwrite")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        self.submit()

    def submit(self) -> None:
        from ...errors import AdvisorError
        from ..words import error_text

        fmt = str(self.query_one("#format", Select).value)
        directory = Path(self.query_one("#path", Input).value)
        existing = [p for p in self.would_write(fmt, directory) if p.exists()]
        if existing and not self.confirm_overwrite:
            self.warn_exists(existing[0])
            return
        if self.do_export is None:
            self.dismiss(True)
            return
        try:
            self.do_export(fmt, directory, self.confirm_overwrite)
        except AdvisorError as err:  # stay open: the typed path is still there to fix
            message, hint = error_text(err)
            self.query_one("#export-status", Static).update(
                Text(f"✗ {message}" + (f"\nhint: {hint}" if hint else ""), style="bold red"))
            self.confirm_overwrite = False
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(None)
