"""The 2026 config.json files the tests read, taken from the model catalog (advisor/models/catalog.json holds
them with their sources, minus metadata keys that do not affect memory), so the tests need nothing outside
the repository.  ``config_path("gemma-3-4b-it")`` names a folder as ../shared/data/model-configs-2026 does."""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

from advisor.models.catalog import catalog_entries


@lru_cache(maxsize=None)
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="configs-2026-"))


def config(folder: str) -> dict:
    """The catalog's config of the model whose Hugging Face repo is named ``folder``."""
    for entry in catalog_entries():
        if (entry.get("hf_id") or "").split("/")[-1].lower() == folder.lower():
            return json.loads(json.dumps(entry["config"]))
    raise KeyError(f"no catalog entry for {folder}")


@lru_cache(maxsize=None)
def config_path(folder: str) -> Path:
    """A config.json of that model in a folder of its name (the reader names the model after its folder)."""
    path = _folder() / folder / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config(folder)))
    return path
