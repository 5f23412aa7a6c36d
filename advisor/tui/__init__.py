"""The Textual app.  Only this package imports textual."""

from __future__ import annotations

from pathlib import Path


def make_app(gpu_backend=None, form=None, export_dir: Path | None = None, host_ram=None):
    """The app as the CLI and the tests build it (posting's pattern): a fake GPU backend in tests."""
    from .app import AdvisorApp, Form, nvml_backend

    return AdvisorApp(gpu_backend=gpu_backend or nvml_backend, form=form or Form(),
                      export_dir=export_dir or Path("lora-advisor-export"), host_ram=host_ram)
