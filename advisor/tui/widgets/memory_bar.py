"""A stacked horizontal bar: what the plan's peak is made of, against the GPU's capacity."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...memory.result import MemoryEstimate

# (component names, label, style): the live parts of the peak, in the order they stack
PARTS = [
    (("weights", "quantized", "gathered_params"), "weights", "bold blue"),
    (("adapters", "gradients", "optimizer_states", "optimizer_temporaries"), "train state", "bold magenta"),
    (("activations",), "activations", "bold green"),
    (("logits_loss",), "logits/loss", "bold yellow"),
    (("cublas_workspace", "allocator_fragmentation", "cuda_context"), "overhead", "bold cyan"),  # not red: under 256 colours red and magenta (train state) coincide
]


def breakdown(est: MemoryEstimate) -> list[tuple[str, int, str]]:
    """Parts scaled so they add up to the device peak (each component is its own maximum; the peak
    phase holds a mix), for display only."""
    raw = [(label, sum(est.component(n).bytes for n in names), style) for names, label, style in PARTS]
    total = sum(b for _, b, _ in raw) or 1
    return [(label, int(b * est.peak_device_bytes / total), style) for label, b, style in raw]


class MemoryBar(Static):
    """Renders an estimate as a bar the width of the widget; capacity marks the end of the track."""

    DEFAULT_CSS = """
    MemoryBar { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.estimate: MemoryEstimate | None = None
        self.capacity: int | None = None
        self.short_legend = False  # a small terminal: a shorter legend

    def show(self, est: MemoryEstimate | None, capacity: int | None) -> None:
        self.estimate, self.capacity = est, capacity
        self.refresh()

    def render(self) -> Text:
        est = self.estimate
        if est is None:
            return Text("no plan yet", style="dim")
        peak = est.peak_device_bytes
        total = f" {peak / 2**30:.1f}" + (f"/{self.capacity / 2**30:.1f}" if self.capacity else "") + " GiB"
        over = bool(self.capacity) and peak > self.capacity
        width = max(self.size.width - len(total) - 1, 10)
        scale = max(self.capacity or 0, peak)
        bar = Text(no_wrap=True)
        used = 0
        for label, size, style in breakdown(est):
            cells = min(round(width * size / scale), width - used)
            bar.append("█" * cells, style=style)
            used += cells
        if self.capacity:
            bar.append("░" * max(width - used, 0), style="dim")
        bar.append(total, style="bold red" if over else "bold")
        legend = Text()
        for label, size, style in breakdown(est):
            legend.append("■ ", style=style)
            if self.short_legend:
                legend.append(f"{label.split()[-1]} {size / 2**30:.1f}  ")
            else:
                legend.append(f"{label} {size / 2**30:.1f} ({100 * size / max(peak, 1):.0f}%)  ")
        return Text("\n").join([bar, legend])
