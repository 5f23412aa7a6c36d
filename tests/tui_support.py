"""Fake GPU backends for the app's tests (NVML faked at the pynvml boundary)."""

from advisor.hardware.nvml import Nvml
from advisor.core import GpuRequest, PlanRequest
from advisor.tui import make_app
from tests.fake_pynvml import FakeGpu, GiB, make_fake_pynvml


def backend(gpus=None, init_error=None):
    def detect():
        return Nvml(make_fake_pynvml(gpus, init_error=init_error)).detect()

    return detect


ONE_4090 = backend([FakeGpu(used=int(1.3 * GiB))])
TWO_GPUS = backend([FakeGpu(uuid="GPU-a"), FakeGpu(name="NVIDIA A100-SXM4-80GB", total=80 * GiB, cc=(8, 0), uuid="GPU-b")])
NO_DRIVER = backend(init_error="LibraryNotFound")


def request(model="llama-3.1-8b", gpu="", **goals):
    return PlanRequest(model=model, hardware=GpuRequest(gpu=gpu), **goals)


def app(gpu_backend=ONE_4090, export_dir=None, verify_start=None, **form):
    # a fixed CPU RAM, so offload rules decide the same on every machine that runs the tests
    return make_app(gpu_backend=gpu_backend, request=request(**form), export_dir=export_dir, host_ram=lambda: 128 * GiB,
                    verify_start=verify_start)


async def settle(pilot):
    """Wait until detection and planning workers are done and the screen has updated (a re-plan cancels
    the one it replaces: that is expected)."""
    from textual.worker import WorkerCancelled

    for _ in range(4):
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    # let a modal pushed by the last message finish its first layout: wait until the screen stack has
    # stayed the same for two short pauses (a loaded machine can need more than one)
    previous = None
    for _ in range(20):
        await pilot.pause(0.05)
        current = (id(pilot.app.screen), len(pilot.app.screen_stack))
        if current == previous:
            break
        previous = current


class ScriptedRun:
    """A verification child scripted for tests: yields ``script``, then (``hold``) waits until cancelled and
    says so, as the real child does when it is terminated."""

    def __init__(self, script, hold=True):
        import threading

        self.script, self.hold = list(script), hold
        self.cancelled = threading.Event()

    def events(self):
        yield from self.script
        if self.hold:
            self.cancelled.wait(60)
            yield {"event": "cancelled", "signal": 15}

    def cancel(self):
        self.cancelled.set()


def scripted(*events, hold=True):
    """A verify starter (selected, mode, steps) -> ScriptedRun; the runs it made are in ``.runs``."""
    def start(selected, mode, steps):
        run = ScriptedRun(events, hold)
        start.runs.append(run)
        return run

    start.runs = []
    return start


def text_of(widget) -> str:
    return str(widget.render())
