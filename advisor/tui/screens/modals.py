"""Modal screens: errors, help, the rank sweep and the export dialog."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Select, Static


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

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


HELP = """\
[b]lora-advisor[/b]: the fine-tuning setup that fits your GPU, and why.

Edit the model and goals on the left: every change re-plans.
Select an alternative to see its memory breakdown.

  [b]g[/b]  focus the GPU field      [b]m[/b]  focus the model field
  [b]r[/b]  rank sweep               [b]e[/b]  export the plan
  [b]v[/b]  verify: a short run on the GPU (the dry run on fake tensors without one)
  [b]?[/b]  this help                [b]q[/b]  quit
"""


class HelpModal(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Close"), ("question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(HELP)
            yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


class RankSweepModal(ModalScreen[None]):
    """Rank barely moves memory; sequence length and targets do."""

    BINDINGS = [("escape", "dismiss", "Close")]

    def __init__(self, rows: list[tuple[int, int, int, int]], title: str) -> None:
        super().__init__()
        self.rows, self.title_text = rows, title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="title")
            yield DataTable(id="ranks", cursor_type="row")
            yield Static("rank moves the adapters; sequence length, micro batch and targets move the activations",
                         classes="hint")
            yield Button("Close", id="close")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("rank", "adapter params", "adapter + grads + states", "peak (device)")
        for rank, params, state, peak in self.rows:
            table.add_row(str(rank), f"{params:,}", f"{state / 2**30:.2f} GiB", f"{peak / 2**30:.2f} GiB")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


class ExportModal(ModalScreen[tuple[str, Path, bool] | None]):
    """Pick a format and a path; an existing file needs a second, explicit confirmation."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, default_dir: Path, would_write, formats: tuple[str, ...]) -> None:
        super().__init__()
        self.default_dir = default_dir
        self.formats = formats
        self.would_write = would_write  # (format, directory) -> the paths an export would write
        self.confirm_overwrite = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the plan", classes="title")
            yield Select([(f, f) for f in self.formats], value=self.formats[0], allow_blank=False, id="format")
            yield Input(str(self.default_dir), id="path", placeholder="directory to write into")
            yield Static("", id="export-status", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="export", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.confirm_overwrite = False
        self.query_one("#export-status", Static).update("")

    def warn_exists(self, path: Path) -> None:
        self.confirm_overwrite = True
        self.query_one("#export-status", Static).update(f"{path} exists: press Export again to overwrite")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        fmt = str(self.query_one("#format", Select).value)
        directory = Path(self.query_one("#path", Input).value)
        existing = [p for p in self.would_write(fmt, directory) if p.exists()]
        if existing and not self.confirm_overwrite:
            self.warn_exists(existing[0])
            return
        self.dismiss((fmt, directory, self.confirm_overwrite))

    def action_cancel(self) -> None:
        self.dismiss(None)
