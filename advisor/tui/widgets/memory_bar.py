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
    (("cublas_workspace", "allocator_fragmentation", "cuda_context"), "overhead", "bold red"),
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
    MemoryBar { height: 4; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.estimate: MemoryEstimate | None = None
        self.capacity: int | None = None

    def show(self, est: MemoryEstimate | None, capacity: int | None) -> None:
        self.estimate, self.capacity = est, capacity
        self.refresh()

    def render(self) -> Text:
        est = self.estimate
        if est is None:
            return Text("no plan yet", style="dim")
        width = max(self.size.width - 2, 20)
        scale = max(self.capacity or 0, est.peak_device_bytes)
        bar = Text()
        used = 0
        for label, size, style in breakdown(est):
            cells = round(width * size / scale)
            bar.append("█" * cells, style=style)
            used += cells
        if self.capacity:
            bar.append("░" * max(width - used, 0), style="dim")
        legend = Text()
        for label, size, style in breakdown(est):
            legend.append("■ ", style=style)
            legend.append(f"{label} {size / 2**30:.1f} ({100 * size / max(est.peak_device_bytes, 1):.0f}%)  ")
        total = Text(f"{est.peak_device_bytes / 2**30:.1f} GiB peak"
                     + (f" / {self.capacity / 2**30:.1f} GiB" if self.capacity else ""),
                     style="bold" if (not self.capacity or est.peak_device_bytes <= self.capacity) else "bold red")
        return Text("\n").join([bar, legend, total])
