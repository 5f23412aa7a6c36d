"""A seeded script presses random sequences of the app's keys and field edits: the app neither raises nor
hangs (issue 12).  The quick variant runs a few hundred steps; the heavy one more seeds."""

import random
import time

import pytest

pytest.importorskip("textual")

from textual.widgets import Input  # noqa: E402

from tests.tui_support import NO_DRIVER, ONE_4090, app, scripted, settle  # noqa: E402

KEYS = ["up", "down", "enter", "escape", "tab", "shift+tab", "r", "e", "v", "g", "m", "c", "question_mark",
        "home", "end", "pageup", "pagedown", "space", "left", "right", "backspace", "1", "0", "-", "x"]
EDITS = {"model": ["llama-3.2-1b", "llama-9000", "qwen2.5-7b", "foo/bar-7b", "", "llama-3.1-8b"],
         "gpu": ["4090", "A100-80GB", "4xA100-80GB", "A100 80GB", "24", "lots", "", "0GiB", "2x3060"],
         "seq_len": ["0", "-5", "", "512", "4096", "999999999"],
         "effective_batch": ["0", "1", "", "64", "-"]}
# a scripted child that ends by itself (a held one would keep `settle` waiting for its worker)
VERIFY = ({"event": "start", "mode": "dry"}, {"event": "step", "step": 1, "loss": 2.0, "tokens_per_s": 10.0},
          {"event": "error", "message": "scripted end", "hint": ""})


async def wander(seed: int, steps: int, gpu_backend) -> None:
    from advisor import core

    rng = random.Random(seed)
    real_resolve = core.resolve_model

    def offline(spec):  # no network in tests: a hub id fails at once, as it does offline
        if "/" in spec and not spec.endswith(".json"):
            raise core.UsageError(f"cannot fetch {spec} from the Hub", "check the network", field="model", value=spec)
        return real_resolve(spec)

    core.resolve_model = offline
    try:
        async with app(model="llama-3.2-1b", gpu_backend=gpu_backend,
                       verify_start=scripted(*VERIFY, hold=False)).run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            for step in range(steps):
                began = time.monotonic()
                if rng.random() < 0.15 and pilot.app.screen is pilot.app.screen_stack[0]:
                    field = rng.choice(list(EDITS))
                    widget = pilot.app.query_one(f"#{field}", Input)
                    widget.focus()
                    widget.value = rng.choice(EDITS[field])
                    await pilot.press("enter")
                else:
                    await pilot.press(rng.choice(KEYS))
                if step % 25 == 0:
                    await settle(pilot)
                assert time.monotonic() - began < 10, f"step {step} hung (seed {seed})"
            await settle(pilot)
            # the state is always one of the honest ones, and the panels agree with it
            assert pilot.app.state in ("planned", "planning", "failed", "needs_gpu", "cancelled")
            await pilot.press("ctrl+q")
    finally:
        core.resolve_model = real_resolve


@pytest.mark.parametrize("seed,backend", [(1, ONE_4090), (2, NO_DRIVER)])
async def test_random_keys_and_edits_neither_raise_nor_hang(seed, backend):
    await wander(seed, 200, backend)


@pytest.mark.heavy
@pytest.mark.parametrize("seed", range(3, 13))
async def test_random_keys_and_edits_many_seeds(seed):
    await wander(seed, 600, ONE_4090 if seed % 2 else NO_DRIVER)
