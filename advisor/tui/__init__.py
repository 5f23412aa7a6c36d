"""The Textual app.  Only this package imports textual."""

from __future__ import annotations

from pathlib import Path


def make_app(gpu_backend=None, request=None, export_dir: Path | None = None, host_ram=None, verify_start=None):
    """The app as the CLI and the tests build it (posting's pattern): a fake GPU backend in tests; ``request``
    is the core's PlanRequest the app starts from; ``verify_start`` replaces core.start_verify (tests script
    the child with it)."""
    from .app import AdvisorApp, nvml_backend

    return AdvisorApp(gpu_backend=gpu_backend or nvml_backend, request=request,
                      export_dir=export_dir or Path("lora-advisor-export"), host_ram=host_ram,
                      verify_start=verify_start)
